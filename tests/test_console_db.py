"""The console's schema: its migrations build exactly the tables of console/schema.py, an older
database is brought up to date at start, and running them again changes nothing."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from console.cases import CaseStore
from console.config import DatabaseSettings
from console.db import _alembic_config, current_revision, head_revision, migrate, open_database
from console.schema import metadata
from tests.console_harness import make_alert


def test_migrations_build_the_schema_and_upgrade_an_old_database(tmp_path: Path) -> None:
    db = open_database(DatabaseSettings(url=f"sqlite:///{tmp_path / 'old.db'}"))
    with db.writer.connect() as conn:
        command.upgrade(_alembic_config(conn), "0001")  # a console of the first release
        conn.commit()
    assert current_revision(db) == "0001"
    store = CaseStore(db, origin="t", ack_seconds=[60.0] * 4)
    case_id = store.ingest([make_alert("OLD-1", level=2)]).case_ids.pop()
    assert migrate(db) == head_revision() == current_revision(db)
    assert migrate(db) == head_revision(), "a second start migrates nothing"
    with db.read() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert store.rows([case_id])[0].sensor == "OLD-1", "the data survives the upgrade"
    db.dispose()
