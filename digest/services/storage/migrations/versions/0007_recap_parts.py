"""the recap's parts: an entry's lead, image and "Read also" links; a list's language,
masthead logo and what each entry shows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_PARTS = "image,lead,read_also,keywords"


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("lead", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("image_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("image_alt", sa.Text(), nullable=True))
        batch.add_column(sa.Column("image_width", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("image_height", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("related", sa.JSON(), nullable=True))
    with op.batch_alter_table("lists") as batch:
        batch.add_column(sa.Column("language", sa.String(20), nullable=False,
                                   server_default="en"))
        batch.add_column(sa.Column("logo_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("logo_alt", sa.Text(), nullable=True))
        batch.add_column(sa.Column("logo_width", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("logo_height", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("entry_parts", sa.String(200), nullable=False,
                                   server_default=DEFAULT_PARTS))
        batch.add_column(sa.Column("lead_max_chars", sa.Integer(), nullable=False,
                                   server_default="300"))


def downgrade() -> None:
    with op.batch_alter_table("lists") as batch:
        for column in ("lead_max_chars", "entry_parts", "logo_height", "logo_width",
                       "logo_alt", "logo_url", "language"):
            batch.drop_column(column)
    with op.batch_alter_table("entries") as batch:
        for column in ("related", "image_height", "image_width", "image_alt", "image_url",
                       "lead"):
            batch.drop_column(column)
