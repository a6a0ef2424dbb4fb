"""Reading what is left of a damaged SQLite outbox: every row, counter and state blob SQLite can
still read, after the file was moved aside (a power cut on an SD card, a bad sector).

How: the 100-byte file header is rebuilt if it is garbage (SQLite then finds the pages again,
trying the usual page sizes); rows are read by rowid ranges, and a range that fails is split in
halves down to single rows, so one corrupted page costs only the rows on it (or, for an
interior page of the table, the rows below it). The index `outbox_by_rank` holds every row's id
apart from the table, so the ids it knows but the table cannot give back are counted as
unreadable. The stdlib has no `.recover`; this is the part of it an outbox needs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgpack

log = logging.getLogger(__name__)

#: SQLite error names that mean the file itself is damaged (not busy, not full, not permissions).
_DAMAGE_ERRORS: Final = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
#: Page sizes tried, most likely first, when the header is garbage.
_PAGE_SIZES: Final = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
_HEADER_SIZE: Final = 100
#: Single-row reads at most, when splitting failing ranges (bounds the time on a shredded file).
_MAX_PROBES: Final = 2_000_000
#: Highest row id tried when neither the table, its sequence nor the index knows the highest.
_FALLBACK_MAX_ID: Final = 1 << 31
SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether this SQLite error says the database file is damaged."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    return (name.startswith(_DAMAGE_ERRORS) or "malformed" in text or "not a database" in text
            or "file is encrypted" in text)


def integrity_problem(db: sqlite3.Connection) -> str | None:
    """None if `PRAGMA quick_check` passes, else its first complaint (or the error it raised)."""
    try:
        rows = db.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.Error as exc:
        return str(exc)
    complaints = [str(r[0]) for r in rows if str(r[0]) != "ok"]
    return "; ".join(complaints) if complaints else None


def damaged_name(path: Path, at: float) -> Path:
    """Where a damaged `path` goes: beside it, named after the time (UTC) it was found."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))
    candidate = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    return candidate


def move_aside(path: Path, target: Path) -> None:
    """Rename `path` and its WAL, shared-memory and journal files to `target` (+ the same suffixes)."""
    os.replace(path, target)
    for suffix in SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))


@dataclass
class SalvagedRow:
    """One outbox row as read back."""

    row_id: int
    rank: int
    topic: str
    payload: bytes


@dataclass
class Salvage:
    """What could be read from a damaged outbox."""

    rows: list[SalvagedRow] = field(default_factory=list)
    meta: dict[str, int] = field(default_factory=dict)
    state: dict[str, bytes] = field(default_factory=dict)
    #: Earlier damage records kept in the file (see `Outbox`): (at ms, file, cause, alerts, summaries, unreadable).
    damage: list[tuple[int, str, str, int, int, int | None]] = field(default_factory=list)
    #: The highest row id the file knew of (its AUTOINCREMENT sequence), 0 if unknown.
    max_id: int = 0
    #: Rows the index knows of that could not be read; None if the index is unreadable too.
    unreadable: int | None = 0
    header_rebuilt: bool = False
    #: Why nothing at all could be read (the schema is gone), else "".
    hopeless: str = ""

    @property
    def alerts(self) -> int:
        return sum(1 for r in self.rows if r.rank == 0)

    @property
    def summaries(self) -> int:
        return sum(1 for r in self.rows if r.rank == 1)

    def last_alert_seq(self) -> int:
        """The highest alert `seq` known: the counter, else the highest in the alerts read."""
        seq = self.meta.get("last_alert_seq", 0)
        for row in self.rows:
            if row.rank == 0:
                seq = max(seq, _alert_seq(row.payload))
        return seq


def _alert_seq(payload: bytes) -> int:
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 (a damaged payload has no seq to offer)
        return 0
    seq = message.get("seq") if isinstance(message, dict) else None
    return seq if isinstance(seq, int) and seq > 0 else 0


