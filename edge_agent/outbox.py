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
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Self

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

    def __init__(self, path: Path, *, max_messages: int, max_bytes: int | None = None,
                 reserve_bytes: int = 0) -> None:
        """Open or create the file (and its directory); raise OutboxError naming it if that fails.

        `max_messages` bounds the rows; `max_bytes` optionally caps the database file's size;
        `reserve_bytes` (0: none) is the disk space held back for a full disk (`<path>-reserve`).
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
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
        if reserve_bytes > 0 and not self._refill_reserve():
            log.warning("outbox %s: no room for its %d-byte reserve; the disk is (nearly) full",
                        self.path, reserve_bytes)

    # ------------------------------------------------------------------ setup

    def _open_schema(self, max_bytes: int | None) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"outbox {self.path}: cannot switch to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
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
                batch = (sum(len(m.payload) + len(m.topic) for m in messages)
                         + sum(len(v) for v in (state or {}).values()))
                released = self._make_way()
                if self._reserve_bytes > 0 and self._full_limit is None:
                    # what the disk held (and half the released reserve) is the budget from now on
                    self._full_limit = max(self._stored_bytes(), self._reserve_bytes // 2)
                freed = self._free_space(2 * batch + _FULL_DISK_SLACK_PAGES * self._page_size,
                                         at_least=batch)
                self._checkpoint()
                held = self._throttle.allow("disk-full")
                if held is not None:
                    log.warning("outbox %s: disk full; %sdropped %d old message(s) to make room and "
                                "holds at most %s until the disk has room (dropped so far: %d "
                                "summaries, %d alerts)%s", self.path,
                                "released the reserve, " if released else "", freed,
                                f"{self._full_limit} payload bytes" if self._full_limit else "what fits",
                                self._dropped[1],
                                self._dropped[0], held_note(held))
                try:
                    self._append_once(messages, last_alert_seq, state)
                except sqlite3.Error as exc2:
                    self._rollback()
                    raise self._error("append (after making room)", exc2) from exc2
            else:
                self._maybe_refill_reserve()

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
        if self._full_limit is not None:
            self._hold_bytes(self._full_limit, pending, dropped)
        if dropped != self._dropped:
            self._store_dropped(dropped)
        db.execute("COMMIT")
        self._pending = pending
        self._dropped = dropped
        if last_alert_seq is not None:
            self._last_alert_seq = last_alert_seq

    def _stored_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM outbox").fetchone()[0])

    def _hold_bytes(self, limit: int, pending: list[int], dropped: list[int]) -> None:
        """Within a transaction: drop the oldest summaries, then alerts, until the payloads hold at
        most `limit` bytes (on a full disk: new rows then reuse the pages of dropped ones)."""
        excess = self._stored_bytes() - limit
        for rank in (1, 0):
            if excess <= 0:
                return
            victims: list[int] = []
            cur = self._db.execute("SELECT id, length(payload) FROM outbox WHERE rank = ? ORDER BY id",
                                   (rank,))
            for row_id, size in cur:
                if excess <= 0:
                    break
                victims.append(row_id)
                excess -= int(size)
            cur.close()
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(v,) for v in victims])
            pending[rank] -= len(victims)
            dropped[rank] += len(victims)

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
            try:
                ranks = self._ack_once(ids)
            except sqlite3.Error as exc:
                self._rollback()
                if not _is_disk_full(exc):
                    raise self._error("ack", exc) from exc
                self._make_way()  # a delete needs room in the WAL too
                try:
                    ranks = self._ack_once(ids)
                except sqlite3.Error as exc2:
                    self._rollback()
                    raise self._error("ack", exc2) from exc2
            self._pending = [self._pending[0] - ranks[0], self._pending[1] - ranks[1]]

    def _ack_once(self, ids: list[int]) -> list[int]:
        db = self._db
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

