"""The console's database: engines for SQLite (WAL, the embedded default) or PostgreSQL, and the
schema migrations the console runs itself at start.

SQLite serialises writers: write transactions start with `BEGIN IMMEDIATE` on a separate engine,
so two writers wait for each other (busy timeout) instead of failing on a lock upgrade, while
readers never block. PostgreSQL takes row locks (`SELECT ... FOR UPDATE`) and several console
instances may share it; they migrate one at a time under an advisory lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from console.config import DatabaseSettings
from lifeline.errors import LifelineError

log = logging.getLogger("lifeline.console.db")
logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration is ours to log

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x11FE17


class DatabaseError(LifelineError):
    """The console's database cannot be opened, migrated or written; the message says which and why."""


@dataclass
class Database:
    """A read engine and a write engine (the same one on PostgreSQL)."""

    reader: Engine
    writer: Engine
    url: str

    @property
    def is_sqlite(self) -> bool:
        return self.reader.dialect.name == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (committed on leaving, rolled back on error)."""
        with self.writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.reader.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.reader.dispose()
        if self.writer is not self.reader:
            self.writer.dispose()


def _sqlite_engine(path: Path, *, immediate: bool) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def postgres_url(settings: DatabaseSettings) -> URL:
    """The psycopg URL with the configured user and password (never logged)."""
    url = make_url(settings.url).set(drivername="postgresql+psycopg")
    if settings.username:
        url = url.set(username=settings.username)
    password = settings.resolved_password()
    if password:
        url = url.set(password=password)
    return url


def open_database(settings: DatabaseSettings) -> Database:
    """Engines for the configured database (the file's directory is created for SQLite)."""
    if settings.is_sqlite:
        path = settings.sqlite_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"database.url: cannot create {path.parent}: {exc.strerror}") from exc
        return Database(_sqlite_engine(path, immediate=False), _sqlite_engine(path, immediate=True),
                        settings.url)
    engine = create_engine(postgres_url(settings), pool_size=settings.pool_size, pool_pre_ping=True)
    return Database(engine, engine, settings.url)


def _alembic_config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest migration's revision id."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(db: Database) -> str:
    """Bring the schema to the newest revision; returns it. Safe to run from several instances."""
    try:
        with db.writer.connect() as conn:
            if not db.is_sqlite:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                command.upgrade(_alembic_config(conn), "head")
                conn.commit()
            finally:
                if not db.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                    conn.commit()
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseError(f"database {db.url}: cannot migrate the schema: {describe(exc)}") from exc
    head = head_revision()
    if before != head:
        log.info("database %s migrated from %s to %s", db.url, before or "empty", head)
    return head


def describe(exc: BaseException) -> str:
    """A short operator-readable cause of a database failure (no SQL, no parameters)."""
    if isinstance(exc, OperationalError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0]
    if isinstance(exc, SQLAlchemyError):
        return type(exc).__name__ + (f": {exc.orig}" if getattr(exc, "orig", None) else "")
    return str(exc)
