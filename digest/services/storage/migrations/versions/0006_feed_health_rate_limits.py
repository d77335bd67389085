"""feed health (consecutive failures, failing since) and rate limits shared by instances

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from digest.services.storage.db import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("feeds", sa.Column("failures", sa.Integer(), nullable=False,
                                     server_default="0"))
    op.add_column("feeds", sa.Column("failing_since", UTCDateTime(), nullable=True))
    op.create_table(
        "rate_hits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("bucket", sa.String(50), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rate_hits_bucket_key_at", "rate_hits", ["bucket", "key", "at"])


def downgrade() -> None:
    op.drop_index("ix_rate_hits_bucket_key_at", table_name="rate_hits")
    op.drop_table("rate_hits")
    op.drop_column("feeds", "failing_since")
    op.drop_column("feeds", "failures")
