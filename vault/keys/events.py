"""Key events that kms raises inside other flows (a failed unwrap in the middle of a request), into the audit trail.

Owns: the listener attached to every vault's KeyManager (by `open_vault`) and its background writer; and creating
the service keys when a vault opens (`ensure_service_keys`), each audited as `key.create`, so that none is created
unrecorded on first use inside another flow.
Never: writes from the thread that raised the event (that thread may hold the audit chain's lock in its own
transaction), blocks or fails the request that raised it, or records key bytes or patient ids (pseudonyms only).
Crypto-shredding is audited by the erasure service in the erasure's own transaction, so it is not repeated here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING

from kms.manager import KeyEvent
from vault.identity import RequestContext
from vault.keys.common import SYSTEM, audit_now

if TYPE_CHECKING:
    from vault.runtime import Vault

log = logging.getLogger("healthvault.keys")

_RESOURCE = {"kek": "patient-kek", "dek": "dek", "service": "service-key"}


class KeyEventAuditor:
    """Writes failed unwraps reported by KeyManager into the audit trail, from a background thread.

    A failed unwrap happens inside a request that may hold the audit chain's lock (SQLite's write lock, a PostgreSQL
    chain-head row) in its own transaction, so writing the event synchronously from that thread in another
    transaction could wait on itself. The event is queued and appended by a writer thread in its own transaction
    (started on demand, gone after a few idle seconds); `flush()` waits for the queue. Crypto-shredding is audited
    by the erasure service in the erasure's own transaction (`key.shred`), so it is not repeated here.
    """

    IDLE_SECONDS = 5.0

    def __init__(self, vault: Vault, *, max_queue: int = 10_000) -> None:
        self._vault = weakref.ref(vault)
        self._queue: queue.Queue[KeyEvent] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.dropped = 0

    def __call__(self, event: KeyEvent) -> None:
        if event.action != "key.unwrap_failed" or threading.current_thread() is self._thread:
            return  # the writer's own failures (e.g. the pseudonym key) must not feed back into it
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            log.error("key event queue full: %d event(s) not audited", self.dropped)
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="key-event-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._start_lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                self._write(event)
            except Exception as exc:  # noqa: BLE001 - logged by class only; never takes the process down
                log.error("could not audit a key event: %s", type(exc).__name__)
            finally:
                self._queue.task_done()

    def _write(self, event: KeyEvent) -> None:
        vault = self._vault()
        if vault is None:
            return
        audit_now(vault, identity=SYSTEM, ctx=RequestContext(request_id="kms"), action=event.action,
                   outcome="error", resource_type=_RESOURCE.get(event.kind, event.kind),
                   resource_id=event.name, patient_id=event.patient_id, reason=event.detail)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True


_AUDITORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attach_auditor(vault: Vault) -> KeyEventAuditor:
    """Audit key events of this vault's KeyManager (idempotent; open_vault attaches it in every process)."""
    auditor = _AUDITORS.get(vault.keys)
    if auditor is None:
        auditor = _AUDITORS[vault.keys] = KeyEventAuditor(vault)
        vault.keys.add_listener(auditor)
    return auditor


def flush_auditor(vault: Vault, timeout: float = 5.0) -> None:
    """Write any queued key events now (Vault.close calls it, so no writer thread outlives the engine's use)."""
    auditor = _AUDITORS.get(vault.keys)
    if auditor is not None:
        auditor.flush(timeout)


def _service_purposes(vault: Vault) -> list[str]:
    """Every service key this vault's current suite uses (the names each module asks kms for)."""
    from audit import log
    from audit.pseudonyms import PURPOSE as PSEUDONYM
    from consent import integrity, receipts
    from kms import suites
    from vault import fields
    from vault.accounts import totp
    from vault.patients import service as patients

    suite = fields.suite_of(vault)
    return [*(suites.purpose(base, suite) for base in (PSEUDONYM, patients.ID_INDEX_PURPOSE,
                                                       patients.PHONE_INDEX_PURPOSE, log.SIGNING_PURPOSE)),
            receipts.PURPOSE, totp.PURPOSE, suites.purpose(integrity.PURPOSE, suite)]


def ensure_service_keys(vault: Vault, *, created_by_migration: list[str] | None = None) -> list[str]:
    """Create the service keys the vault will use that do not exist yet, each audited (`key.create`) in its own
    transaction, so that no key is born unrecorded on first use in the middle of another flow; and audit the keys a
    migration created to seal existing rows (`created_by_migration`, reason "migration"). Returns the purposes
    created here (none on every start after the first)."""
    ctx = RequestContext(request_id="kms")
    for purpose in created_by_migration or ():
        audit_now(vault, identity=SYSTEM, ctx=ctx, action="key.create", outcome="allow",
                  resource_type="service-key", resource_id=purpose, reason="migration")
    created = [p for p in _service_purposes(vault) if vault.keystore.newest_service_key(p) is None]
    for purpose in created:
        vault.keys.service_key(purpose)
        audit_now(vault, identity=SYSTEM, ctx=ctx, action="key.create", outcome="allow",
                  resource_type="service-key", resource_id=purpose, reason="startup")
    return created
