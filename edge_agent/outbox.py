"""Durable, bounded outbox of everything the agent sends upstream, in SQLite (WAL).

The pipeline thread appends alerts and summaries (with the alert counter and the kernel state
they came from, in the same transaction); the uplink thread peeks pending rows, publishes them
and acks each on its PUBACK. Rows survive the uplink being down and the process being killed.

Durability: appends commit with `synchronous=FULL`, so a row whose `append` returned survives
`kill -9` (the WAL is written before the commit returns) and also power loss (the WAL is fsynced
before the commit returns; SD cards lie about flushes sometimes, which no setting can fix). Acks
commit with `synchronous=NORMAL`: an ack lost to power loss only means one more re-send, which
consumers de-duplicate by alert id, and it saves an fsync per PUBACK batch. Row ids come from
AUTOINCREMENT, so an id is never reused and a late ack cannot delete a newer row.

Bound: at most `max_messages` rows; when an append goes beyond it, the oldest summaries are
dropped first and the oldest alerts only when no summary is left. `max_bytes` (optional) caps the
database file; reaching it behaves exactly like a full disk. On "database or disk is full" the
append is rolled back, old summaries are dropped (oldest first; alerts only when no summary is
left) to free about twice the batch's size plus a few pages, and the append is retried once; if
it still fails, `OutboxError` is raised and nothing of that append is stored. Nothing is dropped
for a batch bigger than all stored rows together. Every drop is counted persistently.

A real full disk is harder than `max_bytes`: in WAL mode new rows sit in the `-wal` file until a
checkpoint copies them into the database file, and both need room, so a disk that fills up
with recent rows in the WAL would refuse even the DELETE that makes room (every append then
fails and alerts are lost). Hence `reserve_bytes`: a file of that size kept beside the outbox
and given up on the first "disk full", so the checkpoint can run and truncate the WAL; then old
summaries are dropped as above. Without the reserve (while the disk stays full) the same steps
keep working: new rows reuse the pages of dropped ones, and each checkpoint empties the WAL.
The reserve is re-created (at most every `_RESERVE_RETRY_S`) once the disk has room again,
which is logged; `space_low` says whether it is missing.

Damage (a power cut on an SD card, a bad sector): the file is checked (`PRAGMA quick_check`) on
open, and again whenever SQLite reports an error other than a full disk. A damaged file
(zero-length, garbage header, truncated, a corrupted page) is moved aside as
`outbox.sqlite.damaged-<UTC time>` (with its WAL), every row, counter and state blob still
readable is copied into a fresh outbox with the same row ids (`edge_agent.salvage`), and one
ERROR line names both files and what was saved. Each damage is recorded in the fresh file
(table `damage`) and reported by `damage_reports` for as long as the moved-aside file exists,
so the fault stays visible across restarts until an operator has looked at it and removed the file.

Memory when the file fails: when an append cannot be stored on disk (the file cannot be
recreated after damage, the disk stays full with nothing left to drop, an I/O error), the rows
are held in memory instead (bounded by `max_messages` and `MEMORY_MAX_BYTES`, oldest summaries
dropped first, alerts last), `peek` and `ack` serve them with negative ids, and every
`_RESERVE_RETRY_S` the outbox tries to write them back to disk. `in_memory` counts them. They
survive anything but the process ending before the disk takes them again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Self

from edge_agent.salvage import (
    SIDE_FILES,
    Salvage,
    damaged_name,
    integrity_problem,
    is_damage,
    move_aside,
    read_damaged,
)
from lifeline.backoff import LogThrottle, held_note
from lifeline.errors import LifelineError

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
Priority = Literal["alert", "summary"]
#: Stored priority: lower drains first and is dropped last.
_RANK: Final[dict[str, int]] = {"alert": 0, "summary": 1}
_PRIORITY: Final[tuple[Priority, Priority]] = ("alert", "summary")
#: The WAL is truncated back to this size after a checkpoint so it does not hold on to disk.
_WAL_SIZE_LIMIT: Final = 4 * 1024 * 1024
#: Extra room freed on a full disk beyond twice the batch's bytes, in pages: SQLite reuses only
#: whole free pages, so freeing less than a few pages' worth may leave no room for the retry.
_FULL_DISK_SLACK_PAGES: Final = 4
#: Rough per-row bytes besides the payload (topic, record header, index entry).
_ROW_OVERHEAD_BYTES: Final = 96
#: Ids per `IN (...)` statement, well under SQLite's parameter limit.
_CHUNK: Final = 500
#: WAL pages before an automatic checkpoint (SQLite's default is 1000): a checkpoint must fit in
#: the reserve on a full disk, so the WAL is kept at about 1 MiB.
_WAL_CHECKPOINT_PAGES: Final = 256
#: Seconds between attempts to re-create a missing reserve file.
_RESERVE_RETRY_S: Final = 5.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rank INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_rank ON outbox (rank, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS damage (
    at_ms INTEGER NOT NULL, file TEXT NOT NULL, cause TEXT NOT NULL,
    saved_alerts INTEGER NOT NULL, saved_summaries INTEGER NOT NULL, unreadable INTEGER
);
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('last_alert_seq', 0), ('dropped_alerts', 0), ('dropped_summaries', 0);
"""
#: Payload bytes held in memory at most while the file cannot take new rows.
MEMORY_MAX_BYTES: Final = 16 << 20
#: Seconds between integrity checks after errors that do not say "damaged" themselves.
_CHECK_EVERY_S: Final = 30.0


