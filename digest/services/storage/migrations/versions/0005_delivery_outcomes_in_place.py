"""delivery outcomes written in place: no index on deliveries.status, issues.counts

An outcome changes a delivery's status; with status in an index every outcome moved
index entries too. Without it (and with free space left on each PostgreSQL page) an
outcome is a HOT update. Lists of issues read ``issues.counts`` instead.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("issues", sa.Column("counts", sa.JSON(), nullable=True))
    bind = op.get_bind()
    issues = sa.table("issues", sa.column("id", sa.Integer()), sa.column("status", sa.String()),
                      sa.column("counts", sa.JSON()))
    deliveries = sa.table("deliveries", sa.column("issue_id", sa.Integer()),
                          sa.column("status", sa.String()))
    tallies: dict[int, dict[str, int]] = {}
    for issue_id, status, n in bind.execute(
            sa.select(deliveries.c.issue_id, deliveries.c.status, sa.func.count())
            .group_by(deliveries.c.issue_id, deliveries.c.status)):
        tallies.setdefault(issue_id, {})[status] = n
    for issue_id, tally in tallies.items():
        bind.execute(sa.update(issues).where(issues.c.id == issue_id).values(counts=tally))
    op.drop_index("ix_deliveries_issue_status", table_name="deliveries")
    if bind.dialect.name == "postgresql":
        # New pages keep half their space for the outcome's row version.
        op.execute("ALTER TABLE deliveries SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries RESET (fillfactor)")
    op.create_index("ix_deliveries_issue_status", "deliveries", ["issue_id", "status", "id"])
    op.drop_column("issues", "counts")
