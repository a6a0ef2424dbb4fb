"""The console's database tables (SQLAlchemy Core). Times are Unix epoch milliseconds (UTC).

The schema is created and changed only by the Alembic migrations in `console/migrations`;
`tests/test_console_db.py` checks that the migrations build exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

ID = 64  # contract ids are at most 64 characters

#: One case per excursion of a (sensor, rule): raised by an alert, closed by an operator.
cases = Table(
    "cases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: "sensor rule" while the case is not closed, NULL after: one open case per (sensor, rule).
    Column("open_key", String(2 * ID + 1), unique=True, nullable=True),
    Column("sensor", String(ID), nullable=False),
    Column("rule", String(ID), nullable=False),
    Column("kind", String(2 * ID + 1), nullable=False),
    Column("domain", String(ID), nullable=False),
    Column("agent", String(ID), nullable=False),
    Column("site", String(ID), nullable=False),
    Column("township", String(ID), nullable=False),
    Column("district", String(ID), nullable=False),
    #: `event` (the world changed) or `fault` (the sensor is broken: the maintenance list).
    Column("category", String(16), nullable=False),
    #: new, acknowledged, dispatched, resolved, closed.
    Column("state", String(16), nullable=False),
    Column("level", Integer, nullable=False),
    Column("max_level", Integer, nullable=False),
    Column("value", Float, nullable=False),
    Column("limit", Float, nullable=True),
    Column("first_alert", String(255), nullable=False),
    #: Time of the sample that raised it, and when the console received that alert.
    Column("raised_ts", BigInteger, nullable=False),
    Column("opened_at", BigInteger, nullable=False),
    #: Time of the newest alert applied (older re-sent alerts do not turn the level back).
    Column("last_ts", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("alert_cleared", Boolean, nullable=False, default=False),
    Column("cleared_at", BigInteger, nullable=True),
    #: The tier responsible for it: township at first, higher after an escalation.
    Column("tier", String(16), nullable=False),
    Column("escalated_at", BigInteger, nullable=True),
    #: When it escalates by itself if nobody acknowledges it (NULL: never).
    Column("deadline_at", BigInteger, nullable=True),
    Column("ack_by", String(ID), nullable=True),
    Column("ack_at", BigInteger, nullable=True),
    Column("crew", String(200), nullable=True),
    Column("assigned_at", BigInteger, nullable=True),
    Column("resolved_at", BigInteger, nullable=True),
    Column("closed_by", String(ID), nullable=True),
    Column("closed_at", BigInteger, nullable=True),
    Column("cause", Text, nullable=True),
    Column("reviewed_by", String(ID), nullable=True),
    Column("reviewed_at", BigInteger, nullable=True),
    #: +1 per operator action: a form sent with an older version is refused (someone else acted).
    Column("version", Integer, nullable=False, default=1),
    Index("ix_cases_board", "state", "district", "township"),
    Index("ix_cases_deadline", "deadline_at"),
    Index("ix_cases_sensor", "sensor", "rule"),
)

#: The board's order, so its first rows are read in order instead of sorting every open case.
Index("ix_cases_order", cases.c.category, cases.c.alert_cleared, cases.c.level.desc(), cases.c.opened_at, cases.c.id)

#: Every alert received from the ops topics, once (the id de-duplicates re-deliveries).
alerts = Table(
    "alerts", metadata,
    Column("id", String(255), primary_key=True),
    Column("case_id", Integer, ForeignKey("cases.id"), nullable=True),
    Column("agent", String(ID), nullable=False),
    Column("sensor", String(ID), nullable=False),
    Column("rule", String(ID), nullable=False),
    Column("district", String(ID), nullable=False),
    Column("township", String(ID), nullable=False),
    Column("level", Integer, nullable=False),
    Column("prev", Integer, nullable=False),
    Column("value", Float, nullable=False),
    Column("limit", Float, nullable=True),
    Column("ts", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("extra", Text, nullable=True),
    Index("ix_alerts_received", "received_at"),
    Index("ix_alerts_case", "case_id"),
    Index("ix_alerts_sensor", "sensor", "ts"),
    Index("ix_alerts_ts", "ts"),
)

#: The life of a case, step by step: who did what when (also published on `P/case/{district}`).
case_events = Table(
    "case_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("case_id", Integer, ForeignKey("cases.id"), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("actor", String(ID), nullable=False),
    Column("action", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    #: Console instance that recorded it; it publishes it.
    Column("origin", String(ID), nullable=False),
    Column("published", Boolean, nullable=False, default=False),
    Index("ix_case_events_case", "case_id"),
    Index("ix_case_events_unpublished", "origin", "published"),
)

users = Table(
    "users", metadata,
    Column("username", String(ID), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    #: `city`, `district` or `district/township`.
    Column("area", String(2 * ID + 1), nullable=False),
    Column("display_name", String(200), nullable=False, default=""),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
)

#: Server-side sessions: the cookie holds a random token, the table its SHA-256.
sessions = Table(
    "sessions", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("username", String(ID), ForeignKey("users.username"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_sessions_user", "username"),
)

#: Every login, logout and action, allowed or refused.
audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("username", String(ID), nullable=True),
    Column("action", String(40), nullable=False),
    Column("target", String(200), nullable=False, default=""),
    #: ok, refused, failed.
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("address", String(64), nullable=False, default=""),
    Index("ix_audit_at", "at"),
)

#: What the console knows about each sensor (from alerts), for the sensor view.
sensors = Table(
    "sensors", metadata,
    Column("sensor", String(ID), primary_key=True),
    Column("kind", String(2 * ID + 1), nullable=False),
    Column("site", String(ID), nullable=False),
    Column("township", String(ID), nullable=False),
    Column("district", String(ID), nullable=False),
    Column("agent", String(ID), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

#: The sensor's current detection state: the newest level of each of its rules.
sensor_levels = Table(
    "sensor_levels", metadata,
    Column("sensor", String(ID), primary_key=True),
    Column("rule", String(ID), primary_key=True),
    Column("level", Integer, nullable=False),
    Column("value", Float, nullable=False),
    Column("limit", Float, nullable=True),
    Column("ts", BigInteger, nullable=False),
)
