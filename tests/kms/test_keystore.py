import stat

import pytest
from sqlalchemy import create_engine, inspect, text

from kms import KeyCache, KeyDestroyed, KeyManager, KeyStore, KeyStoreError
from kms.keystore_tables import KeyStoreBase

from .conftest import PG_URL


def test_own_metadata_with_exactly_its_tables():
    assert set(KeyStoreBase.metadata.tables) == {"patient_keks", "service_keys", "rotation_requests", "rewrap_jobs"}
    assert {c.name for c in KeyStoreBase.metadata.tables["patient_keks"].columns} == {
        "patient_id", "version", "root_version", "wrapped", "created_at", "destroyed_at", "suite"}
    assert {c.name for c in KeyStoreBase.metadata.tables["service_keys"].columns} == {
        "purpose", "version", "root_version", "wrapped", "created_at"}


def test_migrate_is_idempotent_and_uses_its_own_version_table(store, tmp_path):
    store.migrate()
    engine = create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    names = set(inspect(engine).get_table_names())
    assert names == {"patient_keks", "service_keys", "rotation_requests", "rewrap_jobs", "kms_alembic_version"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM kms_alembic_version")).scalar() == "kms_0002"
    engine.dispose()


def test_sqlite_pragmas_and_private_file(store, tmp_path):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert stat.S_IMODE((tmp_path / "keys.db").stat().st_mode) == 0o600


def test_schema_is_refused_on_sqlite(store_url):
    with pytest.raises(KeyStoreError):
        KeyStore(store_url, schema="hv_keys")


def test_migration_failure_is_a_key_store_error(tmp_path):
    (tmp_path / "keys.db").mkdir()  # a directory where the database file should be
    store = KeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    with pytest.raises(KeyStoreError):
        store.migrate()
    store.dispose()


def test_repr_hides_password():
    store = KeyStore("postgresql+psycopg://app:s3cret@127.0.0.1:5432/db", schema="hv_keys")
    assert "s3cret" not in repr(store)
    store.dispose()


@pytest.mark.postgres
def test_postgres_schema_round_trip(pg_schema, provider, clock):
    store = KeyStore(PG_URL, schema=pg_schema)
    try:
        store.migrate()
        store.migrate()
        admin = create_engine(PG_URL)
        tables = set(inspect(admin).get_table_names(schema=pg_schema))
        assert tables == {"patient_keks", "service_keys", "rotation_requests", "rewrap_jobs", "kms_alembic_version"}
        admin.dispose()

        manager = KeyManager(provider, store, cache=KeyCache(), clock=clock)
        manager.create_patient_key("pg-patient")
        dek, wrapped = manager.new_data_key("pg-patient")
        fresh = KeyManager(provider, store, cache=KeyCache(), clock=clock)
        assert fresh.open_data_key("pg-patient", wrapped) == dek
        assert fresh.service_key("pseudonym") == manager.service_key("pseudonym")
        assert manager.destroy_patient_keys("pg-patient") == 1
        restarted = KeyManager(provider, KeyStore(PG_URL, schema=pg_schema), cache=KeyCache(), clock=clock)
        with pytest.raises(KeyDestroyed):
            restarted.open_data_key("pg-patient", wrapped)
        assert not restarted.patient_key_exists("pg-patient")
        restarted._store.dispose()
    finally:
        store.dispose()
