"""deliveries without foreign keys: PostgreSQL checked them row by row on every issue

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.services.storage.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEYS = {  # name on PostgreSQL → (column, referred table)
    "deliveries_issue_id_fkey": ("issue_id", "issues"),
    "deliveries_subscriber_id_fkey": ("subscriber_id", "subscribers"),
    "fk_deliveries_variant_id": ("variant_id", "issue_variants"),
}


def _deliveries(*, with_keys: bool) -> sa.Table:
    """The deliveries table as SQLite rebuilds it (SQLite cannot drop a constraint)."""
    keys = [sa.ForeignKeyConstraint([column], [f"{table}.id"], ondelete="CASCADE", name=name)
            for name, (column, table) in FOREIGN_KEYS.items()] if with_keys else []
    return sa.Table(
        "deliveries", sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=300), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", digest.services.storage.db.UTCDateTime(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=True),
        sa.Column("delivered_at", digest.services.storage.db.UTCDateTime(), nullable=True),
        sa.Column("opens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("clicks", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("issue_id", "subscriber_id"),
        sa.Index("ix_deliveries_issue_status", "issue_id", "status", "id"),
        sa.Index("ix_deliveries_subscriber_id", "subscriber_id"),
        *keys,
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in FOREIGN_KEYS:
            op.drop_constraint(name, "deliveries", type_="foreignkey")
        return
    with op.batch_alter_table("deliveries", recreate="always",
                              copy_from=_deliveries(with_keys=False)):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, (column, table) in FOREIGN_KEYS.items():
            op.create_foreign_key(name, "deliveries", table, [column], ["id"],
                                  ondelete="CASCADE")
        return
    with op.batch_alter_table("deliveries", recreate="always",
                              copy_from=_deliveries(with_keys=True)):
        pass
