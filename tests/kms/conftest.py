"""Fixtures for kms tests: a cheap sealed root key, a migrated SQLite key store, a key manager on a test clock, and
the real PostgreSQL (skipped when unreachable, required when CI=true). Nothing in cryptography is mocked."""

from __future__ import annotations

import os
import secrets

import pytest
from sqlalchemy import create_engine, text

from kms import KeyCache, KeyManager, KeyStore, LocalProvider

CHEAP_KDF = {"t": 1, "m": 1024, "p": 1}
PASSPHRASE = b"kms test passphrase: correct horse"
PG_URL = os.environ.get("HEALTHVAULT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Clock:
    """Seconds the test controls."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root_path(tmp_path):
    return tmp_path / "root.key"


@pytest.fixture
def provider(root_path) -> LocalProvider:
    return LocalProvider.create(root_path, PASSPHRASE, kdf_params=CHEAP_KDF)


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def store(store_url):
    ks = KeyStore(store_url)
    ks.migrate()
    yield ks
    ks.dispose()


@pytest.fixture
def manager(provider, store, clock) -> KeyManager:
    return KeyManager(provider, store, cache=KeyCache(max_age=300, max_uses=1000), clock=clock)


@pytest.fixture(scope="session")
def pg_available() -> bool:
    from tests.conftest import PG_AVAILABLE

    return PG_AVAILABLE


@pytest.fixture
def pg_schema(pg_available):
    """A unique schema name on the real PostgreSQL (created by KeyStore.migrate), dropped afterwards."""
    if not pg_available:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} must be reachable in CI")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"hv_keys_test_{secrets.token_hex(4)}"
    yield schema
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()