class OutboxError(LifelineError):
    """The outbox file cannot be opened, read or written; the message names the file and the cause."""


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One MQTT message waiting to go upstream; alerts drain first and are dropped last."""

    topic: str
    payload: bytes
    priority: Priority

    def __post_init__(self) -> None:
        if self.priority not in _RANK:
            raise ValueError(f"priority must be 'alert' or 'summary', got {self.priority!r}")


@dataclass(frozen=True, slots=True)
class OutboxCounters:
    """Backlog and drop counts for the agent's Status (drops are counted since the file was created)."""

    pending_alerts: int
    pending_summaries: int
    dropped_alerts: int
    dropped_summaries: int
    bytes_on_disk: int
    #: Of the pending messages, those held in memory because the file could not take them.
    in_memory: int = 0

    @property
    def pending(self) -> int:
        return self.pending_alerts + self.pending_summaries

    @property
    def dropped(self) -> int:
        return self.dropped_alerts + self.dropped_summaries


@dataclass(frozen=True, slots=True)
class DamageReport:
    """One damaged outbox file found, moved aside and salvaged."""

    at_ms: int
    file: Path
    cause: str
    saved_alerts: int
    saved_summaries: int
    #: Rows known to have been in the file that could not be read (None: unknown).
    unreadable: int | None

    def as_status(self) -> dict[str, object]:
        """The entry of the agent's Status `outbox_damage` list."""
        return {"at": self.at_ms, "file": str(self.file), "cause": self.cause,
                "saved_alerts": self.saved_alerts, "saved_summaries": self.saved_summaries,
                "unreadable": -1 if self.unreadable is None else self.unreadable}


def _is_disk_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)


