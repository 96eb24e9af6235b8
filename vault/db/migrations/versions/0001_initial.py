"""Initial schema: patients, accounts, tokens, records; the append-only, hash-chained audit trail.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from audit.models import BigId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("audit_events", "audit_leaves", "audit_checkpoints", "audit_archive_permits")

# audit_events rows may be deleted only below a verified archive permit (written by `audit archive` in the same
# transaction as its prune); every other table refuses UPDATE and DELETE outright; chain heads only move forward.
_SQLITE_TRIGGERS = [
    *(f"""CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t}
         BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on {t} rejected'); END""" for t in APPEND_ONLY),
    *(f"""CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t}
         BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE on {t} rejected'); END"""
      for t in APPEND_ONLY if t != "audit_events"),
    """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
       WHEN NOT EXISTS (SELECT 1 FROM audit_leaves l JOIN audit_archive_permits p ON l.leaf_index < p.below_leaf
                        WHERE l.chain_id = OLD.chain_id AND l.seq = OLD.seq)
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE on audit_events rejected'); END""",
    """CREATE TRIGGER audit_chain_heads_forward BEFORE UPDATE ON audit_chain_heads
       WHEN NEW.seq < OLD.seq OR NEW.integrated_seq < OLD.integrated_seq OR NEW.chain_id <> OLD.chain_id
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: chain head moved backwards'); END""",
    """CREATE TRIGGER audit_chain_heads_no_delete BEFORE DELETE ON audit_chain_heads
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE on audit_chain_heads rejected'); END""",
]
_PG_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION audit_reject_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION 'audit trail is append-only: % on % rejected', TG_OP, TG_TABLE_NAME
               USING ERRCODE = 'insufficient_privilege';
       END $$""",
    """CREATE OR REPLACE FUNCTION audit_guard_event_delete() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NOT EXISTS (SELECT 1 FROM audit_leaves l JOIN audit_archive_permits p ON l.leaf_index < p.below_leaf
                        WHERE l.chain_id = OLD.chain_id AND l.seq = OLD.seq) THEN
           RAISE EXCEPTION 'audit trail is append-only: DELETE on audit_events rejected'
                 USING ERRCODE = 'insufficient_privilege';
         END IF;
         RETURN OLD;
       END $$""",
    """CREATE OR REPLACE FUNCTION audit_heads_forward() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.seq < OLD.seq OR NEW.integrated_seq < OLD.integrated_seq OR NEW.chain_id <> OLD.chain_id THEN
           RAISE EXCEPTION 'audit trail is append-only: chain head moved backwards'
                 USING ERRCODE = 'insufficient_privilege';
         END IF;
         RETURN NEW;
       END $$""",
    *(f"""CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t}
          FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation()""" for t in APPEND_ONLY),
    *(f"""CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t}
          FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation()""" for t in APPEND_ONLY if t != "audit_events"),
    """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION audit_guard_event_delete()""",
    *(f"""CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}
          FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation()"""
      for t in (*APPEND_ONLY, "audit_chain_heads")),
    """CREATE TRIGGER audit_chain_heads_forward BEFORE UPDATE ON audit_chain_heads
       FOR EACH ROW EXECUTE FUNCTION audit_heads_forward()""",
    """CREATE TRIGGER audit_chain_heads_no_delete BEFORE DELETE ON audit_chain_heads
       FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_mutation()""",
]


APP_ROLE = "healthvault_app"
_PG_APP_ROLE = [
    f"""DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}')
          THEN CREATE ROLE {APP_ROLE} NOLOGIN; END IF;
        END $$""",  # noqa: S608 - a constant role name, no input
    f"GRANT USAGE ON SCHEMA {{schema}} TO {APP_ROLE}",
    f"GRANT SELECT ON alembic_version TO {APP_ROLE}",
    f"GRANT SELECT, INSERT, UPDATE, DELETE ON patients, accounts, auth_tokens, records TO {APP_ROLE}",
    # The trail: read and append only. UPDATE on the chain heads moves them forward (a trigger refuses backwards).
    f"GRANT SELECT, INSERT ON audit_events, audit_leaves, audit_checkpoints TO {APP_ROLE}",
    f"GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO {APP_ROLE}",
    f"GRANT SELECT ON audit_archive_permits TO {APP_ROLE}",
    f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {{schema}} TO {APP_ROLE}",
]


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("real_name_enc", sa.LargeBinary(), nullable=False),
        sa.Column("id_number_enc", sa.LargeBinary(), nullable=False),
        sa.Column("phone_enc", sa.LargeBinary(), nullable=False),
        sa.Column("birth_date_enc", sa.LargeBinary(), nullable=False),
        sa.Column("id_number_bidx", sa.LargeBinary(16), nullable=False, unique=True),
        sa.Column("phone_bidx", sa.LargeBinary(16), nullable=False),
    )
    op.create_index("ix_patients_phone_bidx", "patients", ["phone_bidx"])
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("patient_id", sa.String(36), sa.ForeignKey("patients.id"), nullable=True, unique=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("must_change_password", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "auth_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("account_id", sa.String(36), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_auth_tokens_account_id", "auth_tokens", ["account_id"])
    op.create_table(
        "records",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("patient_id", sa.String(36), sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(36), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("title_enc", sa.LargeBinary(), nullable=True),
        sa.Column("filename_enc", sa.LargeBinary(), nullable=True),
        sa.Column("sha256_enc", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_records_patient_created", "records", ["patient_id", "created_at", "id"])
    op.create_table(
        "audit_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("actor_role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("patient_pseudonym", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(128), nullable=True),
        sa.Column("grant_id", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("client_addr", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(256), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ux_audit_events_chain_seq", "audit_events", ["chain_id", "seq"], unique=True)
    op.create_index("ix_audit_events_patient", "audit_events", ["patient_pseudonym", "id"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor", "id"])
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_index("ix_audit_events_action", "audit_events", ["action"])
    op.create_table(
        "audit_chain_heads",
        sa.Column("chain_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("integrated_seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "audit_leaves",
        sa.Column("leaf_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_audit_checkpoints_tree_size", "audit_checkpoints", ["tree_size"])
    op.create_table(
        "audit_archive_permits",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("below_leaf", sa.BigInteger(), nullable=False),
        sa.Column("archive_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    bind = op.get_bind()
    for statement in _PG_TRIGGERS if bind.dialect.name == "postgresql" else _SQLITE_TRIGGERS:
        op.execute(statement)
    if bind.dialect.name == "postgresql":
        schema = bind.exec_driver_sql("SELECT current_schema()").scalar()
        for statement in _PG_APP_ROLE:
            op.execute(statement.replace("{schema}", f'"{schema}"'))


def downgrade() -> None:
    raise RuntimeError("the initial schema holds the audit trail and is never downgraded")
