"""webhook deliveries: attempts, next try, end, last result

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PENDING = sa.text("webhook_url IS NOT NULL AND webhook_done_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("webhook_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("webhook_done_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("webhook_result", sa.Text(), nullable=True))
    # Jobs that ended before webhooks were sent are not sent now.
    op.execute(
        "UPDATE jobs SET webhook_done_at = finished_at, webhook_result = 'not sent: ended "
        "before this server sent webhooks' WHERE webhook_url IS NOT NULL AND finished_at IS "
        "NOT NULL"
    )
    op.create_index(
        "ix_jobs_webhook_next_at",
        "jobs",
        ["webhook_next_at"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_webhook_next_at", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("webhook_result")
        batch_op.drop_column("webhook_done_at")
        batch_op.drop_column("webhook_next_at")
        batch_op.drop_column("webhook_attempts")
