"""Separate consent (PIPL-1) as an append-only history; the erasure mark on patients (crypto-shredding).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from audit.models import BigId, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "healthvault_app"

# Consent rows are processing records: a withdrawal is a new row, never an edit or a deletion.
_SQLITE = [
    """CREATE TRIGGER consents_no_update BEFORE UPDATE ON consents
       BEGIN SELECT RAISE(ABORT, 'consent history is append-only: UPDATE on consents rejected'); END""",
    """CREATE TRIGGER consents_no_delete BEFORE DELETE ON consents
       BEGIN SELECT RAISE(ABORT, 'consent history is append-only: DELETE on consents rejected'); END""",
]
_PG = [
    """CREATE OR REPLACE FUNCTION consents_reject_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION 'consent history is append-only: % on % rejected', TG_OP, TG_TABLE_NAME
               USING ERRCODE = 'insufficient_privilege';
       END $$""",
    *(f"""CREATE TRIGGER consents_no_{op_name.lower()} BEFORE {op_name} ON consents
          FOR EACH STATEMENT EXECUTE FUNCTION consents_reject_mutation()""" for op_name in ("UPDATE", "DELETE",
                                                                                         "TRUNCATE")),
    f"GRANT SELECT, INSERT ON consents TO {APP_ROLE}",
    f"GRANT USAGE, SELECT ON SEQUENCE consents_id_seq TO {APP_ROLE}",
    # Erasure removes a patient's correction history together with their records.
    f"GRANT DELETE ON lab_corrections TO {APP_ROLE}",
]


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(36), sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("item", sa.String(16), nullable=False),
        sa.Column("given", sa.Boolean(), nullable=False),
        sa.Column("notice_version", sa.String(32), nullable=False),
        sa.Column("notice_hash", sa.String(64), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_consents_patient", "consents", ["patient_id", "id"])
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("erased_at", UTCDateTime(), nullable=True))
    for statement in _PG if op.get_bind().dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("consent rows are processing records (PIPL art. 55) and are never dropped by a downgrade")
