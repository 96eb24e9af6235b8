"""Alembic is the schema's source of truth: the migrated database matches the models exactly."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from audit.models import AuditBase
from consent.models import ConsentBase
from vault.db.models import Base


def _ours(name, type_, _parent_names) -> bool:
    """Procrastinate's queue tables (migration 0007 applies its own schema file) are not modelled here."""
    return not (type_ in ("table", "index") and str(name).startswith("procrastinate_"))


def test_migrations_match_the_models(vault):
    with vault.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": _ours})
        diff = compare_metadata(context, [Base.metadata, AuditBase.metadata, ConsentBase.metadata])
    assert diff == []


def test_migrating_twice_is_a_no_op(vault):
    from vault.db import engine as db

    db.migrate(vault.engine)
    vault.keystore.migrate()
