"""The consent receipt commits to the purpose under a per-grant salt (issue 14 item 7): no unsalted hash of the purpose
in a new receipt. The salt is sealed like the purpose (under the patient's profile DEK), so it goes with the patient's
keys at erasure. Existing grants keep their signed format /1 receipt (purpose as SHA-256) and a NULL salt: a receipt
cannot be re-signed here without changing what the patient was handed, and it still verifies.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("purpose_salt_enc", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    salted = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM grants WHERE purpose_salt_enc IS NOT NULL")).scalar()
    if salted:
        raise RuntimeError("grants with a salted receipt exist: dropping their salts would leave their patients unable "
                           "to prove the purpose of a receipt they hold")
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("purpose_salt_enc")
