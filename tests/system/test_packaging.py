"""The wheel carries every project package and data file (tests run from the repo root and would not notice)."""

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_top_level_package_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    missing = {p for p in packages if not any(fnmatch.fnmatch(p, pattern) for pattern in include)}
    assert missing == set()


def test_non_python_files_are_declared_as_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    for package in ("vault", "kms", "audit", "consent", "api", "ocr"):
        if not (ROOT / package).is_dir():
            continue
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
                rel = str(path.relative_to(ROOT / package))
                assert any(fnmatch.fnmatch(rel, pattern) for pattern in data.get(package, [])), f"{package}/{rel}"
