"""Scoring: how well the alerts that came out of the agents match the ground truth of a run.

Pure computation: `score(truth, alerts)` returns a `ScoreReport`; `render_report` prints it as
tables and `ScoreReport.to_json` gives the JSON file. The rules of the game:

- A *raise* is an alert whose level went up (level > prev). Only raises count; clears and
  de-escalations say nothing about detection.
- An alert *matches* a label when it is for the label's sensor, its `ts` lies in
  [start - lead_s, end + trail_s], and its rule is one of the label's `expected_rules`
  (policy "expected", the default) or any rule at all (policy "any": any non-zero level of the
  sensor counts as noticing the event). The trail covers what an event leaves behind (the
  recovery after a burst, the water still draining after a rain).
- Detection rate = labels with a matching raise / labels scored. The delay is the first matching
  raise's ts minus the label's start (0 if it came within the lead), in ms and in samples.
- A *false alarm* is a raise from level 0 (a new alarm, not an escalation of one already up)
  during the run and outside every label window of its sensor (scored or not); the rate is per
  sensor-day of simulated time. After the run's end only the labels' trails are looked at (a
  paced run's sensors all fall silent at its end, which the agents rightly report as `gap`).
- Faults told apart from events: for every label the raises inside its window are split into
  fault rules (`range`, `flatline`, `spike`, `drift`, `gap`) and event rules (`high`, `low`,
  `rate`, `anomaly`), giving a confusion table of truth (event, fault) against what was raised.
- Onset error: rules that estimate when a change began (`trend`, `freq_shift`: `extra.onset_ts`)
  are scored on it too: the first matching raise's onset minus the label's start.
- Latency (paced runs only): the collector's receive time minus the alert's sample time, which
  with RawBlock times is the whole path from the sample to a subscriber of the broker.
- Not scored: labels with no expected rule (the event stays under every limit by design), and
  on a run replayed faster than real time, `gap` (the agent judges silence by its wall clock)
  and every sensor on serial or Modbus (the agent stamps their samples with receive time).
  Their alerts are ignored, as are alerts outside the run or for sensors not in the truth.
  The window rules (`trend`, `freq_shift`) are not scored either on such a run: the agent closes
  its summary windows by its own clock, so a replay of days in minutes gives them a handful of
  windows (benchmarks/structural.py feeds the agent's pipeline on simulated time instead).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from edge_agent import FAULT_RULES as KERNEL_FAULT_RULES
from edge_agent import WINDOW_RULES as _WINDOW_RULES
from lifeline.contract import Alert
from simulators.signals import LabelledEvent
from simulators.truth import GroundTruth, TruthSensor

#: Rules that say the sensor is broken rather than the world changed (the agent adds `gap`).
FAULT_RULES: Final[frozenset[str]] = frozenset(KERNEL_FAULT_RULES | {"gap"})
#: Rules judged on summary windows, which the agent closes by its own clock.
WINDOW_RULES: Final[frozenset[str]] = frozenset(_WINDOW_RULES)
#: Transports whose samples the agent stamps with their receive time.
RECEIVE_STAMPED: Final = frozenset({"serial", "modbus"})
#: Goals of the issue: share of events detected, false alarms per 100 sensor-days, median delay.
GOAL_DETECTION: Final = 0.95
GOAL_FALSE_PER_100_DAYS: Final = 1.0
GOAL_ABRUPT_DELAY_SAMPLES: Final = 5.0

Policy = Literal["expected", "any"]


@dataclass(frozen=True)
class AlertRecord:
    """The part of an Alert scoring needs."""

    sensor: str
    rule: str
    level: int
    prev: int
    ts: int
    agent: str = ""
    received_ms: int | None = None  # when the collector got it (wall clock), if collected live
    onset_ms: int | None = None  # when the rule says the change began (extra.onset_ts), if it does

    @classmethod
    def from_alert(cls, alert: Alert, received_ms: int | None = None) -> AlertRecord:
        """The record of a decoded contract Alert."""
        onset = (alert.extra or {}).get("onset_ts")
        return cls(alert.sensor, alert.rule, alert.level, alert.prev, alert.ts, alert.agent, received_ms,
                   int(onset) if isinstance(onset, (int, float)) else None)

    @property
    def is_raise(self) -> bool:
        """True if the level went up."""
        return self.level > self.prev


@dataclass(frozen=True)
class ScoreSettings:
    """How alerts are matched to labels."""

    lead_s: float = 5.0
    trail_s: float = 120.0
    policy: Policy = "expected"


@dataclass(frozen=True)
class LabelResult:
    """One scored label: whether and how fast it was caught, and by which kinds of rule."""

    sensor: str
    domain: str
    cls: str
    is_fault: bool
    abrupt: bool
    start_ms: int
    end_ms: int
    detected: bool
    rule: str | None
    delay_ms: int | None
    delay_samples: float | None
    event_rules: bool
    fault_rules: bool
    onset_error_ms: int | None = None


@dataclass(frozen=True)
class ClassScore:
    """Scores of one event or fault class in one domain."""

    domain: str
    cls: str
    is_fault: bool
    labelled: int
    detected: int
    unscored: int
    told_apart: int
    delay_ms_median: float | None
    delay_ms_p95: float | None
    delay_samples_median: float | None
    delay_samples_p95: float | None
    abrupt: bool
    onset_error_ms_median: float | None = None

    @property
    def detection_rate(self) -> float | None:
        """Detected / labelled; None when nothing of the class was scored."""
        return self.detected / self.labelled if self.labelled else None


@dataclass(frozen=True)
class FalseAlarms:
    """Raises from level 0 outside every label window, against the simulated exposure."""

    count: int
    sensor_days: float
    by_rule: dict[str, int]
    by_domain: dict[str, int]
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def per_100_sensor_days(self) -> float | None:
        """False alarms per 100 sensor-days; None without exposure."""
        return 100.0 * self.count / self.sensor_days if self.sensor_days > 0 else None


CONFUSION_COLUMNS: Final = ("event rules only", "fault rules only", "both", "none")


@dataclass(frozen=True)
class ScoreReport:
    """Everything `score` found; `to_json` is what the JSON file holds."""

    scenario: str
    settings: ScoreSettings
    paced: bool
    classes: list[ClassScore]
    labels: list[LabelResult]
    false_alarms: FalseAlarms
    confusion: dict[str, dict[str, int]]
    alerts_total: int
    alerts_ignored: int
    unscored_reasons: dict[str, int]
    latency_ms: dict[str, float | None] = field(default_factory=dict)

    def totals(self, *, faults: bool) -> dict[str, Any]:
        """Labels, detections, rate and delays over every event class (or every fault class)."""
        rows = [r for r in self.labels if r.is_fault == faults]
        detected = [r for r in rows if r.detected]
        delays = [r.delay_samples for r in detected if r.abrupt and r.delay_samples is not None]
        return {
            "labelled": len(rows), "detected": len(detected),
            "detection_rate": len(detected) / len(rows) if rows else None,
            "told_apart": sum(1 for r in rows if (r.fault_rules if faults else r.event_rules)),
            "abrupt_delay_samples_median": _percentile(delays, 50),
            "abrupt_delay_samples_p95": _percentile(delays, 95),
        }

    def goals(self) -> dict[str, dict[str, Any]]:
        """The issue's goals for the agent, each with its measured value and whether it is met."""
        events = self.totals(faults=False)
        rate = events["detection_rate"]
        per100 = self.false_alarms.per_100_sensor_days
        delay = events["abrupt_delay_samples_median"]
        return {
            "events_detected": {"value": rate, "goal": f">= {GOAL_DETECTION:.0%}",
                                "met": rate is not None and rate >= GOAL_DETECTION},
            "false_alarms_per_100_sensor_days": {
                "value": per100, "goal": f"<= {GOAL_FALSE_PER_100_DAYS:g}",
                "met": per100 is not None and per100 <= GOAL_FALSE_PER_100_DAYS},
            "abrupt_median_delay_samples": {
                "value": delay, "goal": f"<= {GOAL_ABRUPT_DELAY_SAMPLES:g}",
                "met": delay is not None and delay <= GOAL_ABRUPT_DELAY_SAMPLES},
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map of the report."""
        fa = self.false_alarms
        return {
            "scenario": self.scenario, "paced": self.paced, "settings": asdict(self.settings),
            "events": self.totals(faults=False), "faults": self.totals(faults=True),
            "goals": self.goals(),
            "classes": [{**asdict(c), "detection_rate": c.detection_rate} for c in self.classes],
            "false_alarms": {"count": fa.count, "sensor_days": fa.sensor_days,
                             "per_100_sensor_days": fa.per_100_sensor_days, "by_rule": fa.by_rule,
                             "by_domain": fa.by_domain, "examples": fa.examples},
            "confusion": self.confusion, "alerts_total": self.alerts_total,
            "alerts_ignored": self.alerts_ignored, "unscored": self.unscored_reasons,
            "latency_ms": self.latency_ms,
            "labels": [asdict(r) for r in self.labels],
        }


# --------------------------------------------------------------------------- scoring


@dataclass
class _SensorAlerts:
    """One sensor's raises, sorted by time, as parallel arrays."""

    ts: np.ndarray
    rules: list[str]
    onset: np.ndarray  # raised from level 0
    change_at: list[int | None]  # each raise's estimate of when the change began


def _index(alerts: Iterable[AlertRecord]) -> dict[str, _SensorAlerts]:
    grouped: dict[str, list[AlertRecord]] = defaultdict(list)
    for a in alerts:
        grouped[a.sensor].append(a)
    out = {}
    for sensor, rows in grouped.items():
        rows.sort(key=lambda a: a.ts)
        out[sensor] = _SensorAlerts(
            np.array([a.ts for a in rows], dtype=np.int64), [a.rule for a in rows],
            np.array([a.prev == 0 for a in rows], dtype=bool), [a.onset_ms for a in rows],
        )
    return out


def _scorable_rules(label: LabelledEvent, sensor: TruthSensor, paced: bool) -> tuple[str, ...] | str:
    """The rules that may detect a label, or why the label is not scored."""
    if not paced and sensor.transport in RECEIVE_STAMPED:
        return f"{sensor.transport} sensor in a run faster than real time"
    rules = label.expected_rules if paced else tuple(
        r for r in label.expected_rules if r != "gap" and r not in WINDOW_RULES)
    if not rules:
        if not label.expected_rules:
            return "no expected rule"
        if set(label.expected_rules) <= WINDOW_RULES:
            return "window rule in a run faster than real time"
        return "gap in a run faster than real time"
    return rules


def _ignored(alert: AlertRecord, truth: GroundTruth, sensors: dict[str, TruthSensor],
             end_ms: int) -> bool:
    sensor = sensors.get(alert.sensor)
    if sensor is None or not truth.t0_ms <= alert.ts <= end_ms:
        return True
    if truth.paced:
        return False
    return alert.rule == "gap" or sensor.transport in RECEIVE_STAMPED


#: Why a label is not scored when it started after `score`'s `cut_ms`.
LATE_REASON: Final = "started too close to an early stop to be detected"


def score(truth: GroundTruth, alerts: Sequence[AlertRecord],
          settings: ScoreSettings = ScoreSettings(), *, cut_ms: int | None = None) -> ScoreReport:
    """Match alerts to the truth's labels and count detections, delays and false alarms.

    Labels that start after `cut_ms` (a run stopped early: no time left to detect them) are not
    scored, and alerts in their windows are not false alarms."""
    sensors = {s.id: s for s in truth.sensors}
    lead_ms, trail_ms = round(settings.lead_s * 1000), round(settings.trail_s * 1000)
    end_ms = truth.t1_ms + trail_ms
    kept = [a for a in alerts if a.is_raise and not _ignored(a, truth, sensors, end_ms)]
    ignored = sum(1 for a in alerts if a.is_raise) - len(kept)
    by_sensor = _index(kept)
    in_window = {s: np.zeros(len(a.ts), dtype=bool) for s, a in by_sensor.items()}
    results: list[LabelResult] = []
    unscored: dict[tuple[str, str, bool], int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    for label in truth.in_run():
        sensor = sensors.get(label.sensor)
        raises = by_sensor.get(label.sensor)
        lo, hi = label.start_ms - lead_ms, label.end_ms + trail_ms
        if raises is not None:
            inside = (raises.ts >= lo) & (raises.ts <= hi)
            in_window[label.sensor] |= inside
        if sensor is None:
            reasons["label for a sensor not in the truth"] += 1
            continue
        if cut_ms is not None and label.start_ms > cut_ms:
            unscored[(label.domain, label.cls, label.is_fault)] += 1
            reasons[LATE_REASON] += 1
            continue
        rules = _scorable_rules(label, sensor, truth.paced)
        if isinstance(rules, str):
            unscored[(label.domain, label.cls, label.is_fault)] += 1
            reasons[rules] += 1
            continue
        results.append(_match(label, sensor, raises, lo, hi, rules, settings.policy))
    false_alarms = _false_alarms(truth, sensors, by_sensor, in_window)
    return ScoreReport(
        scenario=truth.scenario, settings=settings, paced=truth.paced,
        classes=_classes(results, unscored), labels=results, false_alarms=false_alarms,
        confusion=_confusion(results), alerts_total=len(alerts), alerts_ignored=ignored,
        unscored_reasons=dict(reasons), latency_ms=_latency(truth, alerts),
    )


def _latency(truth: GroundTruth, alerts: Sequence[AlertRecord]) -> dict[str, float | None]:
    """Alert latency (collector receive time minus sample time) of a run paced in real time."""
    if not truth.paced:
        return {}
    lags = [float(a.received_ms - a.ts) for a in alerts
            if a.received_ms is not None and a.rule != "gap" and truth.t0_ms <= a.ts <= truth.t1_ms]
    return {"count": float(len(lags)), "p50": _percentile(lags, 50), "p95": _percentile(lags, 95),
            "max": max(lags) if lags else None}


def _match(label: LabelledEvent, sensor: TruthSensor, raises: _SensorAlerts | None, lo: int,
           hi: int, rules: tuple[str, ...], policy: Policy) -> LabelResult:
    """Score one label against its sensor's raises."""
    first_rule: str | None = None
    first_ts: int | None = None
    change_at: int | None = None
    event_rules = fault_rules = False
    if raises is not None:
        a, b = np.searchsorted(raises.ts, lo, "left"), np.searchsorted(raises.ts, hi, "right")
        for k in range(int(a), int(b)):
            rule = raises.rules[k]
            if rule in FAULT_RULES:
                fault_rules = True
            else:
                event_rules = True
            if first_ts is None and (policy == "any" or rule in rules):
                first_rule, first_ts = rule, int(raises.ts[k])
                change_at = raises.change_at[k]
    delay_ms = None if first_ts is None else max(0, first_ts - label.start_ms)
    return LabelResult(
        sensor=label.sensor, domain=label.domain, cls=label.cls, is_fault=label.is_fault,
        abrupt=label.abrupt, start_ms=label.start_ms, end_ms=label.end_ms,
        detected=first_ts is not None, rule=first_rule, delay_ms=delay_ms,
        delay_samples=None if delay_ms is None else delay_ms * sensor.rate_hz / 1000.0,
        event_rules=event_rules, fault_rules=fault_rules,
        onset_error_ms=None if change_at is None else change_at - label.start_ms,
    )


def _false_alarms(truth: GroundTruth, sensors: dict[str, TruthSensor],
                  by_sensor: dict[str, _SensorAlerts], in_window: dict[str, np.ndarray]) -> FalseAlarms:
    by_rule: dict[str, int] = defaultdict(int)
    by_domain: dict[str, int] = defaultdict(int)
    examples: list[dict[str, Any]] = []
    for sensor_id, raises in by_sensor.items():
        during = raises.ts <= truth.t1_ms  # after the run only labels' trails are looked at
        outside = np.flatnonzero(raises.onset & ~in_window[sensor_id] & during)
        for k in outside.tolist():
            rule = raises.rules[k]
            by_rule[rule] += 1
            by_domain[sensors[sensor_id].domain] += 1
            if len(examples) < 20:
                examples.append({"sensor": sensor_id, "rule": rule, "ts": int(raises.ts[k])})
    exposed = [s for s in truth.sensors if truth.paced or s.transport not in RECEIVE_STAMPED]
    days = len(exposed) * (truth.t1_ms - truth.t0_ms) / 86_400_000.0
    return FalseAlarms(sum(by_rule.values()), days, dict(by_rule), dict(by_domain), examples)


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def _classes(results: Sequence[LabelResult],
             unscored: dict[tuple[str, str, bool], int]) -> list[ClassScore]:
    groups: dict[tuple[str, str, bool], list[LabelResult]] = defaultdict(list)
    for r in results:
        groups[(r.domain, r.cls, r.is_fault)].append(r)
    for key in unscored:
        groups.setdefault(key, [])
    out = []
    for (domain, cls, is_fault), rows in groups.items():
        delays_ms = [float(r.delay_ms) for r in rows if r.delay_ms is not None]
        delays_n = [r.delay_samples for r in rows if r.delay_samples is not None]
        told = sum(1 for r in rows if (r.fault_rules if is_fault else r.event_rules))
        onset_errors = [float(abs(r.onset_error_ms)) for r in rows if r.onset_error_ms is not None]
        out.append(ClassScore(
            domain=domain, cls=cls, is_fault=is_fault, labelled=len(rows),
            detected=sum(1 for r in rows if r.detected), unscored=unscored.get((domain, cls, is_fault), 0),
            told_apart=told, delay_ms_median=_percentile(delays_ms, 50),
            delay_ms_p95=_percentile(delays_ms, 95), delay_samples_median=_percentile(delays_n, 50),
            delay_samples_p95=_percentile(delays_n, 95), abrupt=any(r.abrupt for r in rows),
            onset_error_ms_median=_percentile(onset_errors, 50),
        ))
    out.sort(key=lambda c: (c.is_fault, c.domain, c.cls))
    return out


def _confusion(results: Sequence[LabelResult]) -> dict[str, dict[str, int]]:
    table = {truth: dict.fromkeys(CONFUSION_COLUMNS, 0) for truth in ("event", "fault")}
    for r in results:
        if r.event_rules and r.fault_rules:
            column = "both"
        elif r.event_rules:
            column = "event rules only"
        elif r.fault_rules:
            column = "fault rules only"
        else:
            column = "none"
        table["fault" if r.is_fault else "event"][column] += 1
    return table


# --------------------------------------------------------------------------- display


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.1f} %"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def render_report(report: ScoreReport, console: Console | None = None) -> None:
    """Print the report as readable tables: per class, confusion, false alarms, goals."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # files and pipes get the whole table
    table = Table(title=f"Detection by class: scenario {report.scenario} "
                        f"({'real time' if report.paced else 'faster than real time'})", box=box.SIMPLE_HEAD)
    table.add_column("domain")
    table.add_column("class", no_wrap=True)
    table.add_column("type")
    for name in ("found", "rate", "apart", "delay s p50/p95", "samples p50/p95", "unscored"):
        table.add_column(name, justify="right")
    for c in report.classes:
        seconds = [None if x is None else x / 1000.0 for x in (c.delay_ms_median, c.delay_ms_p95)]
        table.add_row(
            c.domain, c.cls, "fault" if c.is_fault else ("abrupt" if c.abrupt else "event"),
            f"{c.detected}/{c.labelled}", _pct(c.detection_rate), f"{c.told_apart}/{c.labelled}",
            f"{_num(seconds[0])}/{_num(seconds[1])}",
            f"{_num(c.delay_samples_median)}/{_num(c.delay_samples_p95)}", str(c.unscored),
        )
    console.print(table)
    confusion = Table(title="Faults told apart from events (labels by the rules raised in their window)",
                      box=box.SIMPLE_HEAD)
    confusion.add_column("truth")
    for column in CONFUSION_COLUMNS:
        confusion.add_column(column, justify="right")
    for truth_kind, row in report.confusion.items():
        confusion.add_row(truth_kind, *(str(row[c]) for c in CONFUSION_COLUMNS))
    console.print(confusion)
    fa = report.false_alarms
    rules = ", ".join(f"{k} {v}" for k, v in sorted(fa.by_rule.items())) or "none"
    console.print(f"False alarms: {fa.count} in {fa.sensor_days:.2f} sensor-days = "
                  f"{_num(fa.per_100_sensor_days, '{:.2f}')} per 100 sensor-days (by rule: {rules})")
    goals = Table(title="Goals", box=box.SIMPLE_HEAD)
    for name in ("goal", "measured", "target", "met"):
        goals.add_column(name)
    for name, g in report.goals().items():
        value = g["value"]
        shown = _pct(value) if name == "events_detected" else _num(value, "{:.2f}")
        goals.add_row(name.replace("_", " "), shown, g["goal"], "yes" if g["met"] else "NO")
    console.print(goals)
    if report.unscored_reasons:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.unscored_reasons.items()))
        console.print(f"Not scored: {reasons}")
    if report.latency_ms.get("count"):
        lat = report.latency_ms
        console.print(f"Alert latency (sample time to the collector): p50 {_num(lat['p50'], '{:.0f}')} ms, "
                      f"p95 {_num(lat['p95'], '{:.0f}')} ms, max {_num(lat['max'], '{:.0f}')} ms "
                      "(serial and Modbus include the agent's receive stamp)")
    console.print(f"Alerts: {report.alerts_total} received, {report.alerts_ignored} raises ignored "
                  "(outside the run, unknown sensor, or not comparable in this run)")
