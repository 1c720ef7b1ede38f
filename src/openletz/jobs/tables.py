"""The schema, as SQLAlchemy Core tables (one metadata for the app and for Alembic)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend keeps."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        # SQLite keeps no zone: store naive UTC so that string comparison orders correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("default_system_version", sa.Integer, nullable=False, server_default="3"),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # A short visible prefix lets an operator tell keys apart; the key itself is never stored.
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
)

_WEBHOOK_PENDING = sa.text("webhook_url IS NOT NULL AND webhook_done_at IS NULL")

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The request, as the client sent it (defaults filled in).
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("quality", sa.Integer, nullable=False),
    sa.Column("creativity", sa.Integer, nullable=False),
    sa.Column("has_watermark", sa.Boolean, nullable=False),
    sa.Column("system_version", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("base_model", sa.String(200), nullable=True),
    sa.Column("webhook_url", sa.Text, nullable=True),
    sa.Column("privacy", sa.String(8), nullable=False, server_default="private"),
    # Lifecycle.
    sa.Column("status", sa.String(16), nullable=False, server_default="new"),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress_message", sa.Text, nullable=True),
    sa.Column("preview", sa.LargeBinary, nullable=True),
    sa.Column("image_versions", sa.JSON, nullable=True),
    sa.Column("engine", sa.String(32), nullable=True),
    sa.Column("interrupt_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # Claim and lease.
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    # Dispatch: how many times the reconciler sent the job again (after the first
    # send), when it was last sent (or put back for the broker to redeliver), and
    # when the broker dead-lettered its message.
    sa.Column("dispatches", sa.Integer, nullable=False, server_default="0"),
    sa.Column("dispatched_at", UTCDateTime, nullable=True),
    sa.Column("dead_lettered_at", UTCDateTime, nullable=True),
    # The webhook (openletz.api.webhooks): tries so far, when the next may start
    # (a sender's claim or a retry's delay), when it ended (delivered or given up),
    # and how the last try went.
    sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("webhook_next_at", UTCDateTime, nullable=True),
    sa.Column("webhook_done_at", UTCDateTime, nullable=True),
    sa.Column("webhook_result", sa.Text, nullable=True),
    # Times.
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Index(None, "user_id", "created_at"),
    sa.Index(None, "status", "lease_expires_at"),
    sa.Index(None, "privacy", "created_at"),
    # Only the jobs whose webhook is still to be sent: a small index however many
    # jobs there are.
    sa.Index(
        None,
        "webhook_next_at",
        sqlite_where=_WEBHOOK_PENDING,
        postgresql_where=_WEBHOOK_PENDING,
    ),
)
