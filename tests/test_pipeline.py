"""The detection pipeline without servers: RawBlocks and sample blocks in, Alerts and Summaries out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np
import pytest

from edge_agent.config import SensorSettings, sensor_rules
from edge_agent.inputs.base import RawMessage, SampleBlock
from edge_agent.pipeline import AgentIdentity, GapSettings, Pipeline
from edge_agent.registry import SensorRegistry
from lifeline.contract import Alert, RawBlock

P = "lifeline/v1"
T0 = 1_700_000_040_000  # a window boundary for 60 s windows
AGENT = AgentIdentity("yz-jfb-01", "yuzhong", "jiefangbei")
LEVEL = {"kind": "test.level", "high": [0.6, 0.7, 0.8, 0.9], "hysteresis": 0.02, "debounce": 3}


class Clock:
    """The pipeline's wall clock, moved by the test."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def make_pipeline(*sensors: dict[str, Any], clock: Clock | None = None, last_alert_seq: int = 0,
                  gap: GapSettings | None = None, window_s: float = 60.0,
                  wall_offset: Callable[[], int | None] | None = None) -> Pipeline:
    settings = [SensorSettings(**{"id": f"S{i}", "site": "site-a", **LEVEL, **s}) for i, s in enumerate(sensors)]
    return Pipeline(SensorRegistry(settings), [sensor_rules(s, i) for i, s in enumerate(settings)],
                    agent=AGENT, clock=clock or Clock(), last_alert_seq=last_alert_seq, gap=gap or GapSettings(),
                    gap_s=[s.gap_s for s in settings], window_s=window_s, wall_offset=wall_offset)


def raw(sensor: str, values: Sequence[float], *, t0: int = T0, dt: float = 1000.0, seq: int | None = None,
        received: int | None = None, as_bin: bool = False) -> RawMessage:
    block = RawBlock(sensor, np.asarray(values, dtype=np.float64), t0=t0, dt=dt, seq=seq)
    return (f"{P}/raw/{sensor}", block.encode(as_bin=as_bin), received if received is not None else T0)


def changes(alerts: Sequence[Alert]) -> list[tuple[str, str, int, int]]:
    return [(a.sensor, a.rule, a.prev, a.level) for a in alerts]


# ---------------------------------------------------------------- thresholds


def test_threshold_levels_follow_debounce_and_hysteresis() -> None:
    pipeline = make_pipeline({})
    values = ([0.5] * 5 + [0.75] * 2      # shorter than debounce: nothing
              + [0.5] * 3 + [0.75] * 3    # held 3 samples above 0.7: level 2 at the third
              + [0.69] * 5                # inside the hysteresis band: no chattering
              + [0.65] * 3                # below 0.7 - 0.02 for 3 samples: back to level 1
              + [0.55] * 3)               # below 0.6 - 0.02: cleared
    alerts = pipeline.step([raw("S0", values)], []).alerts
    assert changes(alerts) == [("S0", "high", 0, 2), ("S0", "high", 2, 1), ("S0", "high", 1, 0)]
    raise_, lower, clear = alerts
    assert (raise_.value, raise_.ts, raise_.limit) == (0.75, T0 + 12_000, 0.7)
    assert (lower.value, lower.ts) == (0.65, T0 + 20_000)
    assert (clear.value, clear.ts) == (0.55, T0 + 23_000)


def test_alerts_carry_hierarchy_contiguous_seq_and_ids_built_from_the_event() -> None:
    pipeline = make_pipeline({"low": [0.2, 0.1], "site": "valve-12", "kind": "pipe.pressure"},
                             last_alert_seq=41)
    alerts = pipeline.step([raw("S0", [0.4, 0.05, 0.05, 0.05, 0.4, 0.4, 0.4])], []).alerts
    assert changes(alerts) == [("S0", "low", 0, 2), ("S0", "low", 2, 0)]
    first = alerts[0]
    assert (first.agent, first.district, first.township) == ("yz-jfb-01", "yuzhong", "jiefangbei")
    assert (first.site, first.kind, first.limit) == ("valve-12", "pipe.pressure", 0.1)
    assert [a.seq for a in alerts] == [42, 43]
    assert first.id == f"yz-jfb-01:S0:low:2@{T0 + 3000}"
    assert pipeline.last_alert_seq == 43


