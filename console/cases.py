"""Cases: an alert's whole life from raise to review, kept in the console's database.

An alert of a (sensor, rule) with no case that is not closed opens one; its later level changes
(and its clear, level 0) belong to that case. A clear only marks the alert cleared: the case
stays open until an operator closes it (closed loop). Alerts are de-duplicated by `id`, so the
ops topic's at-least-once delivery (and several tiers' copies) adds each alert once.

Operator steps (acknowledge, assign, escalate, note, photo, resolve, close, reopen, review) are
checked against the case's state and version in one transaction: two operators acting on one
case at once get one success and one clear refusal, never a lost step. Each step is a row of
`case_events` (who, when, what), which the console publishes on `P/case/{district}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from console.areas import TIER_RANK, Area, may_act, next_tier, sees
from console.auth import User, now_ms
from console.db import Database
from console.schema import alerts, case_events, cases, sensor_levels, sensors
from lifeline.contract import Alert, domain_of
from lifeline.contract.kinds import TIER_MIN_LEVEL, TIERS
from lifeline.errors import LifelineError

#: Rules that say the sensor (or its link, or the agent's store) is broken, not the world.
FAULT_RULES: Final = frozenset({"gap", "flatline", "spike", "range", "drift", "outbox"})
STATES: Final = ("new", "acknowledged", "dispatched", "resolved", "closed")
#: Steps an operator can take, and the text each needs.
ACTIONS: Final = ("acknowledge", "assign", "escalate", "note", "photo", "resolve", "close",
                  "reopen", "review")
#: Steps only a supervisor may take.
SUPERVISOR_ACTIONS: Final = frozenset({"reopen", "review"})
MAX_REF_CHARS: Final = 500
SYSTEM: Final = "system"


class CaseError(LifelineError):
    """A case step that cannot be done; `status` is the HTTP status it maps to."""

    status = 400


class CaseNotFound(CaseError):
    status = 404


class CaseForbidden(CaseError):
    status = 403


class CaseConflict(CaseError):
    """The case is not in a state that allows the step (or changed since the form was loaded)."""

    status = 409


class CaseInvalid(CaseError):
    status = 422


def is_fault(alert: Alert) -> bool:
    """Whether an alert is a sensor fault (maintenance list) rather than an event."""
    return alert.rule in FAULT_RULES or bool(alert.extra and alert.extra.get("fault") is True)


def _open_key(sensor: str, rule: str) -> str:
    return f"{sensor} {rule}"


def case_view(row: Any) -> dict[str, Any]:
    """A case row as the JSON the board and the API send."""
    out = dict(row._mapping)
    out.pop("open_key", None)
    out["alert_cleared"] = bool(out["alert_cleared"])
    value = out.get("value")
    if isinstance(value, float) and not math.isfinite(value):
        out["value"] = None  # JSON has no NaN (a `range` fault may carry one)
    return out


@dataclass
class IngestResult:
    """What a batch of alerts did: the cases it touched (ids) and how many were new or repeats."""

    case_ids: set[int] = field(default_factory=set)
    #: The touched cases as they are after the batch (for the live feed).
    rows: list[Any] = field(default_factory=list)
    new_cases: int = 0
    duplicates: int = 0
    alerts: int = 0


def visible(area: Area) -> ColumnElement[bool]:
    """SQL condition: the case lies in `area` and its level or escalation reaches the area's tier."""
    rank = TIER_RANK[area.tier]
    tier_ok = or_(cases.c.max_level >= TIER_MIN_LEVEL[area.tier], cases.c.tier.in_(TIERS[rank:]))
    conds: list[ColumnElement[bool]] = [tier_ok]
    if area.district:
        conds.append(cases.c.district == area.district)
    if area.township:
        conds.append(cases.c.township == area.township)
    return and_(*conds)


#: Case columns an alert of the case changes (written back in one statement per batch).
_FOLLOWED: Final = ("level", "max_level", "value", "limit", "last_ts", "updated_at", "alert_cleared", "cleared_at",
                    "deadline_at")