def read_damaged(path: Path) -> Salvage:
    """Everything readable in the (moved-aside) outbox at `path`; never raises for damage."""
    if path.stat().st_size == 0 and not path.with_name(path.name + "-wal").exists():
        return Salvage()
    salvage = Salvage()
    db = _open_readable(path, salvage)
    if db is None:
        return salvage
    with closing(db):
        salvage.meta = _read_pairs(db, "SELECT key, value FROM meta", int)
        salvage.state = _read_state(db)
        salvage.damage = _read_damage(db)
        known = _index_ids(db)
        salvage.max_id = max([_one(db, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"),
                              _one(db, "SELECT max(id) FROM outbox"), max(known or {0})])
        salvage.rows = sorted(_read_rows(db, salvage.max_id or _FALLBACK_MAX_ID), key=lambda r: r.row_id)
        read = {r.row_id for r in salvage.rows}
        salvage.unreadable = None if known is None else len(known - read)
        salvage.max_id = max(salvage.max_id, max(read or {0}))
    return salvage


def _open_readable(path: Path, salvage: Salvage) -> sqlite3.Connection | None:
    """A connection that can read the schema, rebuilding a garbage header if that is what it takes."""
    db = _try_schema(path)
    if db is not None:
        return db
    with open(path, "rb") as f:
        header = f.read(_HEADER_SIZE)
    size = path.stat().st_size
    for page_size in _PAGE_SIZES:
        if size < page_size:
            continue
        try:
            _write_header(path, _fresh_header(page_size, size // page_size))
        except OSError as exc:
            salvage.hopeless = f"cannot rebuild its header: {exc}"
            return None
        db = _try_schema(path)
        if db is not None:
            salvage.header_rebuilt = True
            return db
    try:
        _write_header(path, header)  # leave the file as it was found
    except OSError:
        pass
    salvage.hopeless = "its schema cannot be read, even with a rebuilt header"
    return None


def _try_schema(path: Path) -> sqlite3.Connection | None:
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        names = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    except sqlite3.Error:
        db.close()
        return None
    if "outbox" not in names:
        db.close()
        return None
    return db


def _fresh_header(page_size: int, pages: int) -> bytes:
    """The header of an empty outbox-like database with this page size, claiming `pages` pages."""
    with tempfile.TemporaryDirectory(prefix="lifeline-salvage-") as tmp:
        probe = Path(tmp) / "probe.sqlite"
        with closing(sqlite3.connect(probe, isolation_level=None)) as db:
            db.execute(f"PRAGMA page_size={page_size}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE t (x)")
            db.execute("PRAGMA user_version=1")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        header = bytearray(probe.read_bytes()[:_HEADER_SIZE])
    struct.pack_into(">I", header, 28, pages)      # database size in pages
    struct.pack_into(">I", header, 24, 1)          # change counter ...
    struct.pack_into(">I", header, 92, 1)          # ... the size is valid for
    struct.pack_into(">II", header, 32, 0, 0)      # no freelist (its pages are unknown)
    struct.pack_into(">I", header, 40, 1)          # schema cookie
    return bytes(header)


def _write_header(path: Path, header: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(header)
        f.flush()
        os.fsync(f.fileno())


def _one(db: sqlite3.Connection, sql: str) -> int:
    try:
        row = db.execute(sql).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row and row[0] is not None else 0


def _read_pairs(db: sqlite3.Connection, sql: str, kind: type[int]) -> dict[str, int]:
    try:
        return {str(k): kind(v) for k, v in db.execute(sql).fetchall()}
    except (sqlite3.Error, TypeError, ValueError):
        return {}


def _read_state(db: sqlite3.Connection) -> dict[str, bytes]:
    """Each state blob on its own, so one on a bad page does not take the others along."""
    try:
        keys = [str(k) for (k,) in db.execute("SELECT key FROM state").fetchall()]
    except sqlite3.Error:
        return {}
    out = {}
    for key in keys:
        try:
            row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            continue
        if row is not None and isinstance(row[0], bytes):
            out[key] = bytes(row[0])
    return out


def _read_damage(db: sqlite3.Connection) -> list[tuple[int, str, str, int, int, int | None]]:
    try:
        rows = db.execute("SELECT at_ms, file, cause, saved_alerts, saved_summaries, unreadable "
                          "FROM damage ORDER BY at_ms").fetchall()
    except sqlite3.Error:
        return []
    return [(int(a), str(f), str(c), int(sa), int(ss), None if u is None else int(u))
            for a, f, c, sa, ss, u in rows]


def _index_ids(db: sqlite3.Connection) -> set[int] | None:
    """Every row id the rank index holds (it is a b-tree of its own), or None if unreadable."""
    try:
        return {int(i) for (i,) in db.execute(
            "SELECT id FROM outbox INDEXED BY outbox_by_rank WHERE rank >= 0").fetchall()}
    except sqlite3.Error:
        return None


def _read_rows(db: sqlite3.Connection, max_id: int) -> Iterator[SalvagedRow]:
    """Rows 1..max_id by rowid ranges; a failing range is split until single rows fail alone."""
    probes = 0
    pending = [(1, max_id)]
    while pending:
        lo, hi = pending.pop()
        try:
            rows = db.execute("SELECT id, rank, topic, payload FROM outbox WHERE id BETWEEN ? AND ? "
                              "ORDER BY id", (lo, hi)).fetchall()
        except sqlite3.Error:
            if lo == hi:
                probes += 1
                if probes >= _MAX_PROBES:
                    log.warning("salvage: stopped probing single rows after %d failures", probes)
                    return
                continue
            mid = (lo + hi) // 2
            pending += [(mid + 1, hi), (lo, mid)]  # lower ids first
            continue
        for row_id, rank, topic, payload in rows:
            if rank in (0, 1) and isinstance(topic, str) and isinstance(payload, bytes) \
                    and _is_message(payload):
                yield SalvagedRow(int(row_id), int(rank), topic, bytes(payload))


def _is_message(payload: bytes) -> bool:
    """Whether a payload still decodes as one MessagePack map (bytes of a damaged page that
    SQLite did not notice do not): only those are worth sending."""
    try:
        return isinstance(msgpack.unpackb(payload, raw=False, strict_map_key=False), dict)
    except Exception:  # noqa: BLE001 (msgpack raises many types for garbage)
        return False
