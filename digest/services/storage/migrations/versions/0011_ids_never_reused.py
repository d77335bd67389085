"""ids of subscribers, subscriptions and deliveries are never handed out twice on SQLite
(AUTOINCREMENT): a forgotten person's links and SendGrid events no longer reach whoever
took their id

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

SQLite gives a new row the highest rowid plus one, so deleting the newest subscription
(``subscribers forget``) let the next sign-up take its id, and the old unsubscribe link
acted on the new person. An AUTOINCREMENT table never reuses one; SQLite can make a
table so only by building it anew. PostgreSQL's sequences never reuse: nothing to do.

The subscriptions reference the subscribers with ON DELETE CASCADE, and dropping a table
deletes its rows first; with foreign keys on (they are, on every connection, and a
migration's transaction cannot turn them off), dropping the old subscribers table would
delete every subscription. So the two new tables are made under other names, the new
subscriptions referring to the new subscribers, the old tables dropped (nothing refers to
them by then), and the new ones renamed: SQLite renames the reference with its table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from digest.errors import DigestError
from digest.services.storage.db import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = "_0011_"  # the new tables' names until they take the old ones'

SUBSCRIBER_COLUMNS = ("id", "email", "email_key", "name", "created_at")
SUBSCRIPTION_COLUMNS = ("id", "subscriber_id", "list_id", "status", "source", "keywords",
                        "segment", "created_at", "updated_at", "confirm_sent_at",
                        "confirmed_at", "unsubscribed_at")


def _tables(autoincrement: bool) -> tuple[sa.Table, sa.Table]:
    """The subscribers and subscriptions tables as of 0010, under their new names."""
    metadata = sa.MetaData()
    sa.Table("lists", metadata, sa.Column("id", sa.Integer(), primary_key=True))  # referred to
    subscribers = sa.Table(
        f"{NEW}subscribers", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("email_key"),
        sqlite_autoincrement=autoincrement)
    subscriptions = sa.Table(
        f"{NEW}subscriptions", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("subscriber_id", sa.Integer(),
                  sa.ForeignKey(f"{NEW}subscribers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("list_id", sa.Integer(), sa.ForeignKey("lists.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("segment", sa.String(2000), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("confirm_sent_at", UTCDateTime(), nullable=True),
        sa.Column("confirmed_at", UTCDateTime(), nullable=True),
        sa.Column("unsubscribed_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("subscriber_id", "list_id"),
        sqlite_autoincrement=autoincrement)
    return subscribers, subscriptions


def _rebuild(autoincrement: bool) -> None:
    """Build subscribers, subscriptions and deliveries anew on SQLite, rows, indexes and
    references kept, AUTOINCREMENT or not."""
    if op.get_bind().dialect.name != "sqlite":
        return
    # The rename below must carry the subscriptions' reference along (SQLite's own way
    # since 3.26; the legacy way would leave it naming the temporary table).
    op.execute("PRAGMA legacy_alter_table = OFF")
    subscribers, subscriptions = _tables(autoincrement)
    subscribers.create(op.get_bind())
    subscriptions.create(op.get_bind())
    for table, columns in ((subscribers, SUBSCRIBER_COLUMNS),
                           (subscriptions, SUBSCRIPTION_COLUMNS)):
        listed = ", ".join(columns)
        op.execute(f"INSERT INTO {table.name} ({listed}) SELECT {listed} "
                   f"FROM {table.name.removeprefix(NEW)} ORDER BY id")
    op.drop_index("ix_subscriptions_pending", table_name="subscriptions")
    op.drop_index("ix_subscriptions_list_status", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_table("subscribers")  # nothing refers to it any more: no cascade
    op.rename_table(f"{NEW}subscribers", "subscribers")
    op.rename_table(f"{NEW}subscriptions", "subscriptions")
    op.create_index("ix_subscriptions_list_status", "subscriptions",
                    ["list_id", "status", "id"])
    op.create_index("ix_subscriptions_pending", "subscriptions", ["confirm_sent_at"],
                    sqlite_where=sa.text("status = 'pending'"))
    # Nothing refers to the deliveries (they have no foreign keys): Alembic's own copy.
    with op.batch_alter_table("deliveries", recreate="always",
                              table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass
    for table in ("subscriptions", "deliveries"):
        problems = op.get_bind().exec_driver_sql(f"PRAGMA foreign_key_check({table})").all()
        if problems:
            raise DigestError(f"migration 0011: rows of {table} point at missing rows after "
                              f"the rebuild: {problems[:5]}")


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
