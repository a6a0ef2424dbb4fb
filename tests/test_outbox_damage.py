"""A damaged outbox file (zero-length, garbage header, truncated, one corrupted page), found on
open or while in use: moved aside, every readable row saved into a fresh file with its id, the
alert counter kept, the damage reported for as long as the moved-aside file exists."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgpack
import pytest

from benchmarks.faults_agent_state import damage_outbox, settle_outbox, table_leaf_pages
from edge_agent.outbox import OutboundMessage, Outbox

ALERTS, SUMMARIES = 600, 1400


def alert(seq: int) -> OutboundMessage:
    return OutboundMessage(f"p/alert/d/s/S{seq % 7}", msgpack.packb({"v": 1, "seq": seq, "pad": "a" * 200}),
                           "alert")


def summary(n: int, pad: int = 400) -> OutboundMessage:
    return OutboundMessage("p/summary/agent", msgpack.packb({"v": 1, "n": n, "pad": "s" * pad}), "summary")


def content(rows: list[tuple[int, OutboundMessage]]) -> list[tuple[str, int]]:
    out = []
    for _, m in rows:
        body = msgpack.unpackb(m.payload)
        out.append((m.priority, body["seq"] if m.priority == "alert" else body["n"]))
    return out


def filled(path: Path, *, summary_pad: int = 400) -> list[tuple[int, OutboundMessage]]:
    """An outbox with ALERTS alerts (seq 1..) and SUMMARIES summaries interleaved, closed; its rows."""
    with Outbox(path, max_messages=100_000) as box:
        seq = 0
        for i in range(SUMMARIES):
            batch = [summary(i, summary_pad)]
            if i % 7 < 3 and seq < ALERTS:
                seq += 1
                batch.append(alert(seq))
            box.append(batch, last_alert_seq=seq if batch[-1].priority == "alert" else None,
                       state={"detection": b"state %d" % i})
        while seq < ALERTS:
            seq += 1
            box.append([alert(seq)], last_alert_seq=seq)
        rows = box.peek(100_000)
    settle_outbox(path)
    return rows


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, list[tuple[int, OutboundMessage]]]:
    path = tmp_path / "state" / "outbox.sqlite"
    path.parent.mkdir()
    return path, filled(path)


def damage_line(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "was damaged" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def test_zero_length_file_starts_a_fresh_outbox_and_says_so(
        stored: tuple[Path, list[tuple[int, OutboundMessage]]], caplog: pytest.LogCaptureFixture) -> None:
    path, _ = stored
    damage_outbox(path, "zero-length")
    with Outbox(path, max_messages=100_000) as box:
        (report,) = box.damage_reports()
        assert "zero-length" in report.cause and (report.saved_alerts, report.saved_summaries) == (0, 0)
        box.append([alert(1)], last_alert_seq=1)
        assert content(box.peek(10)) == [("alert", 1)]
    line = damage_line(caplog)
    assert str(path) in line and str(report.file) in line and "saved 0 alert(s)" in line


def test_garbage_header_is_rebuilt_and_every_row_saved_with_its_id(
        stored: tuple[Path, list[tuple[int, OutboundMessage]]], caplog: pytest.LogCaptureFixture) -> None:
    path, rows = stored
    damage_outbox(path, "garbage header")
    with Outbox(path, max_messages=100_000) as box:
        assert box.peek(100_000) == rows, "every row, with its id, in drain order"
        assert box.last_alert_seq == ALERTS
        assert box.load_state("detection") == b"state %d" % (SUMMARIES - 1)
        (report,) = box.damage_reports()
        assert (report.saved_alerts, report.saved_summaries, report.unreadable) == (ALERTS, SUMMARIES, 0)
    assert "header was rebuilt" in damage_line(caplog)


def test_truncated_file_keeps_what_is_left_and_counts_the_rest(
        stored: tuple[Path, list[tuple[int, OutboundMessage]]]) -> None:
    path, rows = stored
    damage_outbox(path, "truncated")
    with Outbox(path, max_messages=100_000) as box:
        kept = box.peek(100_000)
        (report,) = box.damage_reports()
        assert set(kept) <= set(rows), "nothing made up"
        assert report.saved_alerts + report.saved_summaries == len(kept)
        if report.unreadable is not None:
            assert len(kept) + report.unreadable == len(rows)
        # a new alert continues the counter, never reusing a seq that may be in the store
        assert box.last_alert_seq >= max([s for kind, s in content(kept) if kind == "alert"], default=0)
        box.append([alert(box.last_alert_seq + 1)], last_alert_seq=box.last_alert_seq + 1)
        assert box.counters().pending == len(kept) + 1


def test_one_corrupted_page_costs_only_its_own_rows(
        stored: tuple[Path, list[tuple[int, OutboundMessage]]]) -> None:
    path, rows = stored
    damage_outbox(path, "corrupted page")
    with Outbox(path, max_messages=100_000) as box:
        kept = box.peek(100_000)
        (report,) = box.damage_reports()
        lost = len(rows) - len(kept)
        assert set(kept) <= set(rows)
        assert 0 < lost <= 12, f"a 4 KiB page holds a few rows; {lost} lost"
        assert report.unreadable == lost, "the index still knows which rows the page held"
        assert box.last_alert_seq == ALERTS
        assert box.load_state("detection") is not None


def test_damage_found_while_in_use_is_recovered_and_new_rows_keep_coming(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The file is bigger than SQLite's page cache, so the page is read from disk again."""
    path = tmp_path / "outbox.sqlite"
    rows = filled(path, summary_pad=3000)
    box = Outbox(path, max_messages=100_000)
    try:
        in_flight = box.peek(5)
        leaves = table_leaf_pages(path)
        damage_outbox(path, "corrupted page", page=leaves[len(leaves) // 5])
        box.append([alert(ALERTS + 1)], last_alert_seq=ALERTS + 1)
        kept = box.peek(100_000)   # reads the damaged page: recovered, then read again
        box.ack(row_id for row_id, _ in in_flight)   # ids stay valid across the recovery
        (report,) = box.damage_reports()
        assert box.last_alert_seq == ALERTS + 1 and ("alert", ALERTS + 1) in content(kept)
        new = [r for r in kept if content([r]) == [("alert", ALERTS + 1)]]
        assert set(kept) - set(new) <= set(rows), "nothing made up"
        assert report.unreadable == len(rows) - (len(kept) - 1)
        assert content(box.peek(100_000)) == content([r for r in kept if r[0] not in {i for i, _ in in_flight}])
    finally:
        box.close()
    assert "was damaged" in caplog.text


def test_the_damage_stays_reported_across_restarts_until_the_moved_file_is_removed(
        stored: tuple[Path, list[tuple[int, OutboundMessage]]]) -> None:
    path, _ = stored
    damage_outbox(path, "garbage header")
    with Outbox(path, max_messages=100_000) as box:
        (report,) = box.damage_reports()
    with Outbox(path, max_messages=100_000) as box:
        assert box.damage_reports() == [report], "still there after a clean restart"
        os.unlink(report.file)
        assert box.damage_reports() == [], "an operator removed the file: the fault clears"
