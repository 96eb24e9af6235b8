"""The one logged-in PKCS#11 session per token per process, and the lock that serialises every call into a module.

Owns loading a PKCS#11 module, opening and logging in one session per (module, token) in this process, sharing it
under the module's process-wide lock, reopening it once when the token drops it, and refusing a second open with a
different PIN. Why one lock per module and one session per token: see the `kms/pkcs11.py` docstring
(SoftHSM2 without internal locking; PKCS#11 login state is per application and token). Never: logs, reprs or puts
in a message the PIN (it is compared through a keyed digest); touches key objects (that is kms/pkcs11.py's job).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kms.errors import KeyStoreError, WrongPassphrase

try:  # a declared dependency; imported softly so the error names what is missing
    import pkcs11 as _p11
    from pkcs11 import exceptions as _p11e
except ImportError:  # pragma: no cover - exercised only on a broken install
    _p11 = None  # type: ignore[assignment]  # a broken install: _open() names what is missing

_T = TypeVar("_T")

_REGISTRY_LOCK = threading.Lock()
_MODULE_LOCKS: dict[str, threading.RLock] = {}
_LINKS: dict[tuple[str, str], TokenLink] = {}


def module_lock(module_path: str) -> threading.RLock:
    """The process-wide lock every call into this PKCS#11 module must hold (see the module docstring)."""
    real = os.path.realpath(module_path)
    with _REGISTRY_LOCK:
        lock = _MODULE_LOCKS.get(real)
        if lock is None:
            lock = _MODULE_LOCKS[real] = threading.RLock()
        return lock


def _session_lost_errors() -> tuple[type[BaseException], ...]:
    return (_p11e.SessionClosed, _p11e.SessionHandleInvalid, _p11e.UserNotLoggedIn, _p11e.DeviceRemoved,
            _p11e.TokenNotPresent, _p11e.KeyHandleInvalid, _p11e.ObjectHandleInvalid)


def _pin_text(pin: str | bytes | bytearray | None) -> str:
    if isinstance(pin, (bytes, bytearray)):
        try:
            pin = bytes(pin).decode("utf-8")
        except UnicodeDecodeError:
            raise KeyStoreError("the PKCS#11 PIN must be UTF-8 text") from None
    if not isinstance(pin, str) or not pin:
        raise KeyStoreError("no PKCS#11 PIN given (the user PIN of the token holding the root key)")
    return pin


class TokenLink:
    """One token, one logged-in session, shared by every provider of this process; all calls hold the module lock."""

    def __init__(self, module_path: str, token_label: str, token: Any, pin: str, lock: threading.RLock) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.lock = lock
        self.refs = 0
        self.generation = 0  # bumped whenever the session is replaced; object handles are re-found then
        self._token = token
        self._pin = pin
        self._pin_salt = os.urandom(16)
        self._pin_digest = self._digest(pin)
        self._session: Any = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"TokenLink(token={self.token_label!r}, refs={self.refs})"

    def _digest(self, pin: str) -> bytes:
        return hmac.new(self._pin_salt, pin.encode("utf-8"), hashlib.sha256).digest()

    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._digest(pin), self._pin_digest)

    def _login(self) -> Any:
        try:
            return self._token.open(rw=True, user_pin=self._pin)
        except _p11e.UserAlreadyLoggedIn:
            # Logged in already (by this process, outside this link): PKCS#11 login is per application and token.
            return self._token.open(rw=True)
        except (_p11e.PinIncorrect, _p11e.PinInvalid, _p11e.PinLenRange):
            raise WrongPassphrase(
                f"the PKCS#11 token {self.token_label!r} rejected the PIN (wrong PIN; the token may lock after "
                "several failures)") from None
        except _p11e.PinLocked:
            raise KeyStoreError(f"the user PIN of PKCS#11 token {self.token_label!r} is locked: the token's security "
                                "officer must unlock it") from None
        except _p11e.PinExpired:
            raise KeyStoreError(f"the user PIN of PKCS#11 token {self.token_label!r} has expired") from None
        except _p11e.PKCS11Error as exc:
            raise KeyStoreError(f"cannot open a session on PKCS#11 token {self.token_label!r} "
                                f"({type(exc).__name__})") from None

    def open_session(self) -> None:
        """Log in now (called at open, so a wrong PIN fails at start-up, not at the first unwrap)."""
        with self.lock:
            if self._session is None:
                self._session = self._login()
                self.generation += 1

    def run(self, op: Callable[[Any, int], _T]) -> _T:
        """Run op(session, generation) under the module lock; reopen a lost session once and retry."""
        with self.lock:
            if os.getpid() != self._pid:
                raise KeyStoreError("this PKCS#11 session was opened in another process: open the provider again "
                                    "after fork")
            for attempt in (0, 1):
                if self._session is None:
                    self._session = self._login()
                    self.generation += 1
                try:
                    return op(self._session, self.generation)
                except _session_lost_errors():
                    if attempt:
                        raise
                    self._drop_session()
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except _p11e.PKCS11Error:
                pass

    def close(self) -> None:
        with self.lock:
            self._drop_session()
            self._pin = ""


