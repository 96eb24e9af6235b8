"""Shared fixtures: a real vault on SQLite (always) and on the real PostgreSQL (when reachable; required in CI).

Nothing here mocks a component: tests get a migrated database, a sealed local root key, the key store and the blob
directory, and talk to the FastAPI app over its ASGI interface or a real socket.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import uuid

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import egress
from vault.runtime import init_data_dir, open_vault
from vault.settings import Settings

# PIPL-13: no test may reach beyond this machine. The guard refuses and counts non-loopback connections, here and in
# every Python subprocess (tests/helpers/egress.py); the session fails at its end if anything was attempted.
egress.install()

PG_URL = os.environ.get("HEALTHVAULT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSPHRASE = b"correct horse battery staple 42"
CHEAP_KDF = {"t": 1, "m": 1024, "p": 1}
CHEAP_PASSWORDS = dict(password_time_cost=1, password_memory_kib=1024, password_parallelism=1)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# HEALTHVAULT_TEST_KMS=pkcs11 runs every vault this file builds on a SoftHSM2 token (tests/helpers/softhsm.py)
# instead of a sealed local key file; tests/system/test_pkcs11_foundation.py runs the foundation suite that way.
TEST_KMS = os.environ.get("HEALTHVAULT_TEST_KMS", "local")
# HEALTHVAULT_TEST_BLOBS=s3 puts the blobs of every vault this file builds in a real SeaweedFS
# (tests/helpers/seaweed.py), each under a prefix of its own, instead of the data directory; .ci/run runs the
# records and erasure tests that way.
TEST_BLOBS = os.environ.get("HEALTHVAULT_TEST_BLOBS", "local")


def _pg_reachable() -> bool:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


PG_AVAILABLE = _pg_reachable()


def require_pg() -> None:
    if not PG_AVAILABLE:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} must be reachable in CI")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request) -> str:
    if request.param == "postgres":
        require_pg()
    return request.param


@pytest.fixture
def pg_schemas():
    """A pair of fresh schemas (data, keys) on the real PostgreSQL, dropped afterwards."""
    require_pg()
    suffix = secrets.token_hex(4)
    data_schema, key_schema = f"hvt_{suffix}", f"hvt_keys_{suffix}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {data_schema}"))
    yield data_schema, key_schema
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {data_schema} CASCADE"))
        conn.execute(text(f"DROP SCHEMA IF EXISTS {key_schema} CASCADE"))
    admin.dispose()


class FakeClock:
    """A clock the test controls."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += dt.timedelta(**delta)


def kms_overrides(data_dir) -> dict:
    """Settings for the root-key provider under test: none for `local`; a SoftHSM2 token and a key label of this data
    directory's own for `pkcs11` (the PIN comes from a file, as in a deployment)."""
    if TEST_KMS != "pkcs11":
        return {}
    import hashlib

    from tests.helpers.softhsm import process_softhsm

    hsm = process_softhsm()
    return dict(kms_provider="pkcs11", pkcs11_module=hsm.module, pkcs11_token_label=hsm.token_label,
                pkcs11_pin_file=str(hsm.pin_file),
                pkcs11_key_label="hv-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:16])


def require_seaweed():
    """This process's SeaweedFS server; fails in CI when `weed` is missing, skips elsewhere."""
    from tests.helpers import seaweed

    reason = seaweed.missing()
    if reason:
        if IN_CI:
            pytest.fail(f"SeaweedFS is required in CI: {reason}")
        pytest.skip(reason)
    return seaweed.process_seaweed()


def blob_overrides() -> dict:
    """Settings for the blob store under test: none for `local`; a fresh prefix on SeaweedFS for `s3`."""
    if TEST_BLOBS != "s3":
        return {}
    return dict(blob_url=require_seaweed().blob_url())


@pytest.fixture(scope="session")
def seaweed():
    return require_seaweed()


def make_settings(tmp_path, backend: str, request=None, **overrides) -> Settings:
    data_dir = tmp_path / "var"
    overrides = {**kms_overrides(data_dir), **blob_overrides(), **overrides}
    if backend == "postgres":
        data_schema, key_schema = request.getfixturevalue("pg_schemas")
        url = f"{PG_URL}?options=-csearch_path%3D{data_schema}"
        return Settings.load(data_dir, database_url=url, keystore_url=PG_URL, keystore_schema=key_schema,
                             **CHEAP_PASSWORDS, **overrides)
    return Settings.load(data_dir, **CHEAP_PASSWORDS, **overrides)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path, backend, request) -> Settings:
    return make_settings(tmp_path, backend, request)


@pytest.fixture
def vault(settings, clock, monkeypatch):
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    instance = open_vault(settings, PASSPHRASE, clock=clock)
    yield instance
    instance.close()


@pytest.fixture
def pg_app_role_settings(tmp_path, request, monkeypatch):
    """(owner settings, the same settings as a fresh login role in `healthvault_app`) on the real PostgreSQL.

    The owner initialises and migrates; the app settings reach the data schema as the service's restricted role (the
    key store keeps its own credential, here the owner's). The role is dropped afterwards."""
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    owner = make_settings(tmp_path, "postgres", request)
    init_data_dir(owner, PASSPHRASE, kdf_params=CHEAP_KDF)
    open_vault(owner, PASSPHRASE).close()  # the owner migrates
    login_role = f"hv_svc_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {login_role} LOGIN IN ROLE healthvault_app"))
    data_schema = owner.database_url.split("search_path%3D", 1)[1]
    app_url = PG_URL.replace("postgres@", f"{login_role}@") + f"?options=-csearch_path%3D{data_schema}"
    try:
        yield owner, dataclasses.replace(owner, database_url=app_url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {login_role}"))
            conn.execute(text(f"DROP ROLE {login_role}"))
        admin.dispose()


@pytest.fixture
def app(vault):
    from api.app import create_app

    return create_app(vault)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def pytest_sessionfinish(session, exitstatus) -> None:
    """Zero egress attempts, or the run fails (COMPLIANCE PIPL-13), whatever the tests said."""
    message = egress.report(egress.all_attempts())
    if message:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
