"""The gateway's durable state: one SQLite file with the registry's trusted facts and dead letters.

- Registry: the agents heard on their own status or summary topics and the owner of each sensor,
  so a restarted gateway knows every agent and owner it knew (a backlog re-sent before the
  retained statuses is not "unknown" again).
- Dead letters: every message the gateway takes off the broker but does not store (a payload
  that breaks the contract, an alert whose agent the registry contradicts, a time beyond the
  clock, a row the store refuses), with its topic, payload, reason and the reason's detail. A
  message is acknowledged to the broker only after its dead-letter row is committed, so nothing
  leaves the broker without a trace. The rows are bounded by a byte budget: the oldest go first,
  and each eviction is counted.

Writes are buffered and committed together (`commit`, once per worker round at most every
`COMMIT_EVERY_S`), in WAL mode with `synchronous=FULL`: one fsync per commit, not per message.
Only the gateway's worker thread uses an instance.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lifeline.errors import LifelineError

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
#: Longest payload kept whole in a dead-letter row; a longer one is cut (and says so).
MAX_PAYLOAD_BYTES: Final = 1024 * 1024
#: Fixed cost counted per dead-letter row on top of its payload and detail (keys, index).
ROW_OVERHEAD_BYTES: Final = 64

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agent (
    agent TEXT PRIMARY KEY,
    district TEXT NOT NULL,
    township TEXT NOT NULL,
    state TEXT NOT NULL,
    status_ts INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS owner (
    sensor TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    since_t1 INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    detail TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_reason ON dead_letter (reason);
"""


class StateError(LifelineError):
    """The gateway's state file cannot be opened or written; the message names the file."""


