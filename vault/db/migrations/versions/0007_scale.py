"""Beyond one machine (issue 17): the job queue's schema (Procrastinate) on PostgreSQL; the key-invalidation notices
that several processes must agree on.

Procrastinate's tables, types and functions are created in the data schema by Procrastinate's own schema file, as the
owner role that runs migrations; the application role may use them (queue, fetch, finish jobs) but not change them.
On SQLite nothing of the queue is created: the embedded default runs jobs in-process.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from audit.models import BigId, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APP_ROLE = "healthvault_app"
QUEUE_TABLES = ("procrastinate_jobs", "procrastinate_events", "procrastinate_periodic_defers",
                "procrastinate_workers")


def _apply_queue_schema() -> None:
    from procrastinate.schema import SchemaManager

    bind = op.get_bind()
    exists = bind.execute(sa.text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")).scalar()
    if not exists:
        # Procrastinate's own schema file: many statements with literal % signs, so it goes to the driver as is
        # (no parameters: psycopg sends it in one simple-protocol query), inside the migration's transaction.
        bind.connection.dbapi_connection.execute(SchemaManager.get_schema())  # type: ignore[union-attr]
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(QUEUE_TABLES)} TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {APP_ROLE}")


def upgrade() -> None:
    # Notices that cached keys must go, read by every process (vault/db/keystate.py): append-only for the service.
    op.create_table(
        "key_invalidations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT SELECT, INSERT ON key_invalidations TO {APP_ROLE}")
        _apply_queue_schema()


def downgrade() -> None:
    op.drop_table("key_invalidations")
    if op.get_bind().dialect.name == "postgresql":
        for table in QUEUE_TABLES:
            op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        op.execute("""DO $$ DECLARE r record; BEGIN
            FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc p
                     WHERE p.proname LIKE 'procrastinate%' AND p.pronamespace = current_schema()::regnamespace LOOP
              EXECUTE 'DROP FUNCTION IF EXISTS ' || r.f || ' CASCADE';
            END LOOP;
            FOR r IN SELECT t.typname AS t FROM pg_type t
                     WHERE t.typname LIKE 'procrastinate%' AND t.typnamespace = current_schema()::regnamespace
                       AND t.typtype IN ('e', 'c') LOOP
              EXECUTE 'DROP TYPE IF EXISTS ' || quote_ident(r.t) || ' CASCADE';
            END LOOP; END $$""")
