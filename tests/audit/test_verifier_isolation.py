"""The verifier an assessor audits imports only the standard library and `cryptography`, and stays small."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

VERIFY = Path(__file__).resolve().parents[2] / "audit" / "verify.py"
ALLOWED = set(sys.stdlib_module_names) | {"cryptography"}


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module"):
            found.append(("<dynamic import>", 0))
    return found


def test_verify_imports_only_stdlib_and_cryptography():
    modules = imported_modules(ast.parse(VERIFY.read_text("utf-8")))
    assert modules, "the parser found no import at all"
    for name, level in modules:
        assert level == 0, f"relative import in verify.py: {name}"
        assert name.split(".")[0] in ALLOWED, f"verify.py imports {name}"
    assert ("cryptography.hazmat.primitives.asymmetric.ed25519", 0) in modules


def test_the_audit_package_init_imports_nothing():
    init = VERIFY.parent / "__init__.py"
    assert imported_modules(ast.parse(init.read_text("utf-8"))) == []


def test_server_side_does_not_redefine_the_hashing_rules():
    for name in ("checkpoint.py", "bundle.py", "merkle.py"):
        source = (VERIFY.parent / name).read_text("utf-8")
        assert "hv-audit-event" not in source and "json.dumps(event" not in source, name
