"""Cases in the database (SQLite and PostgreSQL, the same tests on both): alerts open and follow cases, de-duplicated; operator steps
respect state, version and area; unacknowledged cases escalate by themselves; the board's order."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.areas import AreaError, parse_area, sees
from console.auth import Accounts, User
from console.cases import CaseConflict, CaseForbidden, CaseInvalid, CaseNotFound, CaseStore
from console.config import DatabaseSettings
from console.db import Database, migrate, open_database
from tests.console_harness import make_alert

ACK_S = [60.0, 30.0, 20.0, 10.0]


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'c.db'}")
    else:
        server = request.getfixturevalue("postgres")
        settings = DatabaseSettings(url=server.new_database(f"cases_{os.getpid()}_{next(_databases)}"),
                                    username=server.user)
    database = open_database(settings)
    migrate(database)
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database) -> CaseStore:
    return CaseStore(db, origin="test", ack_seconds=ACK_S, max_text_chars=200)


OP = User("wang", "operator", parse_area("yz/jfb"))
OTHER = User("chen", "operator", parse_area("yz/ctm"))
DISTRICT = User("zhao", "operator", parse_area("yz"))
CITY = User("city", "supervisor", parse_area("city"))
VIEWER = User("view", "viewer", parse_area("yz/jfb"))


def test_areas_parse_and_tier_rules() -> None:
    assert str(parse_area("city")) == "city" and parse_area("yz").tier == "district"
    assert parse_area("yz/jfb").tier == "township"
    with pytest.raises(AreaError):
        parse_area("yz/jfb/x")
    town, district, city = parse_area("yz/jfb"), parse_area("yz"), parse_area("city")
    assert sees(town, "yz", "jfb", 1, "township") and not sees(town, "yz", "ctm", 4, "city")
    assert not sees(district, "yz", "jfb", 1, "township") and sees(district, "yz", "jfb", 2, "township")
    assert sees(district, "yz", "jfb", 1, "district"), "an escalated case is seen whatever its level"
    assert not sees(city, "yz", "jfb", 2, "district") and sees(city, "nb", "x", 3, "township")


def test_an_alert_opens_one_case_and_its_level_changes_follow_it(store: CaseStore) -> None:
    raise_ = make_alert("S1", level=1)
    result = store.ingest([raise_, raise_])  # at-least-once: the same alert twice
    assert result.new_cases == 1 and result.duplicates == 1
    (case_id,) = result.case_ids
    store.ingest([make_alert("S1", level=3, prev=1, value=0.85)])
    store.ingest([make_alert("S1", level=0, prev=3, value=0.5)])
    case = store.get(OP, case_id)
    assert case["state"] == "new" and case["level"] == 0 and case["max_level"] == 3
    assert case["alert_cleared"], "the sensor's clear marks the alert cleared ..."
    assert [e["action"] for e in case["events"]] == ["raised", "level", "cleared"]
    assert len(case["alerts"]) == 3
    board = store.board(OP)
    assert [c["id"] for c in board["cases"]] == [case_id], "... but the case stays open (closed loop)"


def test_after_close_a_new_raise_opens_a_new_case(store: CaseStore) -> None:
    first = store.ingest([make_alert("S2", level=2)]).case_ids.pop()
    store.act(OP, first, "close", {"cause": "false alarm"})
    second = store.ingest([make_alert("S2", level=1)]).case_ids.pop()
    assert second != first
    assert store.get(OP, first)["state"] == "closed" and store.get(OP, second)["state"] == "new"


def test_faults_go_to_the_maintenance_list(store: CaseStore) -> None:
    store.ingest([make_alert("S3", level=1, rule="flatline"), make_alert("S4", level=1, rule="high"),
                  make_alert("S5", level=1, rule="custom", extra={"fault": True})])
    assert {c["sensor"] for c in store.board(OP, category="fault")["cases"]} == {"S3", "S5"}
    assert {c["sensor"] for c in store.board(OP, category="event")["cases"]} == {"S4"}


def test_the_whole_life_of_a_case(store: CaseStore) -> None:
    case_id = store.ingest([make_alert("S6", level=2)]).case_ids.pop()
    c = store.act(OP, case_id, "acknowledge", {"version": 1})
    assert c["state"] == "acknowledged" and c["ack_by"] == "wang" and c["deadline_at"] is None
    c = store.act(OP, case_id, "assign", {"crew": "crew 7", "text": "valve 12", "version": c["version"]})
    assert c["state"] == "dispatched" and c["crew"] == "crew 7"
    store.act(OP, case_id, "note", {"text": "crew on site"})
    store.act(OP, case_id, "photo", {"ref": "IMG_0042.JPG"})
    c = store.act(OP, case_id, "resolve", {"report": "valve replaced"})
    c = store.act(DISTRICT, case_id, "close", {"cause": "real event, handled"})
    assert c["state"] == "closed" and c["closed_by"] == "zhao"
    with pytest.raises(CaseConflict, match="closed"):
        store.act(OP, case_id, "note", {"text": "again"})
    with pytest.raises(CaseConflict, match="closed"):
        store.act(OP, case_id, "close", {"cause": "again"})
    with pytest.raises(CaseForbidden):
        store.act(OP, case_id, "review", {"text": "ok"})
    reviewed = store.act(User("sup", "supervisor", parse_area("yz")), case_id, "review", {"text": "checked"})
    assert reviewed["reviewed_by"] == "sup"
    full = store.get(OP, case_id)
    assert [e["action"] for e in full["events"]] == [
        "raised", "acknowledge", "assign", "note", "photo", "resolve", "close", "review"]
    assert all(full["review"][k] is not None for k in ("to_acknowledge", "to_dispatch", "to_resolve", "to_close"))


def test_steps_check_area_role_text_and_version(store: CaseStore) -> None:
    case_id = store.ingest([make_alert("S7", level=1)]).case_ids.pop()
    with pytest.raises(CaseNotFound):
        store.act(OTHER, case_id, "acknowledge", {})
    with pytest.raises(CaseNotFound):
        store.get(OTHER, case_id)
    with pytest.raises(CaseNotFound):
        store.get(DISTRICT, case_id), "a level-1 case is not the district's until escalated"
    with pytest.raises(CaseForbidden):
        store.act(VIEWER, case_id, "acknowledge", {})
    with pytest.raises(CaseInvalid, match="at most 200"):
        store.act(OP, case_id, "note", {"text": "x" * 201})
    with pytest.raises(CaseInvalid, match="required"):
        store.act(OP, case_id, "escalate", {"reason": "  "})
    store.act(OP, case_id, "note", {"text": "a note does not stop others", "version": 1})
    store.act(OP, case_id, "acknowledge", {"version": 1})  # notes leave the version alone
    with pytest.raises(CaseConflict, match="changed meanwhile"):
        store.act(OP, case_id, "assign", {"crew": "c", "version": 1})


def test_two_operators_acknowledging_at_once_get_one_success(store: CaseStore) -> None:
    case_id = store.ingest([make_alert("S8", level=1)]).case_ids.pop()
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def ack(user: User) -> None:
        barrier.wait()
        try:
            store.act(user, case_id, "acknowledge", {})
            outcomes.append("ok")
        except CaseConflict as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=ack, args=(u,)) for u in (OP, User("li", "operator", OP.area))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes)[0].startswith("case") and outcomes.count("ok") == 1
    assert [e["action"] for e in store.get(OP, case_id)["events"]].count("acknowledge") == 1


def test_escalation_goes_up_one_tier_with_a_reason(store: CaseStore) -> None:
    case_id = store.ingest([make_alert("S9", level=1)]).case_ids.pop()
    c = store.act(OP, case_id, "escalate", {"reason": "road closed, need district crew"})
    assert c["tier"] == "district"
    assert store.get(DISTRICT, case_id)["tier"] == "district"
    store.act(DISTRICT, case_id, "escalate", {"reason": "city resources"})
    assert store.get(CITY, case_id)["tier"] == "city"
    with pytest.raises(CaseConflict, match="city"):
        store.act(CITY, case_id, "escalate", {"reason": "up"})


def test_an_unacknowledged_case_escalates_by_itself(store: CaseStore) -> None:
    case_id = store.ingest([make_alert("S10", level=4)], received_ms=1_000_000).case_ids.pop()
    assert store.escalate_overdue(now=1_000_000 + 9_999) == []
    assert store.escalate_overdue(now=1_000_000 + 10_000) == [case_id]  # level 4: 10 s
    c = store.get(CITY, case_id)
    assert c["tier"] == "district" and c["events"][-1]["actor"] == "system"
    assert "not acknowledged within" in c["events"][-1]["detail"]["reason"]
    assert store.escalate_overdue(now=1_000_000 + 20_000) == [case_id]
    assert store.get(CITY, case_id)["tier"] == "city" and store.get(CITY, case_id)["deadline_at"] is None
    acked = store.ingest([make_alert("S11", level=4)], received_ms=1_000_000).case_ids.pop()
    store.act(OP, acked, "acknowledge", {})
    assert acked not in store.escalate_overdue(now=2_000_000)


def test_the_board_shows_active_alerts_first_by_level_then_age(store: CaseStore) -> None:
    store.ingest([make_alert("A", level=1)], received_ms=1000)
    store.ingest([make_alert("B", level=3)], received_ms=2000)
    store.ingest([make_alert("C", level=3)], received_ms=3000)
    store.ingest([make_alert("D", level=4)], received_ms=4000)
    store.ingest([make_alert("D", level=0, prev=4)], received_ms=5000)
    assert [c["sensor"] for c in store.board(OP)["cases"]] == ["B", "C", "A", "D"]
    assert store.board(OP, limit=2)["total"] == 4
    assert store.counts(OP)["by_level"] == {"0": 1, "1": 1, "2": 0, "3": 2, "4": 0}


def test_passwords_are_hashed_and_sessions_expire(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    accounts = Accounts(db, session_hours=1, idle_minutes=10)
    accounts.add_user("wang", "long enough pw", role="operator", area="yz/jfb")
    with db.read() as conn:
        stored = conn.exec_driver_sql("SELECT password_hash FROM users").scalar()
    assert stored.startswith("$argon2id$") and "long enough pw" not in stored
    assert accounts.login("wang", "wrong password") is None
    token, session = accounts.login("wang", "long enough pw") or ("", None)
    assert session is not None and accounts.session(token) is not None
    import console.auth as auth

    base = auth.now_ms()
    monkeypatch.setattr(auth, "now_ms", lambda: base + 11 * 60_000)
    assert accounts.session(token) is None, "idle for 11 minutes"
    monkeypatch.setattr(auth, "now_ms", lambda: base)
    token, _ = accounts.login("wang", "long enough pw") or ("", None)
    for minutes in range(9, 70, 9):  # active all along, but past the 1 h limit
        monkeypatch.setattr(auth, "now_ms", lambda m=minutes: base + m * 60_000)
        alive = accounts.session(token)
    assert alive is None
    accounts.logout(token)


def test_one_batch_opens_follows_and_clears_a_case(store: CaseStore) -> None:
    raise_ = make_alert("B1", level=1, ts=1000)
    batch = [raise_, make_alert("B1", level=3, prev=1, ts=2000), raise_, make_alert("B1", level=0, prev=3, ts=3000),
             make_alert("B1", level=2, prev=0, ts=2500), make_alert("B2", level=0, ts=1000)]  # late; a stray clear
    result = store.ingest(batch)
    assert (result.new_cases, result.duplicates, len(result.rows)) == (1, 1, 1)
    (row,) = result.rows
    assert (row.level, row.max_level, row.alert_cleared) == (0, 3, True)
    case = store.get(OP, row.id)
    assert [e["action"] for e in case["events"]] == ["raised", "level", "cleared", "late_alert"]
    assert len(case["alerts"]) == 4
