"""A partial index for the denial-burst count (IP-4): one actor's denials of the last minute.

The count walked every event the actor ever caused (ix_audit_events_actor), so a busy doctor's refused request got
slower the longer the trail grew (bench/bench_soak.py: the refused read's median 42 ms in minute 1, 97 ms in minute
9). Denials are few: the partial index holds only them.

Revision ID: 0011
Revises: 0010
"""

from alembic import op
from sqlalchemy import text

from audit.models import DENIALS

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_events_actor_denials", "audit_events", ["actor", "occurred_at"],
                    postgresql_where=text(DENIALS), sqlite_where=text(DENIALS))


def downgrade() -> None:
    op.drop_index("ix_audit_events_actor_denials", "audit_events")
