"""Scoring: alerts matched to labels give the detection rates, delays and false alarms a user expects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from simulators.collect import _records_from_series, read_alerts, write_alerts
from simulators.scoring import AlertRecord, ScoreSettings, render_report, score
from simulators.signals import OPEN_END_MS, LabelledEvent
from simulators.truth import GroundTruth, TruthSensor, read_truth, write_truth

T0 = 1_721_000_000_000
DAY_MS = 86_400_000


def sensor(sid: str, kind: str = "pipe.pressure", rate: float = 10.0, transport: str = "mqtt") -> TruthSensor:
    return TruthSensor(sid, kind, "site", "town", rate, transport)


def label(sid: str, cls: str, start_s: float, end_s: float, rules: tuple[str, ...], *,
          kind: str = "pipe.pressure", fault: bool = False, abrupt: bool = True) -> LabelledEvent:
    return LabelledEvent(sid, kind, kind.split(".")[0], cls, T0 + int(start_s * 1000), T0 + int(end_s * 1000),
                         fault, abrupt, rules)


def alert(sid: str, rule: str, at_s: float, level: int = 1, prev: int = 0) -> AlertRecord:
    return AlertRecord(sid, rule, level, prev, T0 + int(at_s * 1000))


def truth(events: list[LabelledEvent], sensors: list[TruthSensor], *, days: float = 1.0,
          paced: bool = False) -> GroundTruth:
    return GroundTruth("test", "yuzhong", 1, T0, T0 + int(days * DAY_MS), paced, None if not paced else 1.0,
                       tuple(sensors), tuple(events))


def test_detection_rate_and_delay_per_class_in_ms_and_samples() -> None:
    sensors = [sensor("P1"), sensor("P2"), sensor("P3")]
    events = [label(s.id, "burst", 1000, 1600, ("low", "rate")) for s in sensors]
    alerts = [
        alert("P1", "low", 1000.4), alert("P1", "low", 1001.0, level=2, prev=1),  # escalation: not a 2nd hit
        alert("P2", "rate", 1002.0),
        alert("P3", "high", 1001.0),  # a rule the burst does not expect
        alert("P1", "low", 1700.0, level=0, prev=2),  # a clear says nothing
    ]
    report = score(truth(events, sensors), alerts)
    (burst,) = report.classes
    assert (burst.domain, burst.cls, burst.labelled, burst.detected) == ("pipe", "burst", 3, 2)
    assert burst.detection_rate == pytest.approx(2 / 3)
    assert burst.delay_ms_median == pytest.approx(1200.0)  # 400 ms and 2000 ms
    assert burst.delay_samples_median == pytest.approx(12.0)  # at 10 Hz
    assert burst.delay_ms_p95 == pytest.approx(400 + 0.95 * 1600)
    assert report.false_alarms.count == 0  # P3's high lies in its label's window
    assert report.totals(faults=False)["detected"] == 2


def test_policy_any_counts_any_raise_in_the_window() -> None:
    sensors = [sensor("P3")]
    events = [label("P3", "burst", 1000, 1600, ("low",))]
    alerts = [alert("P3", "high", 1001.0)]
    assert score(truth(events, sensors), alerts).classes[0].detected == 0
    assert score(truth(events, sensors), alerts, ScoreSettings(policy="any")).classes[0].detected == 1


def test_lead_and_trail_bound_the_window() -> None:
    sensors = [sensor("A"), sensor("B"), sensor("C")]
    events = [label(s.id, "fire", 1000, 1100, ("high",)) for s in sensors]
    alerts = [alert("A", "high", 996.0), alert("B", "high", 990.0), alert("C", "high", 1219.0)]
    report = score(truth(events, sensors), alerts, ScoreSettings(lead_s=5.0, trail_s=120.0))
    hits = {r.sensor: (r.detected, r.delay_ms) for r in report.labels}
    assert hits == {"A": (True, 0), "B": (False, None), "C": (True, 219_000)}
    assert report.false_alarms.count == 1  # B's early raise is outside every window
    assert report.false_alarms.by_rule == {"high": 1}


def test_false_alarms_are_new_raises_outside_windows_per_sensor_day() -> None:
    sensors = [sensor(f"S{i}") for i in range(4)]
    alerts = [alert("S0", "rate", 100.0), alert("S0", "rate", 101.0, level=2, prev=1),
              alert("S1", "spike", 5000.0), alert("S1", "spike", 5100.0, level=0, prev=1)]
    report = score(truth([], sensors, days=2.0), alerts)
    fa = report.false_alarms
    assert fa.count == 2 and fa.sensor_days == pytest.approx(8.0)
    assert fa.per_100_sensor_days == pytest.approx(25.0)
    assert fa.by_rule == {"rate": 1, "spike": 1} and fa.by_domain == {"pipe": 2}
    assert report.goals()["false_alarms_per_100_sensor_days"]["met"] is False


def test_faults_told_apart_from_events_in_a_confusion_table() -> None:
    sensors = [sensor("P"), sensor("Q"), sensor("R"), sensor("S")]
    events = [
        label("P", "stuck", 100, 400, ("flatline",), fault=True),
        label("Q", "out_of_range", 100, 200, ("range",), fault=True),
        label("R", "burst", 100, 400, ("low",)),
        label("S", "spike", 100, 200, ("spike",), fault=True),
    ]
    alerts = [alert("P", "flatline", 250.0), alert("Q", "range", 100.2), alert("Q", "high", 100.2, level=4),
              alert("R", "low", 101.0), alert("R", "spike", 100.5)]
    report = score(truth(events, sensors), alerts)
    assert report.confusion == {
        "event": {"event rules only": 0, "fault rules only": 0, "both": 1, "none": 0},
        "fault": {"event rules only": 0, "fault rules only": 1, "both": 1, "none": 1},
    }
    faults = report.totals(faults=True)
    assert (faults["labelled"], faults["detected"], faults["told_apart"]) == (3, 2, 2)
    spike = next(c for c in report.classes if c.cls == "spike")
    assert spike.is_fault and spike.detected == 0


def test_fast_runs_do_not_score_gap_or_receive_stamped_sensors() -> None:
    sensors = [sensor("M"), sensor("SER", transport="serial"), sensor("MB", transport="modbus")]
    events = [label("M", "dropout", 100, 160, ("gap",), fault=True),
              label("SER", "fire", 100, 200, ("high",)),
              label("MB", "ingress", 100, 200, ("high",))]
    alerts = [alert("M", "gap", 170.0), alert("SER", "high", 5000.0), alert("M", "gap", 9000.0)]
    fast = score(truth(events, sensors), alerts)
    assert fast.labels == [] and fast.false_alarms.count == 0
    assert fast.unscored_reasons == {"gap in a run faster than real time": 1,
                                     "serial sensor in a run faster than real time": 1,
                                     "modbus sensor in a run faster than real time": 1}
    assert fast.false_alarms.sensor_days == pytest.approx(1.0)  # only the MQTT sensor is exposed
    paced = score(truth(events, sensors, paced=True), alerts)
    assert [(r.sensor, r.detected) for r in paced.labels] == [("M", True), ("SER", False), ("MB", False)]
    assert paced.false_alarms.count == 2  # SER's late high and M's gap long after the dropout


def test_labels_without_expected_rules_are_not_scored_but_absorb_alerts() -> None:
    sensors = [sensor("R", kind="flood.rain", rate=1.0)]
    events = [label("R", "rainstorm", 100, 1000, (), kind="flood.rain", abrupt=False)]
    report = score(truth(events, sensors), [alert("R", "high", 500.0)])
    assert report.labels == [] and report.false_alarms.count == 0
    assert report.classes[0].unscored == 1 and report.classes[0].detection_rate is None


def test_open_ended_labels_end_with_the_run_and_late_labels_are_dropped() -> None:
    sensors = [sensor("T", kind="bridge.tilt", rate=1.0)]
    events = [LabelledEvent("T", "bridge.tilt", "bridge", "settlement", T0 + 1000, OPEN_END_MS, False, False,
                            ("high",)),
              label("T", "settlement", 2 * 86400, 2 * 86400 + 10, ("high",), kind="bridge.tilt")]
    t = truth(events, sensors)
    (kept,) = t.in_run()
    assert kept.end_ms == t.t1_ms
    report = score(t, [alert("T", "high", 80_000.0)])
    assert report.labels[0].detected and report.labels[0].delay_ms == 79_999_000


def test_alerts_outside_the_run_or_for_unknown_sensors_are_ignored() -> None:
    sensors = [sensor("A")]
    alerts = [alert("A", "high", -10.0), alert("ZZ", "high", 10.0), alert("A", "high", 86400.0 + 500)]
    report = score(truth([], sensors), alerts)
    assert report.false_alarms.count == 0 and report.alerts_ignored == 3


def test_goals_follow_the_issue() -> None:
    sensors = [sensor(f"P{i}") for i in range(20)]
    events = [label(s.id, "burst", 1000, 1200, ("low",)) for s in sensors]
    alerts = [alert(s.id, "low", 1000.3) for s in sensors[:19]]
    goals = score(truth(events, sensors, days=10.0), alerts).goals()
    assert goals["events_detected"]["value"] == pytest.approx(0.95) and goals["events_detected"]["met"]
    assert goals["abrupt_median_delay_samples"]["value"] == pytest.approx(3.0)
    assert goals["abrupt_median_delay_samples"]["met"]
    assert goals["false_alarms_per_100_sensor_days"]["met"]


def test_report_renders_and_serialises(tmp_path: Path) -> None:
    sensors = [sensor("P"), sensor("Q")]
    events = [label("P", "burst", 100, 200, ("low",)), label("Q", "stuck", 100, 300, ("flatline",), fault=True)]
    report = score(truth(events, sensors), [alert("P", "low", 100.5), alert("Q", "spike", 50_000.0)])
    console = Console(record=True, width=140)
    render_report(report, console)
    text = console.export_text()
    for expected in ("burst", "stuck", "False alarms: 1", "events detected", "fault rules only"):
        assert expected in text
    data = json.loads(json.dumps(report.to_json()))
    assert data["events"]["detected"] == 1 and data["faults"]["detected"] == 0
    assert data["false_alarms"]["examples"] == [{"sensor": "Q", "rule": "spike", "ts": T0 + 50_000_000}]
    assert {c["cls"] for c in data["classes"]} == {"burst", "stuck"}


def test_truth_and_alerts_round_trip_through_json(tmp_path: Path) -> None:
    t = truth([label("P", "burst", 1, 2, ("low", "rate"))], [sensor("P")], paced=True)
    assert read_truth(write_truth(t, tmp_path / "t.json")) == t
    alerts = [alert("P", "low", 1.5), alert("P", "low", 3.0, level=0, prev=1)]
    assert read_alerts(write_alerts(alerts, tmp_path / "a.json")) == alerts


def test_store_series_rebuild_prev_from_the_order_of_levels() -> None:
    rows = [({"sensor": "P", "rule": "low"}, [2, 1, 0], [T0 + 300, T0 + 100, T0 + 500])]
    records = _records_from_series(rows)
    assert [(r.prev, r.level, r.ts - T0) for r in records] == [(0, 1, 100), (1, 2, 300), (2, 0, 500)]


@pytest.mark.integration
def test_alerts_are_read_back_from_the_store(store: object) -> None:
    import urllib.request

    from simulators.collect import alerts_from_victoria

    url = store.url  # type: ignore[attr-defined]
    t = 1_721_500_000_000
    lines = "\n".join([
        f"alert,district=yuzhong,kind=pipe.pressure,rule=low,sensor=STORE-P,site=s,township=t "
        f"level=1i,value=0.3,limit=0.33,seq=1i {t}",
        f"alert,district=yuzhong,kind=pipe.pressure,rule=low,sensor=STORE-P,site=s,township=t "
        f"level=2i,value=0.2,limit=0.28,seq=2i {t + 500}",
        f"alert,district=yuzhong,kind=pipe.pressure,rule=low,sensor=STORE-P,site=s,township=t "
        f"level=0i,value=0.45,limit=0.33,seq=3i {t + 9000}",
        f"alert,district=yuzhong,kind=pipe.gas,rule=high,sensor=STORE-G,site=s,township=t "
        f"level=1i,value=12,limit=10,seq=4i {t + 1000}",
    ]).encode()
    request = urllib.request.Request(f"{url}/api/v2/write?org=lifeline&bucket=lifeline&precision=ms", data=lines,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status in (200, 204)
    got = [a for a in alerts_from_victoria(url, start_ms=t - 1000, end_ms=t + 10_000)
           if a.sensor.startswith("STORE-")]
    assert [(a.sensor, a.rule, a.prev, a.level, a.ts - t) for a in got] == [
        ("STORE-P", "low", 0, 1, 0), ("STORE-P", "low", 1, 2, 500), ("STORE-G", "high", 0, 1, 1000),
        ("STORE-P", "low", 2, 0, 9000)]


def test_paced_runs_report_alert_latency() -> None:
    sensors = [sensor("P")]
    alerts = [AlertRecord("P", "low", 1, 0, T0 + 1000, received_ms=T0 + 1200),
              AlertRecord("P", "low", 0, 1, T0 + 5000, received_ms=T0 + 5400),
              AlertRecord("P", "gap", 1, 0, T0 + 9000, received_ms=T0 + 9000)]
    paced = score(truth([], sensors, paced=True), alerts)
    assert paced.latency_ms["count"] == 2 and paced.latency_ms["p50"] == pytest.approx(300.0)
    assert paced.latency_ms["max"] == 400.0
    assert score(truth([], sensors), alerts).latency_ms == {}
