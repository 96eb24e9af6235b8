"""The running vault: settings, database, key manager, blob store, jobs and clock, wired once per process.

This is the vault's composition root: besides the infrastructure it builds, `open_vault` registers the domains'
job handlers (`vault.jobs`) and attaches the key-event auditor, so it is the one infrastructure module that imports
domains (the architecture test names it).

Owns start-up checks: the service refuses to start when the root key is missing or the passphrase is wrong (kms raises
a clear KeyStoreError, which the CLI shows). It holds no request state and never logs secrets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from audit import trail
from audit.log import LogCache
from audit.sink import Sink
from kms import (
    KeyCache,
    KeyManager,
    KeyStore,
    KeyStoreError,
    LocalProvider,
    Pkcs11Provider,
    RootKeyMissing,
    sm2,
    suites,
)
from vault import metrics, profile
from vault.accounts.passwords import PasswordPolicy
from vault.blobs.store import BlobStore, open_store
from vault.db import engine as db
from vault.jobs import Jobs
from vault.keys import events as key_events
from vault.labs import service as labs
from vault.patients.realname import RealNameProvider
from vault.patients.realname import load as load_realname
from vault.records import service as records
from vault.settings import Settings

ROOT_KEY_ENV = "HEALTHVAULT_ROOT_KEY"
PKCS11_PIN_ENV = "HEALTHVAULT_PKCS11_PIN"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class Vault:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keys: KeyManager
    keystore: KeyStore
    blobs: BlobStore
    passwords: PasswordPolicy
    clock: Callable[[], dt.datetime] = utcnow
    log_cache: LogCache = dataclasses.field(default_factory=LogCache)
    jobs: Jobs = dataclasses.field(default_factory=Jobs)
    audit_sink: Sink | None = None
    realname: RealNameProvider | None = None  # real-name verification at registration (None: off)

    def session(self) -> Session:
        return self.sessions()

    def forward_audit_events(self, events: list[dict]) -> None:
        """Hand events whose transaction has committed to the central sink, when one is configured."""
        if self.audit_sink is not None and events:
            self.audit_sink.send(events)

    def close(self) -> None:
        key_events.flush_auditor(self)  # queued key events are written while the engine is still there
        self.jobs.shutdown()
        self.engine.dispose()
        self.keystore.dispose()


def _forward_audit_events(vault: Vault) -> None:
    """Hand committed events to the optional central sink; drop them on rollback. (The sessions of the read fast
    path's batches keep their events for the batch instead: vault/db/fastpath/lane.py.)"""
    event.listen(vault.sessions, "after_commit",
                 lambda session: vault.forward_audit_events(trail.take_committed(session)))
    event.listen(vault.sessions, "after_soft_rollback",
                 lambda session, rolled_back: trail.forget_pending(session, rolled_back))


def _pkcs11_pin(settings: Settings) -> bytes:
    """The token's user PIN: $HEALTHVAULT_PKCS11_PIN, else the file named by pkcs11_pin_file (never an argument)."""
    env_value = os.environ.get(PKCS11_PIN_ENV)
    if env_value:
        return env_value.encode()
    if settings.pkcs11_pin_file:
        try:
            data = Path(settings.pkcs11_pin_file).read_bytes()[:1024]
        except OSError as exc:
            raise KeyStoreError(
                f"cannot read the PKCS#11 PIN file {settings.pkcs11_pin_file}: {exc.strerror}") from None
        return data.rstrip(b"\r\n")
    raise KeyStoreError(f"no PKCS#11 PIN: set {PKCS11_PIN_ENV} or pkcs11_pin_file (HEALTHVAULT_PKCS11_PIN_FILE)")


def _open_pkcs11(settings: Settings, *, create: bool) -> Pkcs11Provider:
    return Pkcs11Provider.open(module=settings.pkcs11_module, token_label=settings.pkcs11_token_label,
                               key_label=settings.pkcs11_key_label, pin=_pkcs11_pin(settings), create=create)


def open_root_key(settings: Settings, passphrase: bytes | None):
    """The root-key provider: with kms_provider = pkcs11, the token's root key (no passphrase; the PIN from env or
    file); else a development key from $HEALTHVAULT_ROOT_KEY, else the sealed key file."""
    if settings.kms_provider == "pkcs11":
        return _open_pkcs11(settings, create=False)
    env_value = os.environ.get(ROOT_KEY_ENV)
    if env_value:
        return LocalProvider.from_env_value(env_value)
    if not settings.root_key_path.exists():
        raise RootKeyMissing(
            f"no root key at {settings.root_key_path}: run `healthvault init` first "
            f"(or set {ROOT_KEY_ENV} for development)"
        )
    if passphrase is None:
        raise RootKeyMissing("the root key is sealed: give its passphrase "
                             "(HEALTHVAULT_PASSPHRASE or --passphrase-file)")
    return LocalProvider.open(settings.root_key_path, passphrase)


def open_vault(settings: Settings, passphrase: bytes | None, *, migrate: bool = True,
               clock: Callable[[], dt.datetime] = utcnow) -> Vault:
    """Open an initialised vault; raises kms.KeyStoreError (clear message) on a missing key or wrong passphrase, and
    vault.profile.ProductionRefused when the production profile finds a setting it will not run with."""
    profile.refuse_unless_ready(profile.settings_checks(settings), settings)
    suite = _require_suite(settings)
    provider = open_root_key(settings, passphrase)
    keystore = KeyStore(settings.keystore_url, schema=settings.keystore_schema)
    engine = db.make_engine(settings.database_url)
    cache = KeyCache(max_age=settings.key_cache_max_age, max_uses=settings.key_cache_max_uses)
    cache.on_lookup = metrics.observe_key_cache
    keys = KeyManager(provider, keystore, cache=cache, suite=suite)
    sealed_with: list[str] = []  # service keys a migration created to seal existing rows (audited below)
    if migrate:
        keystore.migrate()
        sealed_with = db.migrate(engine, keys=keys, suite=suite, keystore=keystore)
        with engine.begin() as conn, Session(conn) as session:
            trail.ensure_chains(session, settings.effective_audit_chains,
                                trail.SM_EVENT_FORMAT if suite == suites.SM4_GCM else trail.EVENT_FORMAT)
            session.flush()
    blobs = open_store(url=settings.blob_url, local_dir=settings.blob_dir)
    blobs.sweep_temp()
    sessions = db.make_sessionmaker(engine)
    vault = Vault(
        settings=settings,
        engine=engine,
        sessions=sessions,
        keys=keys,
        keystore=keystore,
        blobs=blobs,
        passwords=PasswordPolicy(
            time_cost=settings.password_time_cost,
            memory_kib=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
        ),
        clock=clock,
        log_cache=LogCache("sm3" if suite == suites.SM4_GCM else "sha256"),
        audit_sink=Sink(settings.audit_sink) if settings.audit_sink else None,
        jobs=_jobs(settings),
        realname=load_realname(settings),
    )
    _forward_audit_events(vault)
    vault.jobs.register(records.EXTRACT_JOB, metrics.timed(records.EXTRACT_JOB,
                                                           functools.partial(labs.run_extraction, vault)), workers=1)
    key_events.attach_auditor(vault)  # every process audits failed unwraps (API, every CLI verb, jobs)
    if migrate:
        key_events.ensure_service_keys(vault, created_by_migration=sealed_with)
    return vault


def _jobs(settings: Settings) -> Jobs:
    """In-process pools (embedded default), or the Procrastinate queue on PostgreSQL (`job_queue`)."""
    if settings.job_queue != "procrastinate":
        return Jobs()
    from vault.jobs.queue import QueueJobs

    return QueueJobs(settings.database_url, heartbeat_seconds=settings.job_heartbeat_seconds,
                     stalled_seconds=settings.job_stalled_seconds)


def _require_suite(settings: Settings) -> int:
    """The configured crypto_suite's id, after known-answer tests of every primitive it needs (SM4-GCM, SM3 and
    HMAC-SM3, SM2 for "sm"); kms.suites.SuiteUnavailable (a KeyStoreError, shown by the CLI) names what is missing."""
    suite = suites.by_name(settings.crypto_suite)
    suites.require(suite)
    if suite == suites.SM4_GCM:
        sm2.require()
    return suite


def init_data_dir(settings: Settings, passphrase: bytes | None, *, kdf_params: dict | None = None) -> Path:
    """Create the data directory and the root key: with kms_provider = pkcs11, version 1 inside the token when the
    token holds none under the key label (never replacing one); else the sealed key file (unless a development key
    is given by env)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.data_dir, 0o700)
    (settings.data_dir / "keys").mkdir(exist_ok=True, mode=0o700)
    if settings.kms_provider == "pkcs11":
        _open_pkcs11(settings, create=True).close()
        return settings.data_dir
    if not os.environ.get(ROOT_KEY_ENV) and not settings.root_key_path.exists():
        if not passphrase:
            raise RootKeyMissing("a passphrase is needed to seal the new root key")
        LocalProvider.create(settings.root_key_path, passphrase, **({"kdf_params": kdf_params} if kdf_params else {}))
    return settings.data_dir
