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
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Self

from edge_agent.backoff import LogThrottle, held_note
from edge_agent.errors import LifelineError

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
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('last_alert_seq', 0), ('dropped_alerts', 0), ('dropped_summaries', 0);
"""


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

    @property
    def pending(self) -> int:
        return self.pending_alerts + self.pending_summaries

    @property
    def dropped(self) -> int:
        return self.dropped_alerts + self.dropped_summaries


def _is_disk_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)


class Outbox:
    """A bounded FIFO per priority in one SQLite file; every method is safe to call from any thread."""

    def __init__(self, path: Path, *, max_messages: int, max_bytes: int | None = None) -> None:
        """Open or create the file (and its directory); raise OutboxError naming it if that fails.

        `max_messages` bounds the rows; `max_bytes` optionally caps the database file's size.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._synchronous = ""
        self._closed = False
        self._throttle = LogThrottle()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: cannot create its directory: {exc}") from exc
        with self._translated("open"):
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
        try:
            with self._translated("open"):
                self._open_schema(max_bytes)
        except OutboxError:
            self._db.close()
            raise

    # ------------------------------------------------------------------ setup

    def _open_schema(self, max_bytes: int | None) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"outbox {self.path}: cannot switch to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        self._set_synchronous("FULL")
        self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        if max_bytes is not None:
            db.execute(f"PRAGMA max_page_count={max(1, max_bytes // self._page_size)}")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise OutboxError(f"outbox {self.path}: schema version {version} was written by a newer "
                              f"lifeline (this one reads version {SCHEMA_VERSION}); move the file aside")
        db.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
        self._pending = [0, 0]
        for rank, count in db.execute("SELECT rank, COUNT(*) FROM outbox GROUP BY rank"):
            self._pending[rank] = count
        meta = dict(db.execute("SELECT key, value FROM meta"))
        self._last_alert_seq = int(meta["last_alert_seq"])
        self._dropped = [int(meta["dropped_alerts"]), int(meta["dropped_summaries"])]

    def _set_synchronous(self, level: Literal["FULL", "NORMAL"]) -> None:
        if self._synchronous != level:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

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
        """Store messages, the alert counter and opaque state blobs in one transaction, then enforce the bound."""
        with self._lock:
            self._check_open()
            try:
                self._append_once(messages, last_alert_seq, state)
            except sqlite3.Error as exc:
                self._rollback()
                if not _is_disk_full(exc):
                    raise self._error("append", exc) from exc
                batch = sum(len(m.payload) + len(m.topic) for m in messages)
                freed = self._free_space(2 * batch + _FULL_DISK_SLACK_PAGES * self._page_size,
                                         at_least=batch)
                held = self._throttle.allow("disk-full")
                if held is not None:
                    log.warning("outbox %s: disk full; dropped %d old message(s) to make room "
                                "(dropped so far: %d summaries, %d alerts)%s", self.path, freed,
                                self._dropped[1], self._dropped[0], held_note(held))
                try:
                    self._append_once(messages, last_alert_seq, state)
                except sqlite3.Error as exc2:
                    self._rollback()
                    raise self._error("append (after making room)", exc2) from exc2

    def _append_once(self, messages: Sequence[OutboundMessage], last_alert_seq: int | None,
                     state: Mapping[str, bytes] | None) -> None:
        db = self._db
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
        if dropped != self._dropped:
            self._store_dropped(dropped)
        db.execute("COMMIT")
        self._pending = pending
        self._dropped = dropped
        if last_alert_seq is not None:
            self._last_alert_seq = last_alert_seq

    def _delete_oldest(self, rank: int, *, count: int) -> int:
        cur = self._db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE rank = ? ORDER BY id LIMIT ?)",
            (rank, count))
        return max(cur.rowcount, 0)

    def _store_dropped(self, dropped: list[int]) -> None:
        self._db.executemany("UPDATE meta SET value = ? WHERE key = ?",
                             [(dropped[0], "dropped_alerts"), (dropped[1], "dropped_summaries")])

    def _free_space(self, needed_bytes: int, *, at_least: int) -> int:
        """Drop the oldest rows (summaries, then alerts) holding about `needed_bytes`; return how many.

        Drops nothing when all rows together hold less than `at_least` bytes: that could not help.
        """
        db = self._db
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
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error("make room on a full disk", exc) from exc
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
            db = self._db
            try:
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
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error("ack", exc) from exc
            self._pending = [self._pending[0] - ranks[0], self._pending[1] - ranks[1]]

    # ------------------------------------------------------------------ reads

    def peek(self, limit: int, exclude: Container[int] = (), *,
             summary_bytes: int | None = None) -> list[tuple[int, OutboundMessage]]:
        """Up to `limit` pending rows not in `exclude` (those in flight): alerts first, each oldest first.

        With `summary_bytes`, summaries are added only while their payload total is below it (the
        last one may cross it; 0 or less: no summaries), so a backlog of big summaries cannot fill
        the link ahead of a live alert.
        """
        if limit <= 0:
            return []
        budget = float("inf") if summary_bytes is None else summary_bytes
        with self._lock:
            self._check_open()
            try:
                ids: list[int] = []
                cur = self._db.execute("SELECT id, rank, length(payload) FROM outbox ORDER BY rank, id")
                for row_id, rank, size in cur:
                    if row_id in exclude:
                        continue
                    if rank == _RANK["summary"]:
                        if budget <= 0:
                            break
                        budget -= size
                    ids.append(row_id)
                    if len(ids) >= limit:
                        break
                cur.close()
                rows = self._fetch(ids)
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
        return [(row_id, rows[row_id]) for row_id in ids if row_id in rows]

    def _fetch(self, ids: list[int]) -> dict[int, OutboundMessage]:
        out: dict[int, OutboundMessage] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row_id, rank, topic, payload in self._db.execute(
                    f"SELECT id, rank, topic, payload FROM outbox WHERE id IN ({marks})", chunk):
                out[row_id] = OutboundMessage(topic, bytes(payload), _PRIORITY[rank])
        return out

    def load_state(self, key: str) -> bytes | None:
        """The state blob last stored under `key` by `append`, or None."""
        with self._lock:
            self._check_open()
            try:
                row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise self._error("read state", exc) from exc
        return None if row is None else bytes(row[0])

    def counters(self) -> OutboxCounters:
        """Pending and dropped counts (kept in memory, no query) and the files' size on disk."""
        with self._lock:
            pending, dropped = list(self._pending), list(self._dropped)
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += self.path.with_name(self.path.name + suffix).stat().st_size
            except OSError:
                pass
        return OutboxCounters(pending_alerts=pending[0], pending_summaries=pending[1],
                              dropped_alerts=dropped[0], dropped_summaries=dropped[1],
                              bytes_on_disk=size)

    def close(self) -> None:
        """Checkpoint and close the file; later calls raise OutboxError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("outbox %s: checkpoint on close failed: %s", self.path, exc)
            self._db.close()

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.path}: already closed")

    def _rollback(self) -> None:
        if self._db.in_transaction:
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

