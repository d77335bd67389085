"""what each feed's last read skipped, by reason: entries with neither title nor link,
duplicates, and entries too old to keep

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("skipped_untitled", "skipped_duplicate", "skipped_too_old")


def upgrade() -> None:
    with op.batch_alter_table("feeds") as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False,
                                          server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("feeds") as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
