"""Test helper: a SoftHSM2 token store of this test process's own, in a temporary directory.

SoftHSM2 reads its configuration file from $SOFTHSM2_CONF when the module is initialised (the first
`pkcs11.lib(...)` of the process), and a running process does not see tokens initialised after that. So one
directory is made per process, the first time it is asked for, with every token the tests need initialised up front
(`softhsm2-util --init-token --free`, in a subprocess); it is removed when the process exits. Tests isolate
themselves with their own key labels, not their own tokens. Nothing here touches /etc/softhsm or /var/lib/softhsm.

Tokens (user PIN `USER_PIN`, SO PIN `SO_PIN`):
    hv-test       the root-key token of the foundation suite and of most provider tests
    hv-test-pin   logged into by no successful test: wrong-PIN tests get a real C_Login failure from it
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODULE_ENV = "HEALTHVAULT_TEST_PKCS11_MODULE"
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
TOKEN = "hv-test"
PIN_TOKEN = "hv-test-pin"
USER_PIN = "hv-user-pin-4321"
SO_PIN = "hv-so-pin-87654321"


def find_module() -> str | None:
    explicit = os.environ.get(MODULE_ENV)
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    return next((path for path in MODULE_CANDIDATES if os.path.isfile(path)), None)


def missing() -> str | None:
    """Why SoftHSM2 cannot be used here, or None when it can."""
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util not found (Debian package softhsm2)"
    if find_module() is None:
        return "libsofthsm2.so not found (Debian package libsofthsm2)"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 is not installed"
    return None


@dataclass(frozen=True)
class SoftHsm:
    directory: Path
    conf: Path
    module: str
    token_label: str = TOKEN
    pin: str = USER_PIN

    @property
    def pin_file(self) -> Path:
        return self.directory / "user.pin"

    def env(self) -> dict[str, str]:
        """Variables a subprocess needs to see the same tokens (the PIN is passed separately, by file or env)."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str) -> None:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", USER_PIN,
                        "--so-pin", SO_PIN], check=True, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SOFTHSM2_CONF": str(self.conf)}, stdin=subprocess.DEVNULL)


_INSTANCE: SoftHsm | None = None


def required(*, in_ci: bool) -> SoftHsm:
    """This process's store for a test that needs one: fails the test in CI when SoftHSM2 is missing (CI installs
    it), skips it elsewhere."""
    import pytest

    reason = missing()
    if reason:
        if in_ci:
            pytest.fail(f"SoftHSM2 is required in CI: {reason}")
        pytest.skip(reason)
    return process_softhsm()


def process_softhsm() -> SoftHsm:
    """This process's SoftHSM2 store (created on first call, before any module load; removed at exit)."""
    global _INSTANCE
    if _INSTANCE is not None:
        return _INSTANCE
    reason = missing()
    if reason:
        raise RuntimeError(f"SoftHSM2 is not usable: {reason}")
    import pkcs11

    if os.path.realpath(find_module()) in getattr(pkcs11, "_loaded", {}):
        raise RuntimeError("libsofthsm2 was initialised in this process before tests/helpers/softhsm.py set "
                           "SOFTHSM2_CONF: "
                           "its tokens would not be seen (call process_softhsm() before opening a pkcs11 provider)")
    directory = Path(tempfile.mkdtemp(prefix="hv-softhsm-"))
    atexit.register(shutil.rmtree, directory, True)
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    instance = SoftHsm(directory=directory, conf=conf, module=find_module())
    instance.pin_file.write_text(USER_PIN + "\n")
    instance.pin_file.chmod(0o600)
    for label in (TOKEN, PIN_TOKEN):
        instance.init_token(label)
    # Must be in place before the module is initialised in this process; subprocesses inherit it.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    _INSTANCE = instance
    return instance
