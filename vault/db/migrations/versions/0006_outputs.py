"""Issue 16 (what leaves the vault): the patient's export packages (PIPL 45).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from audit.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APP_ROLE = "healthvault_app"


def upgrade() -> None:
    op.create_table(
        "patient_exports",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("patient_id", sa.String(36), sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("account_id", sa.String(36), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("downloaded_at", UTCDateTime(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_patient_exports_patient", "patient_exports", ["patient_id", "created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON patient_exports TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_index("ix_patient_exports_patient", table_name="patient_exports")
    op.drop_table("patient_exports")