#: Board order: alerts still active first, then by level (highest first), then oldest first.
BOARD_ORDER = (cases.c.alert_cleared.asc(), cases.c.level.desc(), cases.c.opened_at.asc(), cases.c.id.asc())


class CaseStore:
    """Cases, their alerts and events in the database; every method is one transaction."""

    def __init__(self, db: Database, *, origin: str, ack_seconds: Sequence[float],
                 max_text_chars: int = 4000) -> None:
        self.db = db
        self.origin = origin
        self.ack_ms = [int(s * 1000) for s in ack_seconds]
        self.max_text = max_text_chars
        self._q: _Statements | None = None
        #: sensor -> (kind, site, township, district, agent) last written, to skip unchanged upserts.
        self._sensor_meta: dict[str, tuple[str, ...]] = {}

    def _deadline(self, start_ms: int, level: int) -> int:
        return start_ms + self.ack_ms[min(max(level, 1), 4) - 1]

    # ------------------------------------------------------------------ alerts in

    def ingest(self, batch: Iterable[Alert], received_ms: int | None = None) -> IngestResult:
        """Apply alerts (in arrival order) in one transaction, in a fixed number of statements
        per batch rather than per alert (each statement is a round trip to PostgreSQL)."""
        now = received_ms if received_ms is not None else now_ms()
        result = IngestResult()
        alerts_in = list(batch)
        result.alerts = len(alerts_in)
        if not alerts_in:
            return result
        with self.db.write() as conn:
            fresh = self._new_alerts(conn, alerts_in, now, result)
            if fresh:
                self._note_sensors(conn, fresh, now)
                self._apply(conn, fresh, now, result)
            wanted = sorted(result.case_ids)
            for i in range(0, len(wanted), 500):
                result.rows.extend(conn.execute(select(cases).where(cases.c.id.in_(wanted[i:i + 500]))).all())
        return result

    def _new_alerts(self, conn: Connection, batch: list[Alert], now: int, result: IngestResult) -> list[Alert]:
        """Store the batch's alerts once each; returns those not seen before, in order."""
        q = self._statements(conn)
        rows, seen = [], set()
        for a in batch:
            if a.id in seen:
                continue
            seen.add(a.id)
            rows.append({"id": a.id, "case_id": None, "agent": a.agent, "sensor": a.sensor, "rule": a.rule,
                         "district": a.district, "township": a.township, "level": a.level, "prev": a.prev,
                         "value": a.value, "limit": a.limit, "ts": a.ts, "seq": a.seq, "received_at": now,
                         "extra": json.dumps(a.extra, default=str)[:4000] if a.extra else None})
        inserted = set(conn.execute(q.insert_alert, rows).scalars())
        result.duplicates = len(batch) - len(inserted)
        repeated = [r["id"] for r in rows if r["id"] not in inserted]
        for i in range(0, len(repeated), 500):  # another instance may have applied them: show their cases
            for case_id in conn.execute(select(alerts.c.case_id).where(alerts.c.id.in_(repeated[i:i + 500]))).scalars():
                if case_id is not None:
                    result.case_ids.add(int(case_id))
        done: set[str] = set()
        out = []
        for a in batch:
            if a.id in inserted and a.id not in done:
                done.add(a.id)
                out.append(a)
        return out

    def _note_sensors(self, conn: Connection, fresh: list[Alert], now: int) -> None:
        """The sensors' place (when it changed) and their newest level per rule."""
        q = self._statements(conn)
        meta_rows = {}
        for a in fresh:
            meta = (a.kind, a.site, a.township, a.district, a.agent)
            if self._sensor_meta.get(a.sensor) != meta:
                meta_rows[a.sensor] = {"sensor": a.sensor, "kind": a.kind, "site": a.site, "township": a.township,
                                       "district": a.district, "agent": a.agent, "updated_at": now}
                self._sensor_meta[a.sensor] = meta
        if meta_rows:
            conn.execute(q.upsert_sensor, list(meta_rows.values()))
        newest: dict[tuple[str, str], Alert] = {}
        for a in fresh:
            key = (a.sensor, a.rule)
            if key not in newest or a.ts >= newest[key].ts:
                newest[key] = a
        conn.execute(q.upsert_level, [{"sensor": a.sensor, "rule": a.rule, "level": a.level, "value": a.value,
                                       "limit": a.limit, "ts": a.ts} for a in newest.values()])

    def _apply(self, conn: Connection, fresh: list[Alert], now: int, result: IngestResult) -> None:
        """Open, follow and clear cases for the new alerts; write the changes in a few statements."""
        q = self._statements(conn)
        keys = sorted({_open_key(a.sensor, a.rule) for a in fresh})
        open_rows: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            for row in conn.execute(select(cases).where(cases.c.open_key.in_(keys[i:i + 500]))):
                open_rows[row.open_key] = dict(row._mapping)
        openers: dict[str, Alert] = {}
        for a in fresh:  # the first raise of a (sensor, rule) with no open case opens one
            key = _open_key(a.sensor, a.rule)
            if key not in open_rows and key not in openers and a.level > 0:
                openers[key] = a
        if openers:
            values = [self._case_values(a, key, now) for key, a in openers.items()]
            for row in conn.execute(q.insert_case, values).all():
                open_rows[row.open_key] = dict(row._mapping)
                result.new_cases += 1
            missing = [k for k in openers if k not in open_rows]  # opened by another instance just now
            if missing:
                for row in conn.execute(select(cases).where(cases.c.open_key.in_(missing))):
                    open_rows[row.open_key] = dict(row._mapping)
        events: list[dict[str, Any]] = []
        changed: dict[int, dict[str, Any]] = {}
        links: list[dict[str, Any]] = []
        for a in fresh:
            key = _open_key(a.sensor, a.rule)
            row = open_rows.get(key)
            if row is None:  # a clear with no open case: note it on the last closed one
                last = self._after_close(conn, a, now)
                if last is not None:
                    links.append({"aid": a.id, "cid": last})
                    result.case_ids.add(last)
                continue
            case_id = int(row["id"])
            links.append({"aid": a.id, "cid": case_id})
            result.case_ids.add(case_id)
            if row["first_alert"] == a.id:
                events.append(self._event_row(case_id, now, SYSTEM, "raised", {
                    "alert": a.id, "level": a.level, "value": a.value, "limit": a.limit, "ts": a.ts}))
                continue
            detail = {"alert": a.id, "level": a.level, "prev": a.prev, "value": a.value, "limit": a.limit}
            if a.ts < row["last_ts"]:  # an older alert arriving late: history only
                events.append(self._event_row(case_id, now, SYSTEM, "late_alert", detail))
                continue
            self._follow(row, a, now)
            changed[case_id] = row
            events.append(self._event_row(case_id, now, SYSTEM, "cleared" if a.level == 0 else "level", detail))
        if changed:
            conn.execute(q.update_case, [{"cid": cid, **{f"new_{c}": r[c] for c in _FOLLOWED}}
                                         for cid, r in changed.items()])
        if links:
            conn.execute(q.set_alert_case, links)
        if events:
            conn.execute(q.insert_event, events)

    def _case_values(self, a: Alert, key: str, now: int) -> dict[str, Any]:
        return {
            "open_key": key, "sensor": a.sensor, "rule": a.rule, "kind": a.kind, "domain": domain_of(a.kind),
            "agent": a.agent, "site": a.site, "township": a.township, "district": a.district,
            "category": "fault" if is_fault(a) else "event", "state": "new", "level": a.level,
            "max_level": a.level, "value": a.value, "limit": a.limit, "first_alert": a.id,
            "raised_ts": a.ts, "opened_at": now, "last_ts": a.ts, "updated_at": now, "alert_cleared": False,
            "tier": "township", "deadline_at": self._deadline(now, a.level), "version": 1,
        }

    def _follow(self, row: dict[str, Any], a: Alert, now: int) -> None:
        """A later level of the case's (sensor, rule): level, value, cleared, highest level, deadline."""
        row.update(level=a.level, value=a.value, last_ts=a.ts, updated_at=now)
        if a.limit is not None:
            row["limit"] = a.limit
        if a.level == 0:
            row.update(alert_cleared=True, cleared_at=now)
        else:
            row.update(alert_cleared=False, cleared_at=None)
        if a.level > row["max_level"]:
            row["max_level"] = a.level
            if row["state"] == "new" and row["deadline_at"] is not None:
                start = row["escalated_at"] or row["opened_at"]
                row["deadline_at"] = min(row["deadline_at"], self._deadline(start, a.level))

    def _after_close(self, conn: Connection, a: Alert, now: int) -> int | None:
        """A clear arriving after its case was closed: mark the last case's alert cleared (rare)."""
        last = conn.execute(select(cases.c.id).where(cases.c.sensor == a.sensor, cases.c.rule == a.rule)
                            .order_by(cases.c.id.desc()).limit(1)).scalar()
        if last is None:
            return None
        conn.execute(update(cases).where(cases.c.id == last, cases.c.alert_cleared.is_(False))
                     .values(alert_cleared=True, cleared_at=now, level=0))
        self._event(conn, last, now, SYSTEM, "cleared", {"alert": a.id, "value": a.value, "after_close": True})
        return int(last)

    def _statements(self, conn: Connection) -> _Statements:
        """The ingest path's statements, built once (building them per alert costs more than running them)."""
        if self._q is None:
            self._q = _Statements(conn.dialect.name)
        return self._q

    def _event(self, conn: Connection, case_id: int, at: int, actor: str, action: str,
               detail: dict[str, Any]) -> None:
        conn.execute(self._statements(conn).insert_event, self._event_row(case_id, at, actor, action, detail))

    def _event_row(self, case_id: int, at: int, actor: str, action: str, detail: dict[str, Any]) -> dict[str, Any]:
        return {"case_id": case_id, "at": at, "actor": actor, "action": action,
                "detail": json.dumps(detail, default=str), "origin": self.origin, "published": False}

    # ------------------------------------------------------------------ operator steps

    def act(self, user: User, case_id: int, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """Do one step on a case for `user`; returns the case after it. CaseError says why not."""
        if action not in ACTIONS:
            raise CaseInvalid(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if not may_act(user.role):
            raise CaseForbidden(f"{user.username} is a {user.role}: viewers cannot change cases")
        if action in SUPERVISOR_ACTIONS and user.role != "supervisor":
            raise CaseForbidden(f"only a supervisor may {action} a case")
        texts = self._texts(action, params)
        now = now_ms()
        with self.db.write() as conn:
            query = select(cases).where(cases.c.id == case_id)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None or not _sees(user.area, row):
                raise CaseNotFound(f"case {case_id} does not exist or is outside your area ({user.area})")
            self._check_version(row, params)
            values, detail = self._step(row, user, action, texts, now)
            if values:
                values.update(version=row.version + 1, updated_at=now)
                conn.execute(update(cases).where(cases.c.id == case_id).values(**values))
            self._event(conn, case_id, now, user.username, action, detail)
            out = conn.execute(select(cases).where(cases.c.id == case_id)).first()
        return case_view(out)

    def _texts(self, action: str, params: dict[str, Any]) -> dict[str, str]:
        """The text fields the step needs, checked for presence and length."""
        need = {"assign": ("crew",), "escalate": ("reason",), "note": ("text",), "photo": ("ref",),
                "resolve": ("report",), "close": ("cause",), "reopen": ("reason",), "review": ("text",)}
        optional = {"assign": ("text",), "close": ("text",), "acknowledge": ("text",)}
        out: dict[str, str] = {}
        for key in (*need.get(action, ()), *optional.get(action, ())):
            raw = params.get(key)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                if key in need.get(action, ()):
                    raise CaseInvalid(f"{action}: '{key}' is required")
                continue
            if not isinstance(raw, str):
                raise CaseInvalid(f"{action}: '{key}' must be text")
            value = raw.strip()
            limit = MAX_REF_CHARS if key == "ref" else 200 if key == "crew" else self.max_text
            if len(value) > limit:
                raise CaseInvalid(f"{action}: '{key}' is {len(value)} characters long; at most {limit} "
                                  f"are accepted (nothing was saved; shorten it and send it again)")
            if key == "ref" and any(ord(c) < 32 for c in value):
                raise CaseInvalid("photo: 'ref' must be one line (a file name, an id or a URL)")
            out[key] = value
        return out

    @staticmethod
    def _check_version(row: Any, params: dict[str, Any]) -> None:
        seen = params.get("version")
        if seen is None or seen == "":
            return
        try:
            version = int(seen)
        except (TypeError, ValueError):
            raise CaseInvalid(f"'version' must be an integer, got {seen!r}") from None
        if version != row.version:
            who = row.closed_by or row.ack_by or "another operator"
            raise CaseConflict(f"case {row.id} was changed meanwhile (now {row.state}, last by {who}); "
                               "it has been reloaded: check it and try again")

    def _step(self, row: Any, user: User, action: str, t: dict[str, str], now: int
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The column changes and event detail of a step, or CaseConflict if the state forbids it."""
        state = row.state
        if state == "closed" and action not in ("reopen", "review"):
            raise CaseConflict(f"case {row.id} is closed (by {row.closed_by}); "
                               + ("a supervisor can reopen it" if action != "close" else "it cannot be closed again"))
        detail: dict[str, Any] = {k: v for k, v in t.items()}
        if action == "acknowledge":
            if state != "new":
                raise CaseConflict(f"case {row.id} is already acknowledged (by {row.ack_by})")
            return {"state": "acknowledged", "ack_by": user.username, "ack_at": now, "deadline_at": None}, detail
        if action == "assign":
            if state == "resolved":
                raise CaseConflict(f"case {row.id} is resolved: close it, or add a note")
            values: dict[str, Any] = {"state": "dispatched", "crew": t["crew"], "assigned_at": now}
            if state == "new":
                values.update(ack_by=user.username, ack_at=now, deadline_at=None)
                detail["acknowledged"] = True
            if row.crew:
                detail["previous_crew"] = row.crew
            return values, detail
        if action == "escalate":
            target = next_tier(row.tier)
            if target is None:
                raise CaseConflict(f"case {row.id} is already with the city: there is no higher tier")
            values = {"tier": target, "escalated_at": now}
            if state == "new":
                values["deadline_at"] = self._deadline(now, row.max_level) if next_tier(target) else None
            detail.update({"from": row.tier, "to": target})
            return values, detail
        if action in ("note", "photo"):
            return {}, detail
        if action == "resolve":
            if state not in ("acknowledged", "dispatched"):
                raise CaseConflict(f"case {row.id} is {state}: only an acknowledged or dispatched case "
                                   "can be reported resolved")
            return {"state": "resolved", "resolved_at": now}, detail
        if action == "close":
            if not row.alert_cleared:
                detail["sensor_still_active"] = row.level
            return {"state": "closed", "closed_by": user.username, "closed_at": now, "cause": t["cause"],
                    "open_key": None, "deadline_at": None,
                    "ack_by": row.ack_by or user.username, "ack_at": row.ack_at or now}, detail
        if action == "reopen":
            if state != "closed":
                raise CaseConflict(f"case {row.id} is not closed")
            return {"state": "acknowledged", "open_key": _open_key(row.sensor, row.rule), "closed_by": None,
                    "closed_at": None, "cause": None, "reviewed_by": None, "reviewed_at": None}, detail
        # review
        if state != "closed":
            raise CaseConflict(f"case {row.id} is {state}: only a closed case can be reviewed")
        if row.reviewed_by:
            raise CaseConflict(f"case {row.id} was already reviewed (by {row.reviewed_by})")
        return {"reviewed_by": user.username, "reviewed_at": now}, detail

    # ------------------------------------------------------------------ escalation by timer

    def escalate_overdue(self, now: int | None = None) -> list[int]:
        """Escalate every unacknowledged case past its deadline one tier; returns their ids."""
        now = now if now is not None else now_ms()
        done: list[int] = []
        with self.db.write() as conn:
            rows = conn.execute(select(cases).where(cases.c.deadline_at <= now, cases.c.state == "new")
                                .order_by(cases.c.deadline_at).limit(1000)).all()
            for row in rows:
                target = next_tier(row.tier)
                if target is None:
                    conn.execute(update(cases).where(cases.c.id == row.id).values(deadline_at=None))
                    continue
                minutes = self.ack_ms[min(max(row.max_level, 1), 4) - 1] / 60_000
                changed = conn.execute(
                    update(cases).where(cases.c.id == row.id, cases.c.version == row.version,
                                        cases.c.state == "new")
                    .values(tier=target, escalated_at=now, version=row.version + 1, updated_at=now,
                            deadline_at=self._deadline(now, row.max_level) if next_tier(target) else None)
                ).rowcount
                if changed:
                    self._event(conn, row.id, now, SYSTEM, "escalate",
                                {"from": row.tier, "to": target, "auto": True,
                                 "reason": f"not acknowledged within {minutes:g} min"})
                    done.append(int(row.id))
        return done

    # ------------------------------------------------------------------ reading

    def get(self, user: User, case_id: int) -> dict[str, Any]:
        """One case with its events and alerts, if `user` sees it."""
        with self.db.read() as conn:
            row = conn.execute(select(cases).where(cases.c.id == case_id)).first()
            if row is None or not _sees(user.area, row):
                raise CaseNotFound(f"case {case_id} does not exist or is outside your area ({user.area})")
            events = conn.execute(select(case_events).where(case_events.c.case_id == case_id)
                                  .order_by(case_events.c.id)).all()
            case_alerts = conn.execute(select(alerts).where(alerts.c.case_id == case_id)
                                       .order_by(alerts.c.ts, alerts.c.received_at).limit(500)).all()
        out = case_view(row)
        out["events"] = [event_view(e) for e in events]
        out["alerts"] = [_alert_view(a) for a in case_alerts]
        out["review"] = review(out)
        return out

    def rows(self, ids: Iterable[int]) -> list[Any]:
        """Case rows by id (for the live feed, which checks each subscriber's area)."""
        wanted = sorted(set(ids))
        out: list[Any] = []
        with self.db.read() as conn:
            for i in range(0, len(wanted), 500):
                out.extend(conn.execute(select(cases).where(cases.c.id.in_(wanted[i:i + 500]))).all())
        return out

    def board(self, user: User, *, category: str = "event", state: str = "open", limit: int = 300,
              district: str = "", township: str = "", level: int = 0, domain: str = "",
              query: str = "") -> dict[str, Any]:
        """The board: the user's cases in board order, at most `limit`, with the total."""
        conds: list[ColumnElement[bool]] = [visible(user.area), cases.c.category == category]
        if state == "open":
            conds.append(cases.c.state != "closed")
        elif state == "closed":
            conds.append(cases.c.state == "closed")
        elif state in STATES:
            conds.append(cases.c.state == state)
        if district:
            conds.append(cases.c.district == district)
        if township:
            conds.append(cases.c.township == township)
        if level:
            conds.append(cases.c.level >= level)
        if domain:
            conds.append(cases.c.domain == domain)
        if query:
            like = f"%{query}%"
            conds.append(or_(cases.c.sensor.like(like), cases.c.site.like(like), cases.c.kind.like(like)))
        where = and_(*conds)
        order = (cases.c.closed_at.desc(),) if state == "closed" else BOARD_ORDER
        with self.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(cases).where(where)).scalar() or 0
            rows = conn.execute(select(cases).where(where).order_by(*order).limit(limit)).all()
        return {"total": int(total), "cases": [case_view(r) for r in rows]}

    def counts(self, user: User) -> dict[str, Any]:
        """Open cases of the user's area by category, level and state; for the board's header."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(cases.c.category, cases.c.level, cases.c.state, cases.c.domain, func.count())
                .where(visible(user.area), cases.c.state != "closed")
                .group_by(cases.c.category, cases.c.level, cases.c.state, cases.c.domain)).all()
        out: dict[str, Any] = {"event": 0, "fault": 0, "new": 0, "by_level": {str(i): 0 for i in range(5)},
                               "by_domain": {}}
        for category, level, state, domain, n in rows:
            out[category] = out.get(category, 0) + n
            if state == "new":
                out["new"] += n
            if category == "event":
                out["by_level"][str(level)] = out["by_level"].get(str(level), 0) + n
                per = out["by_domain"].setdefault(domain, {str(i): 0 for i in range(5)})
                per[str(level)] += n
        return out

    def cockpit(self, user: User, now: int | None = None) -> dict[str, Any]:
        """Counts by domain and level, alerts raised per hour (of their sample time) over 24 h, the
        longest-open cases."""
        now = now if now is not None else now_ms()
        start = (now // 3_600_000 - 23) * 3_600_000
        area = user.area
        raised = and_(alerts.c.ts >= start, alerts.c.ts < start + 24 * 3_600_000,
                      alerts.c.level > alerts.c.prev, alerts.c.level >= area.min_level)
        if area.district:
            raised = and_(raised, alerts.c.district == area.district)
        if area.township:
            raised = and_(raised, alerts.c.township == area.township)
        hour = (alerts.c.ts - start) / 3_600_000
        with self.db.read() as conn:
            per_hour = conn.execute(select(func.floor(hour).label("h"), alerts.c.level, func.count())
                                    .where(raised).group_by("h", alerts.c.level)).all()
            oldest = conn.execute(select(cases).where(visible(area), cases.c.state != "closed",
                                                      cases.c.category == "event")
                                  .order_by(cases.c.opened_at.asc()).limit(10)).all()
            closed_today = conn.execute(select(func.count()).select_from(cases).where(
                visible(area), cases.c.closed_at >= now - 86_400_000)).scalar() or 0
        hours = [{"start": start + h * 3_600_000, "by_level": {str(i): 0 for i in range(1, 5)}} for h in range(24)]
        for h, level, n in per_hour:
            index = int(h)
            if 0 <= index < 24 and 1 <= level <= 4:
                hours[index]["by_level"][str(level)] += n
        return {"counts": self.counts(user), "hours": hours, "oldest": [case_view(r) for r in oldest],
                "closed_24h": int(closed_today)}

    def sensor_state(self, user: User, sensor: str) -> dict[str, Any]:
        """What the console knows of a sensor: place, current level per rule, its cases."""
        with self.db.read() as conn:
            meta = conn.execute(select(sensors).where(sensors.c.sensor == sensor)).first()
            if meta is None or not user.area.contains(meta.district, meta.township):
                raise CaseNotFound(f"sensor {sensor} is unknown to the console or outside your area ({user.area})")
            levels = conn.execute(select(sensor_levels).where(sensor_levels.c.sensor == sensor)
                                  .order_by(sensor_levels.c.rule)).all()
            recent = conn.execute(select(cases).where(cases.c.sensor == sensor, visible(user.area))
                                  .order_by(cases.c.id.desc()).limit(20)).all()
            limits = conn.execute(select(alerts.c.rule, alerts.c.level, alerts.c.limit)
                                  .where(alerts.c.sensor == sensor, alerts.c.limit.is_not(None),
                                         alerts.c.level > alerts.c.prev)
                                  .group_by(alerts.c.rule, alerts.c.level, alerts.c.limit)).all()
        return {"sensor": dict(meta._mapping),
                "levels": [dict(r._mapping) for r in levels],
                "cases": [case_view(r) for r in recent],
                "seen_limits": [{"rule": r.rule, "level": r.level, "limit": r.limit} for r in limits]}

    def site_levels(self, user: User) -> dict[str, dict[str, Any]]:
        """Per site of the user's area: highest open level, open case count, district, township."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(cases.c.site, cases.c.district, cases.c.township, func.max(cases.c.level),
                       func.count(), func.sum(case((cases.c.category == "fault", 1), else_=0)))
                .where(visible(user.area), cases.c.state != "closed")
                .group_by(cases.c.site, cases.c.district, cases.c.township)).all()
            known = conn.execute(select(sensors.c.site, sensors.c.district, sensors.c.township)
                                 .distinct()).all()
        out: dict[str, dict[str, Any]] = {}
        for site, district, township in known:
            if user.area.contains(district, township):
                out[site] = {"site": site, "district": district, "township": township, "level": 0,
                             "open": 0, "faults": 0}
        for site, district, township, level, n, faults in rows:
            out[site] = {"site": site, "district": district, "township": township, "level": int(level or 0),
                         "open": int(n), "faults": int(faults or 0)}
        return out

    # ------------------------------------------------------------------ publishing

    def unpublished(self, limit: int = 500) -> list[tuple[Any, Any]]:
        """This instance's events not yet published, oldest first, with their case rows."""
        with self.db.read() as conn:
            return list(conn.execute(
                select(case_events, cases.c.district, cases.c.township, cases.c.site, cases.c.sensor,
                       cases.c.rule, cases.c.kind, cases.c.state, cases.c.level, cases.c.tier,
                       cases.c.category, cases.c.version)
                .join(cases, cases.c.id == case_events.c.case_id)
                .where(case_events.c.origin == self.origin, case_events.c.published.is_(False))
                .order_by(case_events.c.id).limit(limit)).all())

    def mark_published(self, event_ids: Sequence[int]) -> None:
        if event_ids:
            with self.db.write() as conn:
                conn.execute(update(case_events).where(case_events.c.id.in_(list(event_ids)))
                             .values(published=True))


class _Statements:
    """Prepared statements of the ingest path for one dialect (SQLite or PostgreSQL)."""

    def __init__(self, dialect_name: str) -> None:
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        self.insert_alert = dialect.insert(alerts).on_conflict_do_nothing().returning(alerts.c.id)
        self.set_alert_case = update(alerts).where(alerts.c.id == bindparam("aid")).values(case_id=bindparam("cid"))
        up = dialect.insert(sensors)
        self.upsert_sensor = up.on_conflict_do_update(
            index_elements=["sensor"], set_={c: up.excluded[c] for c in ("kind", "site", "township", "district",
                                                                         "agent", "updated_at")})
        lv = dialect.insert(sensor_levels)
        self.upsert_level = lv.on_conflict_do_update(  # a late, older alert leaves the newer level
            index_elements=["sensor", "rule"], set_={c: lv.excluded[c] for c in ("level", "value", "limit", "ts")},
            where=sensor_levels.c.ts <= lv.excluded.ts)
        self.insert_case = dialect.insert(cases).on_conflict_do_nothing().returning(*cases.c,
                                                                                   sort_by_parameter_order=True)
        self.update_case = update(cases).where(cases.c.id == bindparam("cid")).values(
            {c: bindparam(f"new_{c}") for c in _FOLLOWED})
        self.insert_event = insert(case_events)


def _sees(area: Area, row: Any) -> bool:
    return sees(area, row.district, row.township, row.max_level, row.tier)


def event_view(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["detail"] = json.loads(out["detail"]) if out.get("detail") else {}
    out.pop("published", None)
    return out


def _alert_view(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["extra"] = json.loads(out["extra"]) if out.get("extra") else None
    if isinstance(out.get("value"), float) and not math.isfinite(out["value"]):
        out["value"] = None
    return out


def review(case_row: dict[str, Any]) -> dict[str, Any]:
    """How long each step took (ms): to acknowledge, to dispatch, to resolve, to close, in all."""
    opened = case_row["opened_at"]

    def since(key: str) -> int | None:
        at = case_row.get(key)
        return at - opened if at is not None else None

    return {"to_acknowledge": since("ack_at"), "to_dispatch": since("assigned_at"),
            "to_resolve": since("resolved_at"), "to_close": since("closed_at"),
            "alert_active": (case_row["cleared_at"] - opened) if case_row.get("cleared_at") else None}
