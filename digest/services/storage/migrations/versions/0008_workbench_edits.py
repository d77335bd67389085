"""the editor's workbench: a version on each issue's edit state (stale saves are refused),
the order of entries within sections, per-entry overrides, a pinned top story, hidden
images, and the states before each change (undo)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issue_edits") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("entry_order", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("overrides", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("pinned", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("hidden_images", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("history", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issue_edits") as batch:
        for column in ("history", "hidden_images", "pinned", "overrides", "entry_order", "version"):
            batch.drop_column(column)
