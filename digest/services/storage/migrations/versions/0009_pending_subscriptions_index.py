"""a partial index of the subscriptions awaiting confirmation, by when the confirmation
was sent: finding the expired ones (every send, every sign-up) no longer reads every
subscription

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_subscriptions_pending", "subscriptions", ["confirm_sent_at"],
                    sqlite_where=sa.text("status = 'pending'"),
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index("ix_subscriptions_pending", table_name="subscriptions")