def test_many_sensors_in_one_batch_and_split_batches_give_the_same_alerts() -> None:
    rng = np.random.default_rng(3)
    series = {f"S{i}": np.round(rng.uniform(0.4, 0.95, 300), 3) for i in range(4)}
    whole = make_pipeline({}, {}, {}, {})
    one_batch = whole.step([raw(s, v) for s, v in series.items()], []).alerts
    split = make_pipeline({}, {}, {}, {})
    pieces: list[Alert] = []
    for start in range(0, 300, 7):  # interleaved one message per sensor and chunk, as they arrive
        msgs = [raw(s, v[start:start + 7], t0=T0 + start * 1000, seq=start // 7) for s, v in series.items()]
        pieces += split.step(msgs, []).alerts
    assert len(one_batch) > 10
    key = lambda a: (a.sensor, a.ts, a.rule, a.level)
    assert sorted(map(key, pieces)) == sorted(map(key, one_batch))


def test_single_sample_messages_from_many_sensors_keep_each_sensors_order() -> None:
    pipeline = make_pipeline({}, {})
    msgs = []
    for i, (a, b) in enumerate(zip([0.5, 0.85, 0.85, 0.85, 0.5, 0.5, 0.5], [0.85, 0.85, 0.85, 0.5, 0.5, 0.5, 0.5])):
        msgs.append(raw("S0", [a], t0=T0 + i * 100, seq=i))
        msgs.append(raw("S1", [b], t0=T0 + i * 100, seq=i))
    alerts = pipeline.step(msgs, []).alerts
    assert sorted(changes(alerts)) == sorted([("S0", "high", 0, 3), ("S1", "high", 0, 3), ("S1", "high", 3, 0),
                                              ("S0", "high", 3, 0)])
    assert {(a.sensor, a.level): a.ts for a in alerts} == {
        ("S1", 3): T0 + 200, ("S0", 3): T0 + 300, ("S1", 0): T0 + 500, ("S0", 0): T0 + 600}


def test_sample_times_from_t0_dt_ts_or_the_receive_time() -> None:
    pipeline = make_pipeline({"debounce": 1})
    recv = T0 + 50_000
    no_t0 = RawBlock("S0", np.array([0.5, 0.5, 0.95]), dt=10.0).encode()
    alerts = pipeline.step([(f"{P}/raw/S0", no_t0, recv)], []).alerts
    assert [a.ts for a in alerts] == [recv]  # the last sample is stamped with the receive time
    irregular = msgpack.packb({"v": 1, "sensor": "S0", "values": [0.5, 0.5], "ts": [T0 + 60_000, T0 + 60_007]})
    alerts = pipeline.step([(f"{P}/raw/S0", irregular, recv)], []).alerts
    assert [(a.level, a.ts) for a in alerts] == [(0, T0 + 60_000)]


def test_serial_and_modbus_blocks_join_the_same_batch() -> None:
    pipeline = make_pipeline({"debounce": 1}, {"debounce": 1, "source": "serial", "port": "/dev/x", "node": 1})
    block = SampleBlock(1, np.array([0.5, 0.91]), np.array([T0 + 1, T0 + 2], dtype=np.int64), T0 + 2)
    alerts = pipeline.step([raw("S0", [0.81])], [block]).alerts
    assert sorted(changes(alerts)) == [("S0", "high", 0, 3), ("S1", "high", 0, 4)]
    assert pipeline.counters.samples == 3 and pipeline.counters.blocks == 2


# ---------------------------------------------------------------- bad input and sequence numbers


def test_bad_raw_blocks_are_counted_and_never_stop_the_pipeline() -> None:
    pipeline = make_pipeline({"debounce": 1})
    bad: list[RawMessage] = [
        (f"{P}/raw/S0", b"\x00\xffnot msgpack", T0),
        (f"{P}/raw/S0", RawBlock("S9", np.array([1.0])).encode(), T0),  # wrong sensor in the topic
        (f"{P}/raw/S0", msgpack.packb({"v": 1, "sensor": "S0", "values": ["x"]}), T0),
        (f"{P}/raw/S0", msgpack.packb({"v": 2, "sensor": "S0", "values": [1.0]}), T0),
        (f"{P}/raw/S9", RawBlock("S9", np.array([1.0])).encode(), T0),  # not a sensor of this agent
        (f"{P}/raw/a/b", b"", T0),
        ("", b"", T0),
    ]
    alerts = pipeline.step([*bad, raw("S0", [0.95])], []).alerts
    assert changes(alerts) == [("S0", "high", 0, 4)]
    c = pipeline.counters
    assert (c.decode_errors, c.unknown_sensor, c.messages, c.samples) == (4, 3, 8, 1)


def test_sequence_gaps_duplicates_and_resets_are_counted_and_duplicates_dropped() -> None:
    pipeline = make_pipeline({})
    seqs = [1, 2, 2, 5, 6, 2**32 - 1, 0, 0, 3]  # dup, gap of 2, jump back (reset), wrap, dup
    msgs = [raw("S0", [0.5], t0=T0 + i, seq=s) for i, s in enumerate(seqs)]
    pipeline.step(msgs, [])
    c = pipeline.counters
    assert (c.seq_duplicates, c.seq_gaps, c.seq_resets) == (2, 4, 1)
    assert c.samples == len(seqs) - 2


# ---------------------------------------------------------------- gap fault


def test_gap_fault_raises_on_silence_by_wall_clock_and_clears_when_data_returns() -> None:
    clock = Clock()
    pipeline = make_pipeline({"gap_s": 2.0}, clock=clock)
    assert pipeline.step([raw("S0", [0.5], received=T0)], []).alerts == []
    clock.now = T0 + 1_900
    assert pipeline.step([], []).alerts == []
    clock.now = T0 + 2_100
    (gap,) = pipeline.step([], []).alerts
    assert (gap.rule, gap.prev, gap.level, gap.ts, gap.value) == ("gap", 0, 1, T0 + 2_100, 0.5)
    assert gap.extra == {"fault": True, "silent_s": 2.1}
    clock.now = T0 + 9_000
    assert pipeline.step([], []).alerts == []  # one alert per level change, not per tick
    assert pipeline.sensors_in_gap() == 1
    (clear,) = pipeline.step([raw("S0", [0.52], t0=T0 + 8_990, received=T0 + 9_000)], []).alerts
    assert (clear.rule, clear.prev, clear.level, clear.value, clear.ts) == ("gap", 1, 0, 0.52, T0 + 8_990)
    assert pipeline.sensors_in_gap() == 0


def test_gap_limit_is_learnt_from_arrival_intervals_with_a_floor() -> None:
    clock = Clock()
    pipeline = make_pipeline({}, clock=clock, gap=GapSettings(multiple=3.0, floor_s=1.0, startup_s=100.0))
    for i in range(5):  # a sensor that reports every 2 s
        clock.now = T0 + i * 2_000
        assert pipeline.step([raw("S0", [0.5], t0=clock.now, received=clock.now)], []).alerts == []
    assert pipeline.gap_limits_ms()[0] == 6_000
    clock.now = T0 + 8_000 + 5_900
    assert pipeline.step([], []).alerts == []
    clock.now = T0 + 8_000 + 6_100
    assert changes(pipeline.step([], []).alerts) == [("S0", "gap", 0, 1)]


def test_a_sensor_that_never_sends_raises_gap_after_the_startup_limit() -> None:
    clock = Clock()
    pipeline = make_pipeline({}, {}, clock=clock, gap=GapSettings(startup_s=30.0))
    clock.now = T0 + 29_000
    assert pipeline.step([raw("S1", [0.5], received=clock.now)], []).alerts == []
    clock.now = T0 + 31_000
    assert changes(pipeline.step([], []).alerts) == [("S0", "gap", 0, 1)]


def test_a_heartbeat_keeps_a_serial_sensor_out_of_gap() -> None:
    clock = Clock()
    pipeline = make_pipeline({"gap_s": 1.0, "source": "serial", "port": "/dev/x", "node": 1}, clock=clock)
    for t in (500, 1_400, 2_300):
        clock.now = T0 + t
        assert pipeline.step([], [SampleBlock.alive(0, clock.now)]).alerts == []
    assert pipeline.counters.heartbeats == 3 and pipeline.counters.samples == 0


# ---------------------------------------------------------------- summaries


def test_one_summary_per_wall_clock_window_with_only_the_sensors_that_sent() -> None:
    clock = Clock(T0 + 10_000)
    pipeline = make_pipeline({}, {}, {}, clock=clock)
    pipeline.step([raw("S0", [0.1, 0.3]), raw("S2", [1.0, 2.0, 6.0])], [])
    clock.now = T0 + 59_999
    assert pipeline.step([raw("S0", [0.2], t0=T0 + 30_000, received=clock.now)], []).summary is None
    clock.now = T0 + 60_000
    summary = pipeline.step([], []).summary
    assert summary is not None
    assert (summary.t0, summary.t1, summary.agent, summary.district) == (T0, T0 + 60_000, "yz-jfb-01", "yuzhong")
    assert summary.sensor == ["S0", "S2"] and summary.kind == ["test.level"] * 2
    assert summary.n.tolist() == [3, 3]
    assert summary.min.tolist() == [0.1, 1.0] and summary.max.tolist() == [0.3, 6.0]
    np.testing.assert_allclose(summary.mean, [0.2, 3.0])
    assert summary.last.tolist() == [0.2, 6.0]
    np.testing.assert_allclose(summary.extra["rms"], [np.sqrt((0.01 + 0.09 + 0.04) / 3), np.sqrt(41 / 3)])
    assert "f_peak" not in summary.extra
    clock.now = T0 + 180_500  # two empty windows later: nothing to say
    assert pipeline.step([], []).summary is None
    clock.now = T0 + 239_000
    assert pipeline.step([raw("S1", [0.4])], []).summary is None
    clock.now = T0 + 240_000
    later = pipeline.step([], []).summary
    assert later is not None and (later.t0, later.t1, later.sensor) == (T0 + 180_000, T0 + 240_000, ["S1"])


# ---------------------------------------------------------------- durable state


def test_restored_levels_do_not_raise_the_same_alert_again() -> None:
    first = make_pipeline({}, {})
    alerts = first.step([raw("S1", [0.85] * 3)], []).alerts
    assert changes(alerts) == [("S1", "high", 0, 3)]
    levels = first.levels_blob()
    state = first.state_blob()
    # A restart with the full state saved earlier (before the alert) and the levels saved with it.
    second = make_pipeline({}, {}, last_alert_seq=first.last_alert_seq)
    assert second.restore(state=None, levels=levels)
    assert second.step([raw("S1", [0.85] * 5, t0=T0 + 10_000)], []).alerts == []
    (clear,) = second.step([raw("S1", [0.5] * 3, t0=T0 + 20_000)], []).alerts
    assert (clear.prev, clear.level, clear.seq) == (3, 0, 2)
    third = make_pipeline({"kind": "test.level"}, {"id": "S1"})
    assert third.restore(state=state, levels=None)
    assert third.step([raw("S1", [0.85] * 3, t0=T0 + 30_000)], []).alerts == []


def test_a_delta_laid_over_an_older_full_state_resumes_each_sensor_where_its_alert_left_it() -> None:
    """The levels of an alert with the counters of an older save cleared a raise after one
    sample (counters counting up read as counting back down); the state saved with the alert
    resumes exactly."""
    first = make_pipeline({}, {})
    assert first.step([raw("S1", [0.85] * 2)], []).alerts == []   # 2 of 3 samples held high
    older = first.state_blob()
    (raise_,) = first.step([raw("S1", [0.85], t0=T0 + 2_000)], []).alerts
    assert (raise_.prev, raise_.level) == (0, 3)
    delta, levels = first.state_blob({1}), first.levels_blob()
    uninterrupted = first.step([raw("S1", [0.5] * 3, t0=T0 + 3_000)], []).alerts

    resumed = make_pipeline({}, {}, last_alert_seq=first.last_alert_seq - len(uninterrupted))
    assert resumed.restore(older, delta=delta)
    again = resumed.step([raw("S1", [0.5] * 3, t0=T0 + 3_000)], []).alerts
    assert [(a.id, a.prev, a.level, a.seq) for a in again] == \
        [(a.id, a.prev, a.level, a.seq) for a in uninterrupted]
    assert changes(again) == [("S1", "high", 3, 0)], "cleared after debounce samples, not one"

    old_way = make_pipeline({}, {}, last_alert_seq=first.last_alert_seq - len(uninterrupted))
    assert old_way.restore(older, levels)   # what earlier versions saved
    assert old_way.step([raw("S1", [0.5], t0=T0 + 3_000)], []).alerts != [], \
        "the old levels-only overlay clears after one sample (the bug the delta fixes)"


def test_a_delta_with_a_sensor_the_full_state_lacks_adds_it_and_a_bad_delta_is_ignored() -> None:
    first = make_pipeline({}, {})
    full = first.state_blob()
    first.step([raw("S0", [0.95] * 3)], [])
    settings = [SensorSettings(id=i, site="s", **LEVEL) for i in ("S0", "S1")]  # type: ignore[arg-type]
    lone = Pipeline(SensorRegistry(settings[:1]), [sensor_rules(settings[0], 0)], agent=AGENT, clock=Clock())
    assert lone.restore(None, delta=first.state_blob({0}))
    assert lone.step([raw("S0", [0.95] * 3, t0=T0 + 5_000)], []).alerts == [], "S0 resumed at level 4"
    only_s1 = make_pipeline({"id": "S1"})
    only_s1.step([raw("S1", [0.95] * 3)], [])
    both = make_pipeline({}, {})
    assert both.restore(make_pipeline({}).state_blob(), delta=only_s1.state_blob())
    assert both.step([raw("S1", [0.95] * 3, t0=T0 + 5_000)], []).alerts == []
    assert changes(both.step([raw("S0", [0.95] * 3, t0=T0 + 5_000)], []).alerts) == [("S0", "high", 0, 4)]
    fresh = make_pipeline({}, {})
    assert fresh.restore(full, delta=b"garbage")
    assert changes(fresh.step([raw("S0", [0.95] * 3)], []).alerts) == [("S0", "high", 0, 4)]


def test_saved_state_follows_sensors_by_id_when_the_config_changes() -> None:
    first = make_pipeline({}, {})
    first.step([raw("S1", [0.95] * 3)], [])
    settings = [SensorSettings(id=i, site="s", **LEVEL) for i in ("NEW", "S1")]  # type: ignore[arg-type]
    second = Pipeline(SensorRegistry(settings), [sensor_rules(s, i) for i, s in enumerate(settings)],
                      agent=AGENT, clock=Clock())
    assert second.restore(first.state_blob(), first.levels_blob())
    msgs = [raw("S1", [0.95] * 3, t0=T0 + 5_000), raw("NEW", [0.95] * 3, t0=T0 + 5_000)]
    assert changes(second.step(msgs, []).alerts) == [("NEW", "high", 0, 4)]


def test_unreadable_saved_state_starts_afresh() -> None:
    pipeline = make_pipeline({})
    assert not pipeline.restore(b"garbage", b"\x00" * 10)
    assert changes(pipeline.step([raw("S0", [0.95] * 3)], []).alerts) == [("S0", "high", 0, 4)]


@pytest.mark.parametrize("as_bin", [True, False])
def test_float32_bin_and_number_arrays_decode_alike(as_bin: bool) -> None:
    pipeline = make_pipeline({"debounce": 2})
    alerts = pipeline.step([raw("S0", [0.5, 0.75, 0.75], as_bin=as_bin)], []).alerts
    assert changes(alerts) == [("S0", "high", 0, 2)]
    assert alerts[0].value == pytest.approx(0.75)


def test_samples_sharing_a_millisecond_run_through_every_rule_of_a_profile() -> None:
    pipeline = make_pipeline({"kind": "pipe.pressure", "high": [0.6, 0.7, 0.8, 0.9], "debounce": 2})
    msgs = [raw("S0", [0.4 + 0.001 * (i % 3)], t0=T0 + i // 10, seq=i) for i in range(200)]
    msgs += [raw("S0", [0.75], t0=T0 + 100, seq=200 + i) for i in range(2)]
    alerts = pipeline.step(msgs, []).alerts
    assert ("S0", "high", 0, 2) in changes(alerts)
    assert pipeline.counters.samples == 202


def test_a_wall_clock_step_is_followed_once_two_readings_agree_and_one_odd_reading_is_ignored() -> None:
    readings = iter([0, 3_600_000, 0, 0, 3_600_000, 3_600_000, 3_600_000, 0, 0])
    clock = Clock()
    pipeline = make_pipeline({}, clock=clock, wall_offset=lambda: next(readings))
    offsets = []
    for _ in range(8):
        clock.now += 100
        pipeline.step([], [])
        offsets.append(pipeline.wall_offset_ms)
    assert offsets == [0, 0, 0, 0, 3_600_000, 3_600_000, 3_600_000, 0]
    assert pipeline.counters.clock_steps == 2
