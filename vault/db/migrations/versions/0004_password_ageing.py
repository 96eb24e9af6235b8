"""Account ageing: staff password expiry and reuse history (AUTH-2), last sign-in for idle-account disabling (AC-2).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from audit.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("password_changed_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("previous_password_hashes", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_login_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("last_login_at")
        batch.drop_column("previous_password_hashes")
        batch.drop_column("password_changed_at")
