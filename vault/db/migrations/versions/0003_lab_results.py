"""Lab-sheet extraction results on records, and the history of patient corrections.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from audit.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("ocr_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("ocr_error", sa.String(32), nullable=True))
        batch.add_column(sa.Column("lab_results_enc", sa.LargeBinary(), nullable=True))
    op.create_table(
        "lab_corrections",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("record_id", sa.String(36), sa.ForeignKey("records.id"), nullable=False),
        sa.Column("patient_id", sa.String(36), sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("account_id", sa.String(36), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("change_enc", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_lab_corrections_record_id", "lab_corrections", ["record_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("GRANT SELECT, INSERT ON lab_corrections TO healthvault_app")


def downgrade() -> None:
    op.drop_table("lab_corrections")
    with op.batch_alter_table("records") as batch:
        batch.drop_column("lab_results_enc")
        batch.drop_column("ocr_error")
        batch.drop_column("ocr_status")