class Outbox:
    """A bounded FIFO per priority in one SQLite file; every method is safe to call from any thread."""

    def __init__(self, path: Path, *, max_messages: int, max_bytes: int | None = None,
                 reserve_bytes: int = 0) -> None:
        """Open or create the file (and its directory), recovering it if damaged; raise
        OutboxError naming it if it cannot be opened for another reason (permissions, a newer
        schema).

        `max_messages` bounds the rows; `max_bytes` optionally caps the database file's size;
        `reserve_bytes` (0: none) is the disk space held back for a full disk (`<path>-reserve`).
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._synchronous = ""
        self._closed = False
        self._throttle = LogThrottle()
        self.reserve_path = self.path.with_name(self.path.name + "-reserve")
        self._reserve_bytes = reserve_bytes
        self._reserve_held = False
        self._reserve_retry_at = 0.0
        #: While the disk is full: the outbox may hold no more payload bytes than it did then.
        self._full_limit: int | None = None
        self._db: sqlite3.Connection | None = None
        self._pending = [0, 0]
        self._dropped = [0, 0]
        self._last_alert_seq = 0
        #: Highest row id handed out, so a fresh file after damage never reuses one in flight.
        self._max_row_id = 0
        self._reports: list[DamageReport] = []
        self._checked_at = -float("inf")
        # rows the file could not take: negative ids, oldest first
        self._memory: dict[int, tuple[int, OutboundMessage]] = {}
        self._memory_bytes = 0
        self._memory_state: dict[str, bytes] = {}
        self._memory_seq: int | None = None
        self._next_memory_id = -1
        self._memory_since = 0.0
        self._memory_retry_at = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: cannot create its directory: {exc}") from exc
        self._open()
        if reserve_bytes > 0 and not self._refill_reserve():
            log.warning("outbox %s: no room for its %d-byte reserve; the disk is (nearly) full",
                        self.path, reserve_bytes)

    # ------------------------------------------------------------------ setup

    def _open(self) -> None:
        """Open the file and check it; recover it if damaged, hold rows in memory if it cannot be written."""
        problem: str | None = None
        existed = self.path.exists()
        if existed and self.path.stat().st_size == 0:
            problem = "zero-length file"
        else:
            try:
                self._connect()
                problem = integrity_problem(self._connected_db())
                self._checked_at = time.monotonic()
            except sqlite3.Error as exc:
                self._close_db()
                if is_damage(exc):
                    problem = str(exc)
                elif _is_disk_full(exc):
                    if not existed:  # an empty file of ours is no damage to find next time
                        for suffix in ("", *SIDE_FILES):
                            with suppress(OSError):
                                self.path.with_name(self.path.name + suffix).unlink()
                    self._to_memory(f"cannot open it on a full disk ({exc})")
                    return
                else:
                    raise self._error("open", exc) from exc
            except OutboxError:
                self._close_db()
                raise
        if problem is not None:
            self._recover(problem)

    def _connect(self) -> None:
        """Connect and load the counters (raw sqlite3.Error; OutboxError for what needs an operator)."""
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        self._synchronous = ""
        self._open_schema()

    def _connected_db(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    def _open_schema(self) -> None:
        db = self._connected_db()
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"outbox {self.path}: cannot switch to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        self._set_synchronous("FULL")
        self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        if self._max_bytes is not None:
            db.execute(f"PRAGMA max_page_count={max(1, self._max_bytes // self._page_size)}")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise OutboxError(f"outbox {self.path}: schema version {version} was written by a newer "
                              f"lifeline (this one reads version {SCHEMA_VERSION}); move the file aside")
        db.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
        self._load_counters()

    def _load_counters(self) -> None:
        """Counters from the file, merged with what this process knows (never going back)."""
        db = self._connected_db()
        pending = [0, 0]
        for rank, count in db.execute("SELECT rank, COUNT(*) FROM outbox GROUP BY rank"):
            pending[rank] = count
        for rank, _ in self._memory.values():
            pending[rank] += 1
        self._pending = pending
        meta = dict(db.execute("SELECT key, value FROM meta"))
        self._last_alert_seq = max(self._last_alert_seq, int(meta["last_alert_seq"]))
        self._dropped = [max(self._dropped[0], int(meta["dropped_alerts"])),
                         max(self._dropped[1], int(meta["dropped_summaries"]))]
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self._max_row_id = max(self._max_row_id, int(row[0]) if row else 0)
        known = {(r.at_ms, str(r.file)) for r in self._reports}
        for at_ms, file, cause, alerts, summaries, unreadable in db.execute(
                "SELECT at_ms, file, cause, saved_alerts, saved_summaries, unreadable FROM damage"):
            if (int(at_ms), str(file)) not in known:
                self._reports.append(DamageReport(int(at_ms), Path(file), str(cause), int(alerts),
                                                  int(summaries), None if unreadable is None else int(unreadable)))

    def _set_synchronous(self, level: Literal["FULL", "NORMAL"]) -> None:
        if self._synchronous != level:
            self._connected_db().execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    # ------------------------------------------------------------------ damage

    def _problem(self, exc: sqlite3.Error) -> str | None:
        """Why the file counts as damaged after this error, or None (then it was transient)."""
        if is_damage(exc):
            return str(exc)
        if self._db is None or time.monotonic() - self._checked_at < _CHECK_EVERY_S:
            return None
        self._checked_at = time.monotonic()
        return integrity_problem(self._db)

    def _recover(self, problem: str) -> None:
        """Move the damaged file aside, salvage what it holds into a fresh one (or into memory
        if no fresh file can be written), and say so in one line."""
        at = time.time()
        self._close_db()
        aside = damaged_name(self.path, at)
        try:
            move_aside(self.path, aside)
        except OSError as exc:
            self._to_memory(f"damaged ({problem}) and cannot be moved aside ({exc})")
            return
        try:
            salvage = read_damaged(aside)
        except OSError as exc:  # it can be gone or unreadable as a whole: nothing to save
            salvage = Salvage(hopeless=str(exc))
        report = DamageReport(int(at * 1000), aside, problem, salvage.alerts, salvage.summaries,
                              salvage.unreadable)
        self._reports.append(report)
        where = self._restore_salvage(salvage, report)
        unreadable = ("; how many rows could not be read is unknown" if salvage.unreadable is None
                      else f"; {salvage.unreadable} row(s) could not be read" if salvage.unreadable
                      else "")
        hopeless = f" (nothing readable: {salvage.hopeless})" if salvage.hopeless else ""
        rebuilt = "; its header was rebuilt to read it" if salvage.header_rebuilt else ""
        log.error("outbox %s was damaged (%s): moved it to %s and saved %d alert(s), %d summary(ies) "
                  "and %d state blob(s)%s%s%s into %s; alert seq continues after %d; detection goes on "
                  "(status fault outbox_damaged until that file is removed)", self.path, problem,
                  aside, salvage.alerts, salvage.summaries, len(salvage.state), hopeless, unreadable,
                  rebuilt, where, self._last_alert_seq)

    def _restore_salvage(self, salvage: Salvage, report: DamageReport) -> str:
        """Write the salvage into a fresh file (into memory if that fails); returns where it went."""
        self._last_alert_seq = max(self._last_alert_seq, salvage.last_alert_seq())
        self._dropped = [max(self._dropped[0], salvage.meta.get("dropped_alerts", 0)),
                         max(self._dropped[1], salvage.meta.get("dropped_summaries", 0))]
        self._max_row_id = max(self._max_row_id, salvage.max_id)
        for attempt in range(2):
            try:
                self._connect()
                self._import(salvage, report)
                return f"a fresh {self.path.name}"
            except sqlite3.Error as exc:
                self._rollback()
                self._close_db()
                if attempt == 0 and _is_disk_full(exc):
                    self._release_reserve()
                    continue
                self._to_memory(f"cannot write a fresh file after damage ({exc})")
                break
        for row in salvage.rows:
            self._memory_put(row.rank, OutboundMessage(row.topic, row.payload, _PRIORITY[row.rank]))
        self._memory_state.update(salvage.state)
        self._memory_seq = self._last_alert_seq
        return "memory (the disk takes no fresh file now)"

    def _import(self, salvage: Salvage, report: DamageReport) -> None:
        db = self._connected_db()
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR REPLACE INTO outbox (id, rank, topic, payload) VALUES (?, ?, ?, ?)",
                       [(r.row_id, r.rank, r.topic, r.payload) for r in salvage.rows])
        if db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'",
                      (self._max_row_id,)).rowcount == 0:
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (self._max_row_id,))
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_alert_seq'", (self._last_alert_seq,))
        self._store_dropped(self._dropped)
        db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", list(salvage.state.items()))
        known = {(r.at_ms, str(r.file)) for r in self._reports}
        db.executemany("INSERT INTO damage (at_ms, file, cause, saved_alerts, saved_summaries, unreadable) "
                       "VALUES (?, ?, ?, ?, ?, ?)", [d for d in salvage.damage if (d[0], d[1]) not in known])
        self._store_reports()
        db.execute("COMMIT")
        self._load_counters()

    def _store_reports(self) -> None:
        """Within a transaction: record the damage reports the file does not hold yet."""
        db = self._connected_db()
        stored = {(int(a), str(f)) for a, f in db.execute("SELECT at_ms, file FROM damage")}
        db.executemany("INSERT INTO damage (at_ms, file, cause, saved_alerts, saved_summaries, unreadable) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(r.at_ms, str(r.file), r.cause, r.saved_alerts, r.saved_summaries, r.unreadable)
                        for r in self._reports if (r.at_ms, str(r.file)) not in stored])

    def damage_reports(self) -> list[DamageReport]:
        """Damaged files found (now or before) whose moved-aside copy is still there."""
        with self._lock:
            reports = list(self._reports)
        return [r for r in reports if r.file.exists()]

    # ------------------------------------------------------------------ memory

    @property
    def on_disk(self) -> bool:
        """False while new rows are held in memory because the file cannot take them."""
        return not self._spilling()

    @property
    def in_memory(self) -> int:
        """Messages held in memory because the file could not take them (0 normally)."""
        return len(self._memory)

    def _to_memory(self, why: str) -> None:
        if not self._memory and self._memory_since == 0.0:
            self._memory_since = time.monotonic()
        self._memory_retry_at = time.monotonic() + _RESERVE_RETRY_S
        held = self._throttle.allow("memory")
        if held is not None:
            log.error("outbox %s: %s; holding new messages in memory (at most %d, %d MiB; oldest "
                      "summaries dropped first) and retrying the disk every %.0f s%s", self.path, why,
                      self.max_messages, MEMORY_MAX_BYTES >> 20, _RESERVE_RETRY_S, held_note(held))

    def _memory_put(self, rank: int, message: OutboundMessage) -> None:
        self._memory[self._next_memory_id] = (rank, message)
        self._next_memory_id -= 1
        self._memory_bytes += len(message.payload)
        self._pending[rank] += 1
        while len(self._memory) > self.max_messages or self._memory_bytes > MEMORY_MAX_BYTES:
            victim = next((i for i, (r, _) in self._memory.items() if r == 1), None)
            if victim is None:
                victim = next(iter(self._memory))
            r, m = self._memory.pop(victim)
            self._memory_bytes -= len(m.payload)
            self._pending[r] -= 1
            self._dropped[r] += 1

    def _memory_append(self, messages: Sequence[OutboundMessage], last_alert_seq: int | None,
                       state: Mapping[str, bytes] | None) -> None:
        for m in messages:
            self._memory_put(_RANK[m.priority], m)
        if last_alert_seq is not None:
            self._memory_seq = self._last_alert_seq = last_alert_seq
        if state:
            self._memory_state.update({k: bytes(v) for k, v in state.items()})

    def _spilling(self) -> bool:
        return self._db is None or bool(self._memory) or bool(self._memory_state)

    def _back_to_disk(self, *, now: bool = False) -> None:
        """Try (at most every `_RESERVE_RETRY_S`, or `now`) to write what memory holds to the file."""
        if not now and time.monotonic() < self._memory_retry_at:
            return
        self._memory_retry_at = time.monotonic() + _RESERVE_RETRY_S
        if self._db is None:
            try:
                self._open()
            except OutboxError as exc:
                log.debug("outbox %s: still cannot open it: %s", self.path, exc)
            if self._db is None:
                return
        db = self._connected_db()
        rows = list(self._memory.values())
        try:
            self._set_synchronous("FULL")
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO outbox (rank, topic, payload) VALUES (?, ?, ?)",
                           [(rank, m.topic, m.payload) for rank, m in rows])
            if self._memory_seq is not None:
                db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'last_alert_seq'",
                           (self._memory_seq,))
            db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                           list(self._memory_state.items()))
            self._store_dropped(self._dropped)
            self._store_reports()
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.debug("outbox %s: the disk does not take the messages held in memory yet: %s", self.path, exc)
            return
        held_s = time.monotonic() - self._memory_since if self._memory_since else 0.0
        self._memory.clear()
        self._memory_bytes = 0
        self._memory_state.clear()
        self._memory_seq = None
        self._memory_since = 0.0
        self._throttle.reset("memory")
        self._load_counters()
        log.info("outbox %s: back on disk; wrote the %d message(s) held in memory for %.0f s",
                 self.path, len(rows), held_s)

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(action, exc) from exc

    # ------------------------------------------------------------------ writes

    @property
    def last_alert_seq(self) -> int:
        """The last alert `seq` stored with an append (0 for a new outbox)."""
        return self._last_alert_seq

    def append(self, messages: Sequence[OutboundMessage], *, last_alert_seq: int | None = None,
               state: Mapping[str, bytes] | None = None) -> None:
        """Store messages, the alert counter and opaque state blobs in one transaction, then
        enforce the bound; in memory (see the module docstring) when the file cannot take them."""
        with self._lock:
            self._check_open()
            if self._spilling():
                self._back_to_disk()
                if self._spilling():
                    self._memory_append(messages, last_alert_seq, state)
                    return
            try:
                self._append_once(messages, last_alert_seq, state)
            except sqlite3.Error as exc:
                self._rollback()
                if _is_disk_full(exc):
                    self._append_on_full_disk(messages, last_alert_seq, state)
                    return
                problem = self._problem(exc)
                if problem is not None:
                    self._recover(problem)
                    if not self._spilling():
                        try:
                            self._append_once(messages, last_alert_seq, state)
                            return
                        except sqlite3.Error as exc2:
                            self._rollback()
                            exc = exc2
                self._to_memory(f"cannot append: {exc}")
                self._memory_append(messages, last_alert_seq, state)
            else:
                self._maybe_refill_reserve()

    def _append_on_full_disk(self, messages: Sequence[OutboundMessage], last_alert_seq: int | None,
                             state: Mapping[str, bytes] | None) -> None:
        """Make room (the reserve, then old summaries, then old alerts) and append again; into
        memory if even that fails."""
        batch = (sum(len(m.payload) + len(m.topic) for m in messages)
                 + sum(len(v) for v in (state or {}).values()))
        released = self._make_way()
        if self._reserve_bytes > 0 and self._full_limit is None:
            # what the disk held (and half the released reserve) is the budget from now on
            self._full_limit = max(self._stored_bytes(), self._reserve_bytes // 2)
        try:
            freed = self._free_space(2 * batch + _FULL_DISK_SLACK_PAGES * self._page_size, at_least=batch)
        except sqlite3.Error as exc:
            self._rollback()
            log.debug("outbox %s: cannot make room: %s", self.path, exc)
            freed = 0
        self._checkpoint()
        held = self._throttle.allow("disk-full")
        if held is not None:
            log.warning("outbox %s: disk full; %sdropped %d old message(s) to make room and "
                        "holds at most %s until the disk has room (dropped so far: %d "
                        "summaries, %d alerts)%s", self.path,
                        "released the reserve, " if released else "", freed,
                        f"{self._full_limit} payload bytes" if self._full_limit else "what fits",
                        self._dropped[1], self._dropped[0], held_note(held))
        try:
            self._append_once(messages, last_alert_seq, state)
        except sqlite3.Error as exc:
            self._rollback()
            self._to_memory(f"disk full, and making room was not enough ({exc})")
            self._memory_append(messages, last_alert_seq, state)

    @property
    def space_low(self) -> bool:
        """True while the reserve is given up (the disk was full and has not had room for it since)."""
        return self._reserve_bytes > 0 and not self._reserve_held

    def _make_way(self) -> bool:
        """On a full disk: give up the reserve, then checkpoint and truncate the WAL. True if the
        reserve was released."""
        released = self._release_reserve()
        self._checkpoint()
        return released

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (best effort: it may need room too)."""
        if self._db is None:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("outbox %s: checkpoint failed: %s", self.path, exc)

    def _release_reserve(self) -> bool:
        if not self._reserve_held:
            return False
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("outbox %s: cannot release the reserve %s: %s", self.path, self.reserve_path, exc)
            return False
        self._reserve_held = False
        self._reserve_retry_at = time.monotonic() + _RESERVE_RETRY_S
        return True

    def _refill_reserve(self) -> bool:
        """(Re)create the reserve file at full size; False (and no file) if the disk has no room."""
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            try:
                self.reserve_path.unlink()
            except OSError:
                pass
            return False
        self._reserve_held = True
        return True

    def _maybe_refill_reserve(self) -> None:
        """After a full disk: keep the WAL empty (its pages must not need room the database
        file cannot get) and try now and then to take the reserve back; log when it worked."""
        if not self.space_low:
            return
        self._checkpoint()
        if time.monotonic() < self._reserve_retry_at:
            return
        if self._refill_reserve():
            self._full_limit = None
            self._throttle.reset("disk-full")
            log.info("outbox %s: the disk has room again; reserve of %d bytes restored "
                     "(dropped so far: %d summaries, %d alerts)", self.path, self._reserve_bytes,
                     self._dropped[1], self._dropped[0])
        else:
            self._reserve_retry_at = time.monotonic() + _RESERVE_RETRY_S

    def _append_once(self, messages: Sequence[OutboundMessage], last_alert_seq: int | None,
                     state: Mapping[str, bytes] | None) -> None:
        db = self._connected_db()
        self._set_synchronous("FULL")
        pending = list(self._pending)
        dropped = list(self._dropped)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO outbox (rank, topic, payload) VALUES (?, ?, ?)",
                       [(_RANK[m.priority], m.topic, m.payload) for m in messages])
        for m in messages:
            pending[_RANK[m.priority]] += 1
        if last_alert_seq is not None:
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_alert_seq'", (last_alert_seq,))
        if state:
            db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                           [(k, bytes(v)) for k, v in state.items()])
        excess = sum(pending) - self.max_messages
        for rank in (1, 0):
            if excess <= 0:
                break
            n = self._delete_oldest(rank, count=excess)
            pending[rank] -= n
            dropped[rank] += n
            excess -= n
        if self._full_limit is not None:
            self._hold_bytes(self._full_limit, pending, dropped)
        if dropped != self._dropped:
            self._store_dropped(dropped)
        db.execute("COMMIT")
        self._pending = pending
        self._dropped = dropped
        if last_alert_seq is not None:
            self._last_alert_seq = last_alert_seq
        if messages:
            self._max_row_id = max(self._max_row_id, int(db.execute("SELECT last_insert_rowid()").fetchone()[0]))

    def _stored_bytes(self) -> int:
        return int(self._connected_db().execute("SELECT COALESCE(SUM(length(payload)), 0) FROM outbox").fetchone()[0])

    def _hold_bytes(self, limit: int, pending: list[int], dropped: list[int]) -> None:
        """Within a transaction: drop the oldest summaries, then alerts, until the payloads hold at
        most `limit` bytes (on a full disk: new rows then reuse the pages of dropped ones)."""
        excess = self._stored_bytes() - limit
        for rank in (1, 0):
            if excess <= 0:
                return
            victims: list[int] = []
            cur = self._connected_db().execute("SELECT id, length(payload) FROM outbox WHERE rank = ? ORDER BY id",
                                   (rank,))
            for row_id, size in cur:
                if excess <= 0:
                    break
                victims.append(row_id)
                excess -= int(size)
            cur.close()
            self._connected_db().executemany("DELETE FROM outbox WHERE id = ?", [(v,) for v in victims])
            pending[rank] -= len(victims)
            dropped[rank] += len(victims)

    def _delete_oldest(self, rank: int, *, count: int) -> int:
        cur = self._connected_db().execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE rank = ? ORDER BY id LIMIT ?)",
            (rank, count))
        return max(cur.rowcount, 0)

    def _store_dropped(self, dropped: list[int]) -> None:
        self._connected_db().executemany("UPDATE meta SET value = ? WHERE key = ?",
                             [(dropped[0], "dropped_alerts"), (dropped[1], "dropped_summaries")])

    def _free_space(self, needed_bytes: int, *, at_least: int) -> int:
        """Drop the oldest rows (summaries, then alerts) holding about `needed_bytes`; return how many.

        Drops nothing when all rows together hold less than `at_least` bytes: that could not help.
        """
        db = self._connected_db()
        victims: list[tuple[int, int]] = []
        total = 0
        for rank in (1, 0):
            cur = db.execute("SELECT id, length(payload) FROM outbox WHERE rank = ? ORDER BY id", (rank,))
            for row_id, size in cur:
                victims.append((rank, row_id))
                total += int(size) + _ROW_OVERHEAD_BYTES
                if total >= needed_bytes:
                    break
            cur.close()
            if total >= needed_bytes:
                break
        if not victims or total < at_least:
            return 0
        pending = list(self._pending)
        dropped = list(self._dropped)
        for rank, _ in victims:
            pending[rank] -= 1
            dropped[rank] += 1
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for _, row_id in victims])
            self._store_dropped(dropped)
            db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        self._pending = pending
        self._dropped = dropped
        return len(victims)

    def ack(self, row_ids: Iterable[int]) -> None:
        """Delete delivered rows in one transaction; ids already gone (dropped, acked) are ignored."""
        ids = [int(i) for i in row_ids]
        if not ids:
            return
        with self._lock:
            self._check_open()
            for row_id in (i for i in ids if i < 0):
                entry = self._memory.pop(row_id, None)
                if entry is not None:
                    self._memory_bytes -= len(entry[1].payload)
                    self._pending[entry[0]] -= 1
            ids = [i for i in ids if i > 0]
            if not ids or self._db is None:
                return
            try:
                ranks = self._ack_once(ids)
            except sqlite3.Error as exc:
                self._rollback()
                if _is_disk_full(exc):
                    self._make_way()  # a delete needs room in the WAL too
                else:
                    problem = self._problem(exc)
                    if problem is None:
                        raise self._error("ack", exc) from exc
                    self._recover(problem)  # the fresh file has the rows that were readable
                    if self._db is None:
                        return
                try:
                    ranks = self._ack_once(ids)
                except sqlite3.Error as exc2:
                    self._rollback()
                    raise self._error("ack", exc2) from exc2
            self._pending = [self._pending[0] - ranks[0], self._pending[1] - ranks[1]]

    def _ack_once(self, ids: list[int]) -> list[int]:
        db = self._connected_db()
        self._set_synchronous("NORMAL")
        db.execute("BEGIN IMMEDIATE")
        ranks = [0, 0]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for (rank,) in db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING rank", chunk).fetchall():
                ranks[rank] += 1
        db.execute("COMMIT")
        return ranks

    # ------------------------------------------------------------------ reads

    def peek(self, limit: int, exclude: Container[int] = (), *,
             summary_bytes: int | None = None) -> list[tuple[int, OutboundMessage]]:
        """Up to `limit` pending rows not in `exclude` (those in flight): alerts first, each oldest
        first (rows held in memory, with negative ids, after those on disk).

        With `summary_bytes`, summaries are added only while their payload total is below it (the
        last one may cross it; 0 or less: no summaries), so a backlog of big summaries cannot fill
        the link ahead of a live alert. A damaged file found here is recovered and read again.
        """
        if limit <= 0:
            return []
        with self._lock:
            self._check_open()
            try:
                return self._peek_once(limit, exclude, summary_bytes)
            except sqlite3.Error as exc:
                problem = self._problem(exc)
                if problem is None:
                    raise self._error("read", exc) from exc
                self._recover(problem)
            try:
                return self._peek_once(limit, exclude, summary_bytes)
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc

    def _peek_once(self, limit: int, exclude: Container[int],
                   summary_bytes: int | None) -> list[tuple[int, OutboundMessage]]:
        budget = float("inf") if summary_bytes is None else summary_bytes
        chosen: list[int] = []
        for row_id, rank, size in self._candidates():
            if row_id in exclude:
                continue
            if rank == _RANK["summary"]:
                if budget <= 0:
                    break
                budget -= size
            chosen.append(row_id)
            if len(chosen) >= limit:
                break
        rows = self._fetch([i for i in chosen if i > 0]) if self._db is not None else {}
        rows.update({i: self._memory[i][1] for i in chosen if i < 0})
        return [(row_id, rows[row_id]) for row_id in chosen if row_id in rows]

    def _candidates(self) -> Iterator[tuple[int, int, int]]:
        """(id, rank, payload bytes) of every pending row in drain order: alerts on disk, alerts
        in memory, then summaries the same way."""
        for rank in (0, 1):
            if self._db is not None:
                cur = self._db.execute("SELECT id, length(payload) FROM outbox WHERE rank = ? ORDER BY id",
                                       (rank,))
                try:
                    for row_id, size in cur:
                        yield row_id, rank, size
                finally:
                    cur.close()
            for row_id, (r, message) in list(self._memory.items()):
                if r == rank:
                    yield row_id, rank, len(message.payload)

    def _fetch(self, ids: list[int]) -> dict[int, OutboundMessage]:
        out: dict[int, OutboundMessage] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row_id, rank, topic, payload in self._connected_db().execute(
                    f"SELECT id, rank, topic, payload FROM outbox WHERE id IN ({marks})", chunk):
                out[row_id] = OutboundMessage(topic, bytes(payload), _PRIORITY[rank])
        return out

    def load_state(self, key: str) -> bytes | None:
        """The state blob last stored under `key` by `append`, or None."""
        with self._lock:
            self._check_open()
            if key in self._memory_state:
                return self._memory_state[key]
            if self._db is None:
                return None
            try:
                row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                problem = self._problem(exc)
                if problem is None:
                    raise self._error("read state", exc) from exc
                self._recover(problem)
                return self._memory_state.get(key) if self._db is None else self._load_state_once(key)
        return None if row is None else bytes(row[0])

    def _load_state_once(self, key: str) -> bytes | None:
        with self._translated("read state"):
            row = self._connected_db().execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def counters(self) -> OutboxCounters:
        """Pending and dropped counts (kept in memory, no query) and the files' size on disk."""
        with self._lock:
            pending, dropped, in_memory = list(self._pending), list(self._dropped), len(self._memory)
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += self.path.with_name(self.path.name + suffix).stat().st_size
            except OSError:
                pass
        return OutboxCounters(pending_alerts=pending[0], pending_summaries=pending[1],
                              dropped_alerts=dropped[0], dropped_summaries=dropped[1],
                              bytes_on_disk=size, in_memory=in_memory)

    def close(self) -> None:
        """Write what memory holds to the file if it can, checkpoint and close; later calls
        raise OutboxError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._spilling():
                self._back_to_disk(now=True)
                if self._memory:
                    log.error("outbox %s: %d message(s) held in memory are lost: the file does not "
                              "take them", self.path, len(self._memory))
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("outbox %s: checkpoint on close failed: %s", self.path, exc)
            self._close_db()

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.path}: already closed")

    def _rollback(self) -> None:
        if self._db is not None and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("outbox %s: rollback failed: %s", self.path, exc)

    def _error(self, action: str, exc: sqlite3.Error) -> OutboxError:
        return OutboxError(f"outbox {self.path}: cannot {action}: {exc}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
