"""The durable outbox: drain order, the bound and its drop policy, atomic appends, and kill -9."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.outbox import OutboundMessage, Outbox, OutboxError
from lifeline.errors import LifelineError

REPO = Path(__file__).resolve().parents[1]


def alert(n: int, size: int = 250) -> OutboundMessage:
    return OutboundMessage(f"p/alert/d/s/S{n}", n.to_bytes(8, "big").ljust(size, b"a"), "alert")


def summary(n: int, size: int = 500) -> OutboundMessage:
    return OutboundMessage("p/summary/agent", n.to_bytes(8, "big").ljust(size, b"s"), "summary")


def numbers(rows: list[tuple[int, OutboundMessage]]) -> list[tuple[str, int]]:
    return [(m.priority, int.from_bytes(m.payload[:8], "big")) for _, m in rows]


@pytest.fixture
def box(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "state" / "outbox.sqlite", max_messages=1000)


def test_new_outbox_is_empty_in_wal_mode_with_its_directory_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "outbox.sqlite"
    with Outbox(path, max_messages=10) as box:
        assert box.last_alert_seq == 0
        assert box.peek(10) == []
        counters = box.counters()
        assert (counters.pending, counters.dropped) == (0, 0)
        assert counters.bytes_on_disk > 0
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_alerts_drain_before_summaries_each_oldest_first(box: Outbox) -> None:
    box.append([summary(1), alert(1)])
    box.append([summary(2), summary(3), alert(2)])
    box.append([alert(3)])
    assert numbers(box.peek(10)) == [("alert", 1), ("alert", 2), ("alert", 3),
                                     ("summary", 1), ("summary", 2), ("summary", 3)]
    assert numbers(box.peek(2)) == [("alert", 1), ("alert", 2)]


def test_peek_skips_rows_in_flight_and_ack_removes_only_delivered_rows(box: Outbox) -> None:
    box.append([alert(1), alert(2), summary(1), summary(2)])
    first = box.peek(2)
    in_flight = {row_id for row_id, _ in first}
    assert numbers(box.peek(10, exclude=in_flight)) == [("summary", 1), ("summary", 2)]
    box.ack(in_flight)
    box.ack(in_flight)  # a late duplicate ack changes nothing
    assert numbers(box.peek(10)) == [("summary", 1), ("summary", 2)]
    counters = box.counters()
    assert (counters.pending_alerts, counters.pending_summaries) == (0, 2)


def test_summary_bytes_caps_summaries_but_never_holds_back_alerts(box: Outbox) -> None:
    box.append([summary(i, size=1000) for i in range(10)] + [alert(1), alert(2)])
    assert numbers(box.peek(100, summary_bytes=2500)) == [
        ("alert", 1), ("alert", 2), ("summary", 0), ("summary", 1), ("summary", 2)]
    assert numbers(box.peek(100, summary_bytes=0)) == [("alert", 1), ("alert", 2)]


def test_bound_drops_oldest_summaries_first_then_oldest_alerts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_messages=4) as box:
        box.append([alert(1), summary(1), summary(2), alert(2)])
        box.append([summary(3), alert(3)])
        assert numbers(box.peek(10)) == [("alert", 1), ("alert", 2), ("alert", 3), ("summary", 3)]
        box.append([alert(4), alert(5)])
        assert numbers(box.peek(10)) == [("alert", 2), ("alert", 3), ("alert", 4), ("alert", 5)]
        counters = box.counters()
        assert (counters.dropped_summaries, counters.dropped_alerts) == (3, 1)
    with Outbox(path, max_messages=4) as reopened:
        counters = reopened.counters()
        assert (counters.dropped_summaries, counters.dropped_alerts) == (3, 1), "drops survive a restart"
        assert (counters.pending_alerts, counters.pending_summaries) == (4, 0)


def test_alert_counter_and_state_are_stored_with_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_messages=100) as box:
        box.append([alert(1)], last_alert_seq=1, state={"kernel": b"\x01\x02", "windows": b"w1"})
        box.append([alert(2)], last_alert_seq=2, state={"kernel": b"\x03"})
        box.append([], state={"windows": b"w2"})
    with Outbox(path, max_messages=100) as box:
        assert box.last_alert_seq == 2
        assert box.load_state("kernel") == b"\x03"
        assert box.load_state("windows") == b"w2"
        assert box.load_state("missing") is None
        assert len(box.peek(10)) == 2


def test_an_append_the_file_cannot_take_is_held_in_memory_and_stores_nothing_partial(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_messages=100, max_bytes=200_000) as box:
        box.append([alert(1)], last_alert_seq=1, state={"kernel": b"old"})
        box.append([alert(2, size=1_000_000)], last_alert_seq=2, state={"kernel": b"new"})
        assert (box.in_memory, box.last_alert_seq, box.load_state("kernel")) == (1, 2, b"new")
        rows = box.peek(10)
        assert numbers(rows) == [("alert", 1), ("alert", 2)] and rows[1][0] < 0
        assert box.counters().pending_alerts == 2
    assert "1 message(s) held in memory are lost" in caplog.text
    with Outbox(path, max_messages=100) as box:
        assert (box.last_alert_seq, box.load_state("kernel")) == (1, b"old")
        assert numbers(box.peek(10)) == [("alert", 1)]


def test_full_disk_drops_old_summaries_to_keep_new_alerts(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.outbox")
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_messages=100_000, max_bytes=1_000_000) as box:
        for i in range(40):  # 40 x 50 kB does not fit in 1 MB
            box.append([summary(i, size=50_000)])
        for i in range(20):
            box.append([alert(i)], last_alert_seq=i + 1)
        counters = box.counters()
        assert counters.dropped_summaries > 0 and counters.dropped_alerts == 0
        assert counters.pending_alerts == 20 and box.last_alert_seq == 20
        kept = [n for kind, n in numbers(box.peek(1000)) if kind == "summary"]
        assert kept == list(range(40 - len(kept), 40)), "the oldest summaries go first"
    disk_full_lines = [r for r in caplog.records if "disk full" in r.getMessage()]
    assert len(disk_full_lines) == 1, "the warning is throttled"
    assert str(path) in disk_full_lines[0].getMessage()


def test_a_file_that_is_no_database_is_moved_aside_and_the_outbox_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with Outbox(path, max_messages=10) as box:
        (report,) = box.damage_reports()
        assert report.file.read_bytes().startswith(b"this is not a database"), "kept as it was"
        box.append([alert(1)], last_alert_seq=1)
        assert numbers(box.peek(10)) == [("alert", 1)]


def test_an_outbox_that_cannot_be_opened_raises_outbox_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.mkdir()  # not damage: something an operator has to fix
    with pytest.raises(OutboxError, match=str(path)) as err:
        Outbox(path, max_messages=10)
    assert isinstance(err.value, LifelineError)


def test_outbox_written_by_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path, max_messages=10).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(path, max_messages=10)


def test_closed_outbox_refuses_work(box: Outbox) -> None:
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.append([alert(1)])


def test_concurrent_appends_and_acks_deliver_every_row_once(box: Outbox) -> None:
    appended = 400
    done = threading.Event()

    def pipeline() -> None:
        for i in range(appended):
            box.append([alert(i) if i % 3 else summary(i)], last_alert_seq=i)
        done.set()

    writer = threading.Thread(target=pipeline)
    writer.start()
    delivered: list[tuple[str, int]] = []
    while not (done.is_set() and box.counters().pending == 0):
        rows = box.peek(17)
        delivered += numbers(rows)
        box.ack(row_id for row_id, _ in rows)
    writer.join()
    assert sorted(n for _, n in delivered) == list(range(appended))
    for kind in ("alert", "summary"):
        mine = [n for k, n in delivered if k == kind]
        assert mine == sorted(mine), f"{kind}s left out of order"


@given(st.integers(1, 6), st.lists(st.one_of(
    st.lists(st.sampled_from(["alert", "summary"]), max_size=5),  # an append
    st.integers(0, 4),                                            # ack that many from the head
), max_size=25))
def test_outbox_matches_a_list_model(max_messages: int, ops: list[list[str] | int]) -> None:
    model: list[tuple[int, str]] = []
    dropped = {"alert": 0, "summary": 0}
    next_id = 1
    with tempfile.TemporaryDirectory() as tmp, Outbox(Path(tmp) / "o.sqlite", max_messages=max_messages) as box:
        for op in ops:
            if isinstance(op, list):
                box.append([OutboundMessage("t", b"x", p) for p in op])  # type: ignore[arg-type]
                for p in op:
                    model.append((next_id, p))
                    next_id += 1
                while len(model) > max_messages:
                    victim_kind = "summary" if any(p == "summary" for _, p in model) else "alert"
                    victim = next(row for row in model if row[1] == victim_kind)
                    model.remove(victim)
                    dropped[victim_kind] += 1
            else:
                head = box.peek(op)
                box.ack(row_id for row_id, _ in head)
                for row_id, _ in head:
                    model = [row for row in model if row[0] != row_id]
            expected = sorted(model, key=lambda row: (row[1] != "alert", row[0]))
            assert [(i, m.priority) for i, m in box.peek(100)] == expected
            counters = box.counters()
            assert counters.dropped_alerts == dropped["alert"]
            assert counters.dropped_summaries == dropped["summary"]


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edge_agent.outbox import OutboundMessage, Outbox

    box = Outbox(Path(sys.argv[1]), max_messages=1_000_000)
    seq = box.last_alert_seq
    while True:
        seq += 1
        rows = [OutboundMessage(f"p/alert/d/s/S{seq}", seq.to_bytes(8, "big") * 32, "alert")]
        if seq % 4 == 0:
            rows.append(OutboundMessage("p/summary/a", seq.to_bytes(8, "big") * 2000, "summary"))
        box.append(rows, last_alert_seq=seq, state={"levels": str(seq).encode()})
        print(seq, flush=True)
""")


