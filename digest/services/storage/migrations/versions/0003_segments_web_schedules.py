"""keyword segments, web app, editors, schedules and run claims

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.services.storage.db
from digest.core.grouping import keyword_key

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('editors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('password_hash', sa.String(length=300), nullable=False),
    sa.Column('created_at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.Column('last_login_at', digest.services.storage.db.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('scheduler_lease',
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('lease_until', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('webhook_events',
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=50), nullable=False),
    sa.Column('received_at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_at'), ['at'], unique=False)

    op.create_table('issue_edits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('intro', sa.Text(), nullable=False),
    sa.Column('dropped', sa.JSON(), nullable=False),
    sa.Column('moves', sa.JSON(), nullable=False),
    sa.Column('section_order', sa.JSON(), nullable=False),
    sa.Column('approved_by', sa.String(length=100), nullable=True),
    sa.Column('approved_at', digest.services.storage.db.UTCDateTime(), nullable=True),
    sa.Column('updated_by', sa.String(length=100), nullable=True),
    sa.Column('updated_at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('list_id', 'number')
    )
    op.create_table('schedules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('expression', sa.String(length=200), nullable=False),
    sa.Column('timezone', sa.String(length=100), nullable=False),
    sa.Column('skip_empty', sa.Boolean(), nullable=False),
    sa.Column('hold_for_approval', sa.Boolean(), nullable=False),
    sa.Column('approval_wait_seconds', sa.Integer(), nullable=False),
    sa.Column('misfire_grace_seconds', sa.Integer(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('created_at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('issue_variants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issue_id', sa.Integer(), nullable=False),
    sa.Column('keys', sa.String(length=2000), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('html', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('sections', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['issue_id'], ['issues.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('issue_id', 'keys')
    )
    op.create_table('schedule_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('schedule_id', sa.Integer(), nullable=False),
    sa.Column('slot_key', sa.String(length=40), nullable=False),
    sa.Column('slot_at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('trigger', sa.String(length=20), nullable=False),
    sa.Column('claimed_by', sa.String(length=200), nullable=True),
    sa.Column('lease_until', digest.services.storage.db.UTCDateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('started_at', digest.services.storage.db.UTCDateTime(), nullable=False),
    sa.Column('finished_at', digest.services.storage.db.UTCDateTime(), nullable=True),
    sa.Column('issue_id', sa.Integer(), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['issue_id'], ['issues.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('schedule_id', 'slot_key')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('variant_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('delivered_at', digest.services.storage.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('opens', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('clicks', sa.Integer(), nullable=False, server_default='0'))
        batch_op.create_foreign_key('fk_deliveries_variant_id', 'issue_variants', ['variant_id'], ['id'], ondelete='CASCADE')

    with op.batch_alter_table('lists', schema=None) as batch_op:
        batch_op.add_column(sa.Column('when_nothing_matches', sa.String(length=10), nullable=False, server_default='skip'))

    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('segment', sa.String(length=2000), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('confirm_sent_at', digest.services.storage.db.UTCDateTime(), nullable=True))

    # Existing preferences get their segment.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, keywords FROM subscriptions")).all()
    for sub_id, keywords in rows:
        values = json.loads(keywords) if isinstance(keywords, str) else (keywords or [])
        segment = ";".join(sorted({keyword_key(k) for k in values if keyword_key(k)}))
        if segment:
            conn.execute(sa.text("UPDATE subscriptions SET segment = :s WHERE id = :i"),
                         {"s": segment, "i": sub_id})


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch_op:
        batch_op.drop_column("confirm_sent_at")
        batch_op.drop_column("segment")
    with op.batch_alter_table("lists") as batch_op:
        batch_op.drop_column("when_nothing_matches")
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_constraint("fk_deliveries_variant_id", type_="foreignkey")
        for column in ("clicks", "opens", "delivered_at", "variant_id"):
            batch_op.drop_column(column)
    for table in ("schedule_runs", "issue_variants", "schedules", "issue_edits",
                  "audit_log", "webhook_events", "scheduler_lease", "editors"):
        op.drop_table(table)