def _load_module(module_path: str | None) -> tuple[str, Any]:
    if _p11 is None:
        raise KeyStoreError("kms_provider = pkcs11 needs the python-pkcs11 package, which is not installed")
    if not module_path:
        raise KeyStoreError("kms_provider = pkcs11 needs pkcs11_module: the path of the token's PKCS#11 library "
                            "(for SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so)")
    real = os.path.realpath(module_path)
    if not os.path.isfile(real):
        raise KeyStoreError(f"PKCS#11 module {module_path} not found (is the HSM client / softhsm2 installed?)")
    with module_lock(real):
        try:
            return real, _p11.lib(real)
        except _p11e.PKCS11Error as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {module_path}: {exc}") from None


def link(module_path: str | None, token_label: str | None, pin: str | bytes | None) -> TokenLink:
    real, lib = _load_module(module_path)
    if not token_label:
        raise KeyStoreError("kms_provider = pkcs11 needs pkcs11_token_label: the label of the token holding the "
                            "root key")
    pin_text = _pin_text(pin)
    # Held across look-up, login and registration, so two threads never log in to the same token at once.
    lock = module_lock(real)
    with lock:
        with _REGISTRY_LOCK:
            link = _LINKS.get((real, token_label))
            if link is not None and link.refs > 0:
                if not link.pin_matches(pin_text):
                    raise WrongPassphrase(f"the PKCS#11 PIN given for token {token_label!r} is not the one this "
                                          "process logged in with (wrong PIN)")
                link.refs += 1
                return link
        try:
            token = lib.get_token(token_label=token_label)
        except _p11e.NoSuchToken:
            raise KeyStoreError(f"no PKCS#11 token labelled {token_label!r} in module {module_path} (initialise it, "
                                "e.g. softhsm2-util --init-token --free --label ...)") from None
        except _p11e.MultipleTokensReturned:
            raise KeyStoreError(f"more than one PKCS#11 token is labelled {token_label!r} in module {module_path}: "
                                "give each token its own label") from None
        except _p11e.PKCS11Error as exc:
            raise KeyStoreError(f"cannot list the tokens of PKCS#11 module {module_path} "
                                f"({type(exc).__name__})") from None
        link = TokenLink(real, token_label, token, pin_text, lock)
        link.open_session()  # a wrong PIN fails here, before the link is shared
        with _REGISTRY_LOCK:
            link.refs = 1
            _LINKS[(real, token_label)] = link
        return link


def release(link: TokenLink) -> None:
    with link.lock:  # as in _link: no login of a new link can slip between the last release and the logout
        with _REGISTRY_LOCK:
            link.refs -= 1
            if link.refs > 0:
                return
            if _LINKS.get((link.module_path, link.token_label)) is link:
                del _LINKS[(link.module_path, link.token_label)]
        link.close()