def run_and_kill(script: Path, path: Path, lines_before_kill: int) -> list[int]:
    """Run the appending child, SIGKILL it mid-way, return every seq it reported as committed."""
    child = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                             cwd=REPO, text=True)
    assert child.stdout is not None
    reported = [int(child.stdout.readline()) for _ in range(lines_before_kill)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    reported += [int(line) for line in child.stdout.read().split()]
    assert child.returncode == -signal.SIGKILL
    return reported


def test_every_append_that_returned_survives_kill_9(tmp_path: Path) -> None:
    script = tmp_path / "append_forever.py"
    script.write_text(CHILD)
    path = tmp_path / "outbox.sqlite"
    reported = run_and_kill(script, path, 150)
    reported += run_and_kill(script, path, 150)  # restarts from the stored counter
    with Outbox(path, max_messages=1_000_000) as box:
        rows = box.peek(1_000_000)
        alert_seqs = [int.from_bytes(m.payload[:8], "big") for _, m in rows if m.priority == "alert"]
        last = box.last_alert_seq
        assert set(reported) <= set(alert_seqs), "an append that returned was lost"
        assert alert_seqs == list(range(1, last + 1)), "seqs must be contiguous, with no gap or repeat"
        assert box.load_state("levels") == str(last).encode(), "state committed with the last alert"
        summaries = [int.from_bytes(m.payload[:8], "big") for _, m in rows if m.priority == "summary"]
        assert summaries == list(range(4, last + 1, 4))


def test_unknown_priority_is_refused_when_the_message_is_made() -> None:
    with pytest.raises(ValueError, match="priority"):
        OutboundMessage("t", b"x", "urgent")  # type: ignore[arg-type]
