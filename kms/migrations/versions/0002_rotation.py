"""Key store: KEK suites, root rotation requests (two-person rule) and rewrap jobs.

Revision ID: kms_0002
Revises: kms_0001
"""

import sqlalchemy as sa
from alembic import context, op

revision = "kms_0002"
down_revision = "kms_0001"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    schema: str | None = context.config.attributes.get("schema")
    return schema


def upgrade() -> None:
    schema = _schema()
    # Every KEK written before this revision is AES-256-GCM (suite 1).
    with op.batch_alter_table("patient_keks", schema=schema) as batch:
        batch.add_column(sa.Column("suite", sa.Integer, nullable=False, server_default=sa.text("1")))
    op.create_table(
        "rotation_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(64), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("new_version", sa.Integer, nullable=True),
        schema=schema,
    )
    op.create_index("ix_rotation_requests_status", "rotation_requests", ["status", "requested_at"], schema=schema)
    op.create_table(
        "rewrap_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("cursor", sa.String(130), nullable=True),
        sa.Column("runner", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("total", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("scanned", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("rewrapped", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("failed", sa.Integer, nullable=False, server_default=sa.text("0")),
        schema=schema,
    )


def downgrade() -> None:
    schema = _schema()
    op.drop_table("rewrap_jobs", schema=schema)
    op.drop_index("ix_rotation_requests_status", table_name="rotation_requests", schema=schema)
    op.drop_table("rotation_requests", schema=schema)
    with op.batch_alter_table("patient_keks", schema=schema) as batch:
        batch.drop_column("suite")
