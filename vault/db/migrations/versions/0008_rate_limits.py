"""Rate limits on sign-in and registration, shared by every API process (issue 14 item 3).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from audit.models import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("bucket", sa.String(40), primary_key=True),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
    )
    op.create_index("ix_rate_limits_window_start", "rate_limits", ["window_start"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limits TO healthvault_app")


def downgrade() -> None:
    op.drop_index("ix_rate_limits_window_start", "rate_limits")
    op.drop_table("rate_limits")