class DeadLetterReason(enum.Enum):
    """Why a message went to the dead-letter file instead of the store."""

    #: Not MessagePack, a missing or mistyped key, a topic that does not match the payload.
    BAD_PAYLOAD = "bad_payload"
    #: An alert naming another agent than the sensor's owner.
    WRONG_OWNER = "wrong_owner"
    #: An alert naming an agent off `gateway.agents`.
    NOT_ALLOWED = "not_allowed"
    #: An alert naming an agent that sent no status or summary in time.
    UNKNOWN_AGENT = "unknown_agent"
    #: A time further ahead of the gateway's clock than `gateway.clock_skew_s`.
    FUTURE_TIMESTAMP = "future_timestamp"
    #: A line-protocol row the store refused (HTTP 400/422, or too large alone).
    STORE_REJECTED = "store_rejected"
    #: The gateway failed on the message (a bug): kept so it can be replayed once fixed.
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class AgentRow:
    """An agent as the state file remembers it."""

    agent: str
    district: str
    township: str
    state: str
    status_ts: int
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """A sensor's owner: since when (gateway clock) and the window end that made it owner."""

    sensor: str
    agent: str
    since_ms: int
    since_t1: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter row read back."""

    id: int
    at_ms: int
    reason: str
    topic: str
    payload: bytes
    detail: str


class GatewayState:
    """The state file (or `":memory:"` for tests): buffered writes, committed by `commit()`."""

    def __init__(self, path: Path | str, *, dead_letter_max_bytes: int = 256 * 1024 * 1024) -> None:
        self.path = str(path)
        self.dead_letter_max_bytes = dead_letter_max_bytes
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(
                    f"gateway.state_dir: cannot create {Path(self.path).parent}: "
                    f"{exc.strerror or exc}"
                ) from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            self.dead_letter_bytes, self.dead_letter_rows = self._db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM dead_letter"
            ).fetchone()
            row = self._db.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"gateway.state_dir: cannot use {self.path}: {exc}") from None
        #: Dead-letter rows removed by the byte budget, over the life of the file.
        self.evicted = int(row[0]) if row else 0
        self._agents: dict[str, AgentRow | None] = {}  # None: forget the agent
        self._owners: dict[str, OwnerRow | None] = {}  # None: the sensor has no owner any more
        self._letters: list[tuple[int, str, str, bytes, str, int]] = []

    # ------------------------------------------------------------------ reading at start

    def agents(self) -> list[AgentRow]:
        """Every agent remembered."""
        rows = self._db.execute(
            "SELECT agent, district, township, state, status_ts, last_seen_ms FROM agent"
        ).fetchall()
        return [AgentRow(*row) for row in rows]

    def owners(self) -> list[OwnerRow]:
        """Every sensor owner remembered."""
        rows = self._db.execute("SELECT sensor, agent, since_ms, since_t1 FROM owner").fetchall()
        return [OwnerRow(*row) for row in rows]

    def dead_letters(self, *, reason: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """Dead-letter rows, oldest first (for operators and tests)."""
        query = "SELECT id, at_ms, reason, topic, payload, detail FROM dead_letter"
        args: tuple[object, ...] = ()
        if reason is not None:
            query += " WHERE reason = ?"
            args = (reason,)
        rows = self._db.execute(query + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead-letter rows held, by reason."""
        rows = self._db.execute("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason")
        return {reason: count for reason, count in rows}

    # ------------------------------------------------------------------ buffered writes

    def save_agent(self, row: AgentRow) -> None:
        self._agents[row.agent] = row

    def forget_agent(self, agent: str) -> None:
        self._agents[agent] = None

    def save_owner(self, row: OwnerRow) -> None:
        self._owners[row.sensor] = row

    def drop_owner(self, sensor: str) -> None:
        self._owners[sensor] = None

    def dead_letter(
        self, reason: DeadLetterReason, topic: str, payload: bytes, detail: str, at_ms: int
    ) -> None:
        """Add a dead-letter row (written by the next `commit`)."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            detail = f"{detail} [payload of {len(payload)} bytes cut to {MAX_PAYLOAD_BYTES}]"
            payload = payload[:MAX_PAYLOAD_BYTES]
        size = len(payload) + len(topic) + len(detail) + ROW_OVERHEAD_BYTES
        self._letters.append((at_ms, reason.value, topic, payload, detail, size))

    @property
    def pending(self) -> bool:
        """Something waits for `commit`."""
        return bool(self._letters or self._agents or self._owners)

    def commit(self) -> int:
        """Write everything buffered in one transaction; returns the dead-letter rows written.

        On failure (disk full, I/O error) nothing is lost from the buffer: raise StateError and
        keep it for the next attempt.
        """
        if not self.pending:
            return 0
        letters = self._letters
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for agent, arow in self._agents.items():
                    if arow is None:
                        db.execute("DELETE FROM agent WHERE agent = ?", (agent,))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO agent VALUES (?, ?, ?, ?, ?, ?)",
                            (arow.agent, arow.district, arow.township, arow.state,
                             arow.status_ts, arow.last_seen_ms),
                        )
                for sensor, orow in self._owners.items():
                    if orow is None:
                        db.execute("DELETE FROM owner WHERE sensor = ?", (sensor,))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO owner VALUES (?, ?, ?, ?)",
                            (orow.sensor, orow.agent, orow.since_ms, orow.since_t1),
                        )
                db.executemany(
                    "INSERT INTO dead_letter (at_ms, reason, topic, payload, detail, size) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    letters,
                )
                added = sum(letter[5] for letter in letters)
                evicted, freed = self._evict(self.dead_letter_bytes + added)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the gateway state {self.path}: {exc}") from None
        self.dead_letter_bytes += added - freed
        self.dead_letter_rows += len(letters) - evicted
        self.evicted += evicted
        self._agents = {}
        self._owners = {}
        self._letters = []
        if evicted:
            log.warning(
                "dead-letter file over its budget of %d MiB: removed the %d oldest row(s) "
                "(%d removed in all)",
                self.dead_letter_max_bytes // (1024 * 1024),
                evicted,
                self.evicted,
            )
        return len(letters)

    def _evict(self, total: int) -> tuple[int, int]:
        """Delete the oldest dead letters until `total` bytes fit the budget (in the open
        transaction); returns (rows, bytes) removed."""
        if total <= self.dead_letter_max_bytes:
            return 0, 0
        rows = freed = 0
        last_id = 0
        cursor = self._db.execute("SELECT id, size FROM dead_letter ORDER BY id")
        for row_id, size in cursor:
            if total - freed <= self.dead_letter_max_bytes:
                break
            freed += size
            rows += 1
            last_id = row_id
        cursor.close()
        if rows:
            self._db.execute("DELETE FROM dead_letter WHERE id <= ?", (last_id,))
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('evicted', ?)",
                (self.evicted + rows,),
            )
        return rows, freed

    def close(self) -> None:
        """Commit what is buffered (best effort) and close the file."""
        try:
            self.commit()
        except StateError as exc:
            log.error("%s; the last dead letters and registry changes are not saved", exc)
        self._db.close()


def now_ms() -> int:
    """Wall-clock Unix time in milliseconds."""
    return time.time_ns() // 1_000_000
