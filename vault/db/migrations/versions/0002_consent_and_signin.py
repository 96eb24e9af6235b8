"""Consent grants, break-glass claims, sensitivity labels, sign-in hardening (lockout, TOTP, idle timeout).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from audit.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "healthvault_app"


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("patient_id", sa.String(36), nullable=False),
        sa.Column("grantee_id", sa.String(36), nullable=False),
        sa.Column("record_ids", sa.Text(), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("include_future", sa.Boolean(), nullable=False),
        sa.Column("actions", sa.String(128), nullable=False),
        sa.Column("purpose_enc", sa.LargeBinary(), nullable=False),
        sa.Column("consult_ref", sa.String(64), nullable=True),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("receipt", sa.Text(), nullable=False),
    )
    op.create_index("ix_grants_grantee_patient", "grants", ["grantee_id", "patient_id", "expires_at"])
    op.create_index("ix_grants_patient", "grants", ["patient_id", "created_at"])
    op.create_table(
        "breakglass",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("doctor_id", sa.String(36), nullable=False),
        sa.Column("patient_id", sa.String(36), nullable=False),
        sa.Column("reason_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_breakglass_doctor_patient", "breakglass", ["doctor_id", "patient_id", "expires_at"])
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("label", sa.String(16), nullable=False, server_default="normal"))
        batch.add_column(sa.Column("label_enc", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("locked_until", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("totp_secret_enc", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("totp_enabled", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("auth_tokens") as batch:
        batch.add_column(sa.Column("last_seen_at", UTCDateTime(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON grants, breakglass TO {APP_ROLE}")


def downgrade() -> None:
    raise RuntimeError("consent records are processing records (PIPL art. 55) and are never dropped by a downgrade")
