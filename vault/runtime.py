"""The running vault: settings, database, key manager, blob store and clock, wired once per process.

Owns start-up checks: the service refuses to start when the root key is missing or the passphrase is wrong (kms raises
a clear KeyStoreError, which the CLI shows). It holds no request state and never logs secrets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from audit import trail
from audit.log import LogCache
from audit.sink import Sink
from kms import KeyCache, KeyManager, KeyStore, LocalProvider, RootKeyMissing
from vault import db
from vault.blobstore import BlobStore, LocalBlobStore
from vault.labs import LabJobs
from vault.passwords import PasswordPolicy
from vault.settings import Settings

if TYPE_CHECKING:  # audit_trail imports the runtime's neighbours; the type is only named here
    from vault.audit_trail import ExportJobs

ROOT_KEY_ENV = "HEALTHVAULT_ROOT_KEY"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
    exports: "ExportJobs" = dataclasses.field(default_factory=lambda: _export_jobs())
    labs: LabJobs = dataclasses.field(default_factory=LabJobs)

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.labs.shutdown()
        self.engine.dispose()
        self.keystore.dispose()


def _forward_audit_events(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Hand committed events to the optional central sink; drop them on rollback."""
    sink = Sink(settings.audit_sink) if settings.audit_sink else None

    def after_commit(session: Session) -> None:
        events = trail.take_committed(session)
        if sink is not None and events:
            sink.send(events)

    event.listen(sessions, "after_commit", after_commit)
    event.listen(sessions, "after_soft_rollback", lambda session, _tx: trail.forget_pending(session))


def _export_jobs():
    from vault.audit_trail import ExportJobs

    return ExportJobs()


def open_root_key(settings: Settings, passphrase: bytes | None):
    """The root-key provider: a development key from $HEALTHVAULT_ROOT_KEY, else the sealed key file."""
    env_value = os.environ.get(ROOT_KEY_ENV)
    if env_value:
        return LocalProvider.from_env_value(env_value)
    if not settings.root_key_path.exists():
        raise RootKeyMissing(
            f"no root key at {settings.root_key_path}: run `healthvault init` first (or set {ROOT_KEY_ENV} for development)"
        )
    if passphrase is None:
        raise RootKeyMissing("the root key is sealed: give its passphrase (HEALTHVAULT_PASSPHRASE or --passphrase-file)")
    return LocalProvider.open(settings.root_key_path, passphrase)


def open_vault(settings: Settings, passphrase: bytes | None, *, migrate: bool = True,
               clock: Callable[[], dt.datetime] = utcnow) -> Vault:
    """Open an initialised vault; raises kms.KeyStoreError (clear message) on a missing key or wrong passphrase."""
    provider = open_root_key(settings, passphrase)
    keystore = KeyStore(settings.keystore_url, schema=settings.keystore_schema)
    engine = db.make_engine(settings.database_url)
    if migrate:
        keystore.migrate()
        db.migrate(engine)
        with engine.begin() as conn, Session(conn) as session:
            trail.ensure_chains(session, settings.effective_audit_chains)
            session.flush()
    cache = KeyCache(max_age=settings.key_cache_max_age, max_uses=settings.key_cache_max_uses)
    keys = KeyManager(provider, keystore, cache=cache)
    blobs = LocalBlobStore(settings.blob_dir)
    blobs.sweep_temp()
    sessions = db.make_sessionmaker(engine)
    _forward_audit_events(sessions, settings)
    return Vault(
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
    )


def init_data_dir(settings: Settings, passphrase: bytes | None, *, kdf_params: dict | None = None) -> Path:
    """Create the data directory and the sealed root key (unless a development key is given by env)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.data_dir, 0o700)
    (settings.data_dir / "keys").mkdir(exist_ok=True, mode=0o700)
    if not os.environ.get(ROOT_KEY_ENV) and not settings.root_key_path.exists():
        if not passphrase:
            raise RootKeyMissing("a passphrase is needed to seal the new root key")
        LocalProvider.create(settings.root_key_path, passphrase, **({"kdf_params": kdf_params} if kdf_params else {}))
    return settings.data_dir
