"""The detection core: ingress in, one kernel batch, Alerts and Summaries out.

Raw MQTT payloads are decoded here, on the pipeline thread, and every block of a batch (from
MQTT, serial and Modbus alike) goes into one `RuleChain.process` and one `WindowAccumulator.add`
call: Python work is per message, never per sample. The pipeline does no I/O; the runtime
feeds it, stores what it returns in the outbox and gives it the wall clock.

Decoding: a batch of RawBlocks that all have the plain shape (float32 bin or a single float,
known sensor) is decoded by the kernels of `inputs.raw_decode`: one pass parses every payload,
one applies the `seq` rules, one writes samples and times, so Python does a few list
comprehensions per batch instead of a decode per message; that is what keeps the agent near a
bare MQTT subscriber's cost. Any other batch takes the Python path: `fast_raw_block` for the
plain shapes, the contract's `decode_raw_block` (full validation, worded errors) for the rest.
Blocks are grouped by sensor (stable, so each sensor's samples stay in arrival order) into
buffers reused from batch to batch.

Alert ids: `"{agent}:{sensor}:{rule}:{level}@{ts}"`. It is built from the event itself, so a
re-send carries the same id, and a block replayed after a crash (before its alert was stored)
raises an alert with the same id again, which consumers de-duplicate. `seq` counts alerts per
agent; the runtime persists it with each alert in the outbox.

Window rules: each closed window's features (statistics, tracked modal frequencies) go to
`WindowRules` (`trend`, `freq_shift`: settlement, creep, convergence, frequency shift; see
kernels/structural.py); their level changes become Alerts at the window's end `t1`, in the
same step. Traffic: every batch first updates the `TrafficGate` with the accelerometers'
samples, so the `spike` rule of a sensor at the same site takes a vehicle's burst for traffic.

Gap fault: a sensor is silent when nothing (samples or, for serial nodes, heartbeats) has
arrived for longer than its limit, judged by wall clock: `gap_s` from its config, else
`gap_multiple` times its learnt arrival interval (a slowly decaying maximum of the intervals
seen, at least `gap_floor_s`), else (nothing learnt yet) `gap_startup_s` after the agent or the
sensor's last arrival. It raises rule `gap` level 1 and clears to 0 on the next arrival.

Time: inputs stamp with agent time (`inputs.base.AgentClock`: the monotonic clock anchored to
the wall clock at start), and the rules, gap timers and summary windows run on it, so a step of
the wall clock (NTP, an operator, a bad RTC) neither fabricates nor hides gaps, nor freezes the
rate/anomaly/drift rules (they take a sample older than the newest as simultaneous), nor stops
summaries. What the pipeline publishes follows the wall clock: Alert `ts` of an agent-stamped
sample and of a gap, and Summary `t0`/`t1`, are agent time plus the wall clock's offset from
it; times a sender stamped (`t0`, `ts`) are its own clock and pass unchanged. A step of at
least `CLOCK_STEP_MS`, seen on two readings in a row (one odd reading is a glitch, not a step),
is counted (`clock_steps`) and logged once, and the summary window in
progress closes at once (a short window labelled in the old wall time) so the next ones align
to the new wall clock. After a step back, windows and alerts may carry wall times already used
before the step: that is what the wall clock says; alert ids stay unique since they are built
from agent time (equal to `ts` until the first step).
"""

from __future__ import annotations

import io
import logging
import math
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import numba
import numpy as np
import numpy.typing as npt
from msgpack import unpackb as _unpackb

from lifeline.contract import Alert, DecodeError, Summary, decode_raw_block, parse_topic
from lifeline.contract.messages import MAX_PAYLOAD_BYTES, SEQ_MODULUS
from lifeline.errors import TopicError
from edge_agent.inputs import raw_decode
from edge_agent.inputs.base import CLOCK, RawMessage, SampleBlock, ThrottledWarnings, now_ms
from edge_agent.kernels import (
    FAULT_RULES,
    RULE_NAMES,
    Events,
    RuleChain,
    SensorRules,
    WindowAccumulator,
)
from edge_agent.kernels.spike import TrafficGate, traffic_activity
from edge_agent.kernels.structural import WindowEvent, WindowRules, warm_up_structural
from edge_agent.registry import SensorRegistry

log = logging.getLogger(__name__)

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

GAP_RULE: Final = "gap"
#: Gaps are judged at most this often (ms): silence limits are seconds, batches milliseconds.
GAP_CHECK_MS: Final = 100
#: Each new arrival interval decays the learnt maximum by this factor before comparing.
INTERVAL_DECAY: Final = 0.99
_HALF_SEQ: Final = SEQ_MODULUS // 2
#: A change of the wall clock's offset from agent time this large (ms) is a step.
CLOCK_STEP_MS: Final = 1000
STATE_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class GapSettings:
    """How long a sensor may stay silent before its `gap` fault (see the module docstring)."""

    multiple: float = 5.0
    floor_s: float = 5.0
    startup_s: float = 300.0


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Where the agent stands in the hierarchy; every Alert and Summary carries it."""

    id: str
    district: str
    township: str


@dataclass
class PipelineCounters:
    """What the pipeline has seen since start, for the agent's status message."""

    messages: int = 0
    blocks: int = 0
    samples: int = 0
    heartbeats: int = 0
    decode_errors: int = 0
    unknown_sensor: int = 0
    seq_gaps: int = 0
    seq_duplicates: int = 0
    seq_resets: int = 0
    batches: int = 0
    alerts: int = 0
    summaries: int = 0
    clock_steps: int = 0
    #: Windows of spectral sensors without a spectrum (too few samples), or at a changed rate.
    spectra_skipped: int = 0
    rate_changes: int = 0
    #: Windows a window rule (trend, freq_shift) had no value for.
    window_rule_skips: int = 0
    #: Spike candidates taken as traffic (an accelerometer of the site saw a burst).
    spikes_traffic: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """One kernel batch: samples grouped in blocks of one sensor each, and each block's arrival."""

    values: F64Array
    times: I64Array
    block_sensor: npt.NDArray[np.int32]
    block_start: I64Array
    #: Sensors that had any arrival (samples or heartbeats), with first and last arrival time.
    arrived: npt.NDArray[np.int32]
    first_arrival: I64Array
    last_arrival: I64Array


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one pipeline step produced: alerts in seq order and at most one window summary."""

    alerts: list[Alert]
    summary: Summary | None = None


class Pipeline:
    """Turns queued input into Alerts (one per level change) and per-window Summaries."""

    def __init__(self, registry: SensorRegistry, rules: Sequence[SensorRules], *,
                 agent: AgentIdentity, window_s: float = 60.0, gap: GapSettings = GapSettings(),
                 gap_s: Sequence[float | None] | None = None,
                 expected_period_s: Sequence[float | None] | None = None,
                 last_alert_seq: int = 0, prefix: str = "lifeline/v1",
                 clock: Callable[[], int] = now_ms,
                 wall_offset: Callable[[], int | None] | None = None) -> None:
        """`clock` gives agent time (ms); `wall_offset` the wall clock minus it (default: the
        agent's CLOCK for the default clock, else 0: a test's clock is the wall clock)."""
        n = len(registry)
        self.registry = registry
        self.agent = agent
        self.counters = PipelineCounters()
        self.last_alert_seq = last_alert_seq
        self.window_ms = round(window_s * 1000)
        self.chain = RuleChain(list(rules))
        self.windows = WindowAccumulator(n, spectra=[r.spectrum for r in self.chain.rules])
        self.window_rules = WindowRules(self.chain.rules, ids=registry.ids,
                                        sites=[s.site for s in registry.sensors], window_s=window_s)
        #: Window-rule level changes not yet turned into alerts, with their window's end.
        self._window_events: list[tuple[int, WindowEvent]] = []
        self.traffic = TrafficGate([s.kind for s in registry.sensors], [s.site for s in registry.sensors],
                                   [r.spike.enabled for r in self.chain.rules])
        self._clock = clock
        self._wall_offset = wall_offset or (CLOCK.wall_offset_ms if clock is now_ms else lambda: 0)
        self._offset_ms = self._wall_offset() or 0
        #: A wall offset read once that differs by a step; followed when the next reading agrees.
        self._step_seen: int | None = None
        #: Whether each sensor's latest samples were stamped by the agent (else by the sender).
        self._agent_stamped = np.ones(n, dtype=np.bool_)
        self._warnings = ThrottledWarnings(log)
        self._ids = registry.ids
        self._kinds = [s.kind for s in registry.sensors]
        self._sites = [s.site for s in registry.sensors]
        self._topic_index = {f"{prefix}/raw/{s.id}": s.index for s in registry.mqtt_sensors()}
        self._prefix = prefix
        self._last_seq = np.full(n, -1, dtype=np.int64)
        encoded = [sensor_id.encode() for sensor_id in self._ids]
        self._id_bytes = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8)
        self._id_starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._id_starts[1:])
        self._gap = gap
        self._gap_fixed_ms = np.array([math.nan if g is None else g * 1000.0 for g in (gap_s or [None] * n)])
        periods = expected_period_s or [None] * n
        self._interval_ms = np.array([math.nan if p is None else p * 1000.0 for p in periods])
        self._last_arrival = np.full(n, -1, dtype=np.int64)
        self._last_value = np.full(n, math.nan)
        self._gap_level = np.zeros(n, dtype=np.int8)
        self._values_buf = np.empty(0, dtype=np.float64)
        self._times_buf = np.empty(0, dtype=np.int64)
        start = clock()
        self._started_ms = start
        self._gaps_checked = start - GAP_CHECK_MS
        self._window_t0 = self._window_t1 = start
        self._align_window(start)

    # ------------------------------------------------------------------ one step

    def warm_up(self) -> None:
        """Load the compiled kernels now (an empty batch), not on the first real sample."""
        values, times = np.empty(0), np.empty(0, dtype=np.int64)
        sensors, starts = np.empty(0, dtype=np.int32), np.zeros(1, dtype=np.int64)
        self.chain.process(values, times, sensors, starts)
        self.windows.add(values, sensors, starts, times)
        self.traffic.update(values, times, sensors, starts)
        traffic_activity(values, times, sensors, starts, np.zeros(1, np.int64), np.zeros((1, 5)),
                         np.zeros((1, 1)), np.zeros((1, 1), np.int64))
        fill_times(times, values, starts, times)
        group_runs(sensors, starts, times, sensors, np.empty((2, 0), dtype=np.int64), sensors,
                   starts)
        self._plain_batch([])
        warm_up_structural()

    def step(self, raw: Sequence[RawMessage], blocks: Sequence[SampleBlock],
             now: int | None = None) -> StepResult:
        """Decode and detect one batch, then check gaps and the summary window at agent time `now`."""
        now = self._clock() if now is None else now
        stepped = self._follow_wall_clock(now)
        alerts: list[Alert] = []
        batch = self.build_batch(raw, blocks)
        if batch is not None:
            events = self._run_kernels(batch)  # first: if a kernel fails, no seq has been used
            alerts += self._arrivals(batch)
            alerts += self._event_alerts(batch, events)
        if now - self._gaps_checked >= GAP_CHECK_MS or now < self._gaps_checked:
            self._gaps_checked = now
            alerts += self._check_gaps(now)
        summary = stepped or self._summary_due(now)
        alerts += self._window_alerts()
        return StepResult(alerts, summary)

    def build_batch(self, raw: Sequence[RawMessage], blocks: Sequence[SampleBlock]) -> Batch | None:
        """Decode raw messages and join them with decoded blocks, grouped by sensor in arrival
        order.

        The batch's arrays are views of buffers the next call reuses (fresh memory for every
        batch costs a page fault per 4 KiB, more than the detection itself).
        """
        if raw and not blocks:
            plain, batch = self._plain_batch(raw)
            if plain:
                return batch
        parts = _Parts()
        self._decode_raw(raw, parts)
        for block in blocks:  # serial and Modbus: stamped by the agent
            parts.explicit[len(parts.sensors)] = block.times
            parts.stamped.append(True)
            parts.add(block.sensor, block.values, len(block.values), 0, 0.0, block.received_ms)
        if not parts.sensors:
            return None
        return self._assemble(parts)

    def _plain_batch(self, raw: Sequence[RawMessage]) -> tuple[bool, Batch | None]:
        """(True, batch) for RawBlocks from known MQTT sensors that all have the plain shape,
        decoded by `raw_decode`'s kernels (batch None if every one was a duplicate); (False,
        None), having changed nothing, when any does not: the Python path then takes them."""
        topic_index = self._topic_index
        sensors = [topic_index.get(topic, -1) for topic, _, _ in raw]
        if -1 in sensors:
            return False, None
        payloads = [payload for _, payload, _ in raw]
        buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
        starts = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in payloads], out=starts[1:])
        sensor_arr = np.array(sensors, dtype=np.int64)
        parsed_i = np.empty((len(raw), raw_decode.N_INT), dtype=np.int64)
        parsed_f = np.empty((len(raw), raw_decode.N_FLOAT), dtype=np.float64)
        if raw_decode.parse_raw_blocks(buf, starts, sensor_arr, self._id_bytes, self._id_starts,
                                       parsed_i, parsed_f):
            return False, None
        counters = self.counters
        counters.messages += len(raw)
        keep = np.empty(len(raw), dtype=np.bool_)
        gaps, duplicates, resets = raw_decode.sequence_check(sensor_arr, parsed_i, self._last_seq,
                                                             keep)
        counters.seq_gaps += gaps
        counters.seq_duplicates += duplicates
        counters.seq_resets += resets
        kept = np.flatnonzero(keep)
        order = kept[np.argsort(sensor_arr[kept], kind="stable")]
        counts = parsed_i[order, raw_decode.COUNT]
        sample_starts = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(counts, out=sample_starts[1:])
        total = int(sample_starts[-1])
        self._values_buf = _grown(self._values_buf, total)
        self._times_buf = _grown(self._times_buf, total)
        values, times = self._values_buf[:total], self._times_buf[:total]
        received = np.array([recv for _, _, recv in raw], dtype=np.int64)
        raw_decode.gather_samples(buf, parsed_i, parsed_f, received, order, sample_starts, values,
                                  times)
        if not len(order):
            return True, None
        self._agent_stamped[sensor_arr[order]] = parsed_i[order, raw_decode.T0] == 0
        counters.blocks += len(order)
        counters.samples += total
        return True, self._grouped(sensor_arr[order].astype(np.int32), sample_starts,
                                   received[order], values, times)

    def _decode_raw(self, raw: Sequence[RawMessage], parts: _Parts) -> None:
        """Decode RawBlocks into `parts`; bad ones are counted and warned about."""
        topic_index, ids, last_seq = self._topic_index, self._ids, self._last_seq
        counters = self.counters
        counters.messages += len(raw)
        sensors, values, counts = parts.sensors, parts.values, parts.counts
        base, step, received = parts.base, parts.step, parts.received
        for topic, payload, recv in raw:
            idx = topic_index.get(topic)
            if idx is None:
                self._unknown_topic(topic)
                continue
            fast = fast_raw_block(payload, ids[idx])
            ts = None
            if fast is not None:
                v, t0, dt, seq = fast
                n = 1 if type(v) is float else len(v) >> 2
            else:
                try:
                    block = decode_raw_block(payload, ids[idx])
                except DecodeError as exc:
                    counters.decode_errors += 1
                    self._warnings.warn(f"decode {ids[idx]}", f"dropped a bad RawBlock on {topic}: {exc}")
                    continue
                v, t0, dt, seq, ts = block.values, block.t0, block.dt, block.seq, block.ts
                n = len(v)
            if seq is not None:
                last = int(last_seq[idx])
                last_seq[idx] = seq
                if last >= 0:
                    ahead = (seq - last) % SEQ_MODULUS
                    if ahead == 0:
                        counters.seq_duplicates += 1
                        continue
                    if ahead < _HALF_SEQ:
                        counters.seq_gaps += ahead - 1
                    else:
                        counters.seq_resets += 1
            parts.stamped.append(ts is None and not t0)
            if ts is not None:
                parts.explicit[len(sensors)] = ts
                base.append(0)
                step.append(0.0)
            else:
                dt = dt or 0.0
                base.append(t0 if t0 else recv - round((n - 1) * dt))
                step.append(dt)
            sensors.append(idx)
            values.append(v)
            counts.append(n)
            received.append(recv)

    def _unknown_topic(self, topic: str) -> None:
        self.counters.unknown_sensor += 1
        try:
            sensor = parse_topic(self._prefix, topic).sensor
        except TopicError as exc:
            self._warnings.warn("topic", f"dropped a RawBlock: {exc}")
            return
        self._warnings.warn(f"unknown {sensor}", f"dropped a RawBlock for {sensor!r}, which is not an "
                            "MQTT sensor of this agent")

    def _assemble(self, parts: _Parts) -> Batch:
        """Group entries by sensor (stable, so each sensor keeps arrival order) into one Batch."""
        sensor_arr = np.array(parts.sensors, dtype=np.int32)
        order = np.argsort(sensor_arr, kind="stable")
        n = np.array(parts.counts, dtype=np.int64)[order]
        starts = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(n, out=starts[1:])
        total = int(starts[-1])
        self._values_buf = _grown(self._values_buf, total)
        self._times_buf = _grown(self._times_buf, total)
        value_arr, time_arr = self._values_buf[:total], self._times_buf[:total]
        if total:
            values = parts.values
            _join_values([values[i] for i in order.tolist()], value_arr)
        fill_times(np.array(parts.base, dtype=np.int64)[order],
                   np.array(parts.step, dtype=np.float64)[order], starts, time_arr)
        if parts.explicit:
            position = np.empty(len(order), dtype=np.int64)
            position[order] = np.arange(len(order))
            for entry, times in parts.explicit.items():
                at = int(starts[position[entry]])
                time_arr[at:at + len(times)] = times
        self._agent_stamped[sensor_arr[order]] = np.array(parts.stamped, dtype=np.bool_)[order]
        counters = self.counters
        blocks = int(np.count_nonzero(n))
        counters.blocks += blocks
        counters.heartbeats += len(n) - blocks
        counters.samples += total
        return self._grouped(sensor_arr[order], starts,
                             np.array(parts.received, dtype=np.int64)[order], value_arr, time_arr)

    @staticmethod
    def _grouped(sensor: npt.NDArray[np.int32], starts: I64Array, received: I64Array,
                 values: F64Array, times: I64Array) -> Batch:
        """The Batch of entries sorted by sensor: one block per sensor with samples."""
        entries = len(sensor)
        arrived = np.empty(entries, dtype=np.int32)
        arrival = np.empty((2, entries), dtype=np.int64)
        block_sensor = np.empty(entries, dtype=np.int32)
        block_start = np.empty(entries + 1, dtype=np.int64)
        n_arrived, n_blocks = group_runs(sensor, starts, received, arrived, arrival, block_sensor,
                                         block_start)
        return Batch(values, times, block_sensor[:n_blocks], block_start[:n_blocks + 1],
                     arrived[:n_arrived], arrival[0, :n_arrived], arrival[1, :n_arrived])

    # ------------------------------------------------------------------ detection

    def _run_kernels(self, batch: Batch) -> Events | None:
        """Run the rule chain and the window features over the batch."""
        if len(batch.block_sensor) == 0:
            return None
        self.counters.batches += 1
        self.traffic.update(batch.values, batch.times, batch.block_sensor, batch.block_start)
        events = self.chain.process(batch.values, batch.times, batch.block_sensor, batch.block_start,
                                    self.traffic)
        self.windows.add(batch.values, batch.block_sensor, batch.block_start, batch.times)
        ends = batch.block_start[1:] - 1
        self._last_value[batch.block_sensor] = batch.values[ends]
        return events

    def _event_alerts(self, batch: Batch, events: Events | None) -> list[Alert]:
        """One Alert per level change the kernels reported, in sample order."""
        if events is None or len(events) == 0:
            return []
        values, times = batch.values, batch.times
        alerts = []
        for s, r, level, prev, i, limit, score in zip(
                events.sensor.tolist(), events.rule.tolist(), events.level.tolist(),
                events.prev.tolist(), events.index.tolist(), events.limit.tolist(),
                events.score.tolist()):
            rule = RULE_NAMES[r]
            extra: dict[str, Any] = {}
            if not math.isnan(score):
                extra["score"] = score
            if rule in FAULT_RULES:
                extra["fault"] = True
            alerts.append(self._alert(s, rule, level, prev, float(values[i]), int(times[i]),
                                      None if math.isnan(limit) else limit, extra))
        return alerts

    def _alert(self, sensor: int, rule: str, level: int, prev: int, value: float, ts: int,
               limit: float | None, extra: dict[str, Any], *, agent_time: bool | None = None) -> Alert:
        """The next Alert in seq order, for a sample at `ts` (agent time if `agent_time`, which
        defaults to how the sensor's samples are stamped; else the sender's time)."""
        self.last_alert_seq += 1
        self.counters.alerts += 1
        sensor_id = self._ids[sensor]
        if agent_time is None:
            agent_time = bool(self._agent_stamped[sensor])
        key = ts
        if agent_time:
            ts += self._offset_ms
        return Alert(
            id=f"{self.agent.id}:{sensor_id}:{rule}:{level}@{key}", agent=self.agent.id,
            sensor=sensor_id, kind=self._kinds[sensor], site=self._sites[sensor],
            township=self.agent.township, district=self.agent.district, rule=rule, level=level,
            prev=prev, value=value, ts=ts, seq=self.last_alert_seq, limit=limit, extra=extra or None,
        )

    # ------------------------------------------------------------------ gaps

    def _arrivals(self, batch: Batch) -> list[Alert]:
        """Learn arrival intervals and clear the gap of every sensor that sent something."""
        s = batch.arrived
        prev = self._last_arrival[s]
        seen = prev >= 0
        interval = (batch.first_arrival - prev).astype(np.float64)
        learnt = self._interval_ms[s]
        decayed = np.where(np.isnan(learnt), interval, np.fmax(learnt * INTERVAL_DECAY, interval))
        self._interval_ms[s] = np.where(seen, decayed, learnt)
        self._last_arrival[s] = batch.last_arrival
        cleared = s[self._gap_level[s] > 0]
        alerts = []
        for sensor in cleared.tolist():
            self._gap_level[sensor] = 0
            value = self._first_value(batch, sensor)
            alerts.append(self._alert(sensor, GAP_RULE, 0, 1, value[0], value[1], None,
                                      {"fault": True},
                                      agent_time=self._first_stamped_by_agent(batch, sensor)))
        return alerts

    def _first_value(self, batch: Batch, sensor: int) -> tuple[float, int]:
        """The first sample of `sensor` in the batch, or its last known value at its arrival time."""
        hit = np.flatnonzero(batch.block_sensor == sensor)
        if len(hit):
            i = int(batch.block_start[hit[0]])
            return float(batch.values[i]), int(batch.times[i])
        last = self._last_value[sensor]
        return (0.0 if math.isnan(last) else float(last)), int(self._last_arrival[sensor])

    def _first_stamped_by_agent(self, batch: Batch, sensor: int) -> bool:
        """Whether `_first_value` of `sensor` is in agent time."""
        return not np.any(batch.block_sensor == sensor) or bool(self._agent_stamped[sensor])

    def gap_limits_ms(self) -> F64Array:
        """Each sensor's current silence limit in ms (see the module docstring)."""
        g = self._gap
        learnt = np.fmax(self._interval_ms * g.multiple, g.floor_s * 1000.0)
        limit = np.where(np.isnan(self._interval_ms), g.startup_s * 1000.0, learnt)
        return np.where(np.isnan(self._gap_fixed_ms), limit, self._gap_fixed_ms)

    def _check_gaps(self, now: int) -> list[Alert]:
        """Raise `gap` for every sensor silent beyond its limit (agent time: steps of the wall
        clock do not count)."""
        since = np.where(self._last_arrival >= 0, self._last_arrival, self._started_ms)
        silent = (now - since) > self.gap_limits_ms()
        raised = np.flatnonzero(silent & (self._gap_level == 0))
        alerts = []
        for sensor in raised.tolist():
            self._gap_level[sensor] = 1
            last = self._last_value[sensor]
            silent_s = (now - int(since[sensor])) / 1000.0
            alerts.append(self._alert(sensor, GAP_RULE, 1, 0, 0.0 if math.isnan(last) else float(last),
                                      now, None, {"fault": True, "silent_s": silent_s}, agent_time=True))
        return alerts

    def sensors_in_gap(self) -> int:
        """How many sensors have their `gap` fault raised now."""
        return int(np.count_nonzero(self._gap_level))

    # ------------------------------------------------------------------ summaries

    def _summary_due(self, now: int) -> Summary | None:
        """The summary of the window that ended at or before `now`, if one did (None if it was empty)."""
        if now < self._window_t1:
            return None
        off = self._offset_ms
        summary = self.summary(self._window_t0 + off, self._window_t1 + off)
        self._align_window(now)
        return summary

    def _align_window(self, now: int) -> None:
        """Start the window that holds `now`, aligned to the wall clock (agent time bounds)."""
        wall = now + self._offset_ms
        self._window_t0 = wall - wall % self.window_ms - self._offset_ms
        self._window_t1 = self._window_t0 + self.window_ms

    def _follow_wall_clock(self, now: int) -> Summary | None:
        """Notice a step of the wall clock: count and log it, close the window in progress (its
        summary, labelled in the old wall time, is returned) and realign windows to the new one."""
        offset = self._wall_offset()
        if offset is None:
            return None
        if abs(offset - self._offset_ms) < CLOCK_STEP_MS:
            self._step_seen = None
            return None
        if self._step_seen is None or abs(offset - self._step_seen) >= CLOCK_STEP_MS:
            self._step_seen = offset  # one reading is not a step: a racing or glitching clock read
            return None
        self._step_seen = None
        step, old = offset - self._offset_ms, self._offset_ms
        self.counters.clock_steps += 1
        log.warning("the wall clock stepped %s by %.3f s; published times follow it, gap timers, "
                    "rules and windows keep agent time", "forward" if step > 0 else "back",
                    abs(step) / 1000)
        summary = self.summary(self._window_t0 + old, max(now, self._window_t0 + 1) + old)
        self._offset_ms = offset
        self._align_window(now)
        self._window_t0 = now  # the window in progress starts now and ends on the new wall clock's grid
        return summary

    @property
    def wall_offset_ms(self) -> int:
        """The wall clock minus agent time, as last followed (0 until the wall clock steps)."""
        return self._offset_ms

    def summary(self, t0: int, t1: int) -> Summary | None:
        """Take the window features gathered so far as the Summary of [t0, t1) (None if no
        data) and run the window rules on them (their alerts come with the next step)."""
        features = self.windows.take(duration_ms=t1 - t0)
        self._window_events += [(t1, e) for e in self.window_rules.step(features, t0, t1)]
        counters = self.counters
        counters.spectra_skipped = self.windows.counters["spectra_skipped"]
        counters.rate_changes = self.windows.counters["rate_changes"]
        counters.window_rule_skips = self.window_rules.counters["window_rule_skips"]
        counters.spikes_traffic = self.chain.spikes_taken_as_traffic()
        rows = np.flatnonzero(np.asarray(features.n) > 0)
        if len(rows) == 0:
            return None
        extra: dict[str, F64Array] = {}
        columns = {"rms": features.rms, "f_peak": features.f_peak, "f_shift": features.f_shift,
                   **features.modes}
        for name, column in columns.items():
            if not np.all(np.isnan(np.asarray(column)[rows])):
                extra[name] = np.asarray(column, dtype=np.float64)[rows]
        self.counters.summaries += 1
        return Summary(
            agent=self.agent.id, township=self.agent.township, district=self.agent.district,
            t0=t0, t1=t1, sensor=[self._ids[i] for i in rows.tolist()],
            kind=[self._kinds[i] for i in rows.tolist()], site=[self._sites[i] for i in rows.tolist()],
            n=np.asarray(features.n, dtype=np.int64)[rows],
            min=np.asarray(features.min, dtype=np.float64)[rows],
            max=np.asarray(features.max, dtype=np.float64)[rows],
            mean=np.asarray(features.mean, dtype=np.float64)[rows],
            last=np.asarray(features.last, dtype=np.float64)[rows], extra=extra,
        )

    def _window_alerts(self) -> list[Alert]:
        """Alerts of the window rules' level changes since the last step (times: window ends,
        already wall clock)."""
        events, self._window_events = self._window_events, []
        return [self._alert(e.sensor, e.rule, e.level, e.prev, e.value, t1, e.limit, e.extra,
                            agent_time=False) for t1, e in events]

    # ------------------------------------------------------------------ durable state

    def levels_blob(self) -> bytes:
        """The current level of every (sensor, rule), small enough to store with every alert."""
        return _savez(ids=np.array(self._ids), levels=self.chain.levels(), gap=self._gap_level,
                      window_levels=self.window_rules.row_levels())

    def state_blob(self, sensors: Collection[int] | None = None) -> bytes:
        """The full detection state (kernel and window state, gap levels, learnt intervals, seqs,
        window rules) of every sensor, or only of `sensors` (indices): a delta that `restore` lays
        over a full one. A delta leaves the window rules out: they change only when a window
        closes, and every summary is saved with the full state."""
        rows: npt.NDArray[np.intp] | slice = (slice(None) if sensors is None
                                             else np.array(sorted(sensors), dtype=np.intp))
        chain = {f"chain_{k}": v if k in _UNROWED else v[rows]
                 for k, v in self.chain.state_arrays().items()}
        windows = {f"win_{k}": v[rows] for k, v in self.windows.state_arrays().items()}
        window_rules = ({} if sensors is not None else
                        {f"wr_{k}": v for k, v in self.window_rules.state_arrays().items()})
        return _savez(ids=np.array(self._ids)[rows], gap=self._gap_level[rows],
                      interval=self._interval_ms[rows], last_value=self._last_value[rows],
                      last_seq=np.array(self._last_seq, dtype=np.int64)[rows], **chain, **windows,
                      **window_rules)

    def restore(self, state: bytes | None, levels: bytes | None = None, *,
                delta: bytes | None = None) -> bool:
        """Resume from saved blobs: the full state with the `delta` (state of some sensors saved
        later) laid over it; `levels` (levels saved with the latest alert by older versions,
        which saved no delta) only when there is no delta.

        Sensors are matched by id, so after a config change the sensors that stayed resume and
        new ones start fresh. Unreadable or incompatible blobs are skipped with a warning.
        """
        restored = False
        arrays = _loadz(state) if state else None
        later = _loadz(delta) if delta else None
        if later is not None:
            arrays = later if arrays is None else _laid_over(arrays, later)
        if arrays is not None:
            rows = self._saved_rows(arrays["ids"])
            try:
                self.chain.load_state({k[6:]: v for k, v in arrays.items() if k.startswith("chain_")},
                                      rows.tolist())
            except ValueError as exc:
                log.warning("saved rule state does not fit this version (%s); rules start afresh", exc)
            else:
                have = rows >= 0
                self._gap_level[have] = arrays["gap"][rows[have]]
                learnt = arrays["interval"][rows[have]]
                self._interval_ms[have] = np.where(np.isnan(self._interval_ms[have]), learnt,
                                                   self._interval_ms[have])
                self._last_value[have] = arrays["last_value"][rows[have]]
                for i, r in zip(np.flatnonzero(have).tolist(), rows[have].tolist()):
                    self._last_seq[i] = int(arrays["last_seq"][r])
                self._restore_windows(arrays, rows)
                self._restore_window_rules(arrays, rows)
                restored = True
        arrays = _loadz(levels) if levels and delta is None else None
        if arrays is not None:
            rows = self._saved_rows(arrays["ids"])
            current = self.chain.state_arrays()
            saved_levels = arrays["levels"]
            if saved_levels.ndim == 2 and saved_levels.shape[1] == current["levels"].shape[1]:
                have = rows >= 0
                current["levels"][have] = saved_levels[rows[have]]
                self.chain.load_state(current)
                self._gap_level[have] = arrays["gap"][rows[have]]
                restored = True
            if "window_levels" in arrays:
                self.window_rules.load_row_levels(arrays["window_levels"], rows)
        return restored

    def _saved_rows(self, saved_ids: np.ndarray) -> npt.NDArray[np.intp]:
        """For each sensor, its row in saved arrays (-1: not saved)."""
        where = {str(sensor_id): i for i, sensor_id in enumerate(saved_ids.tolist())}
        return np.array([where.get(i, -1) for i in self._ids], dtype=np.intp)

    def _restore_windows(self, arrays: dict[str, np.ndarray], rows: npt.NDArray[np.intp]) -> None:
        have = rows >= 0
        current = self.windows.state_arrays()
        for key, column in current.items():
            saved = arrays.get(f"win_{key}")
            if saved is not None and saved.dtype == column.dtype and saved.shape[1:] == column.shape[1:]:
                column[have] = saved[rows[have]]
        self.windows.load_state(current)

    def _restore_window_rules(self, arrays: dict[str, np.ndarray], rows: npt.NDArray[np.intp]) -> None:
        saved = {k[3:]: v for k, v in arrays.items() if k.startswith("wr_")}
        if not saved:
            return
        try:
            self.window_rules.load_state(saved, rows)
        except (ValueError, IndexError) as exc:
            log.warning("saved window-rule state does not fit this version (%s); trend and "
                        "freq_shift learn their references afresh", exc)


_I64_MAX: Final = 2**63 - 1
_RAW_KEYS: Final = frozenset({"v", "sensor", "values", "t0", "dt", "seq"})


def fast_raw_block(payload: bytes | bytearray, sensor: str) -> tuple[Any, int, float | None, int | None] | None:
    """(values, t0, dt, seq) of a plain RawBlock for `sensor`, or None to use decode_raw_block.

    A fast path for the common shapes (float32 bin, or a single float), taking only what
    `decode_raw_block` accepts: anything else, valid or not, goes to it, so errors read the same.
    Values come back as the bin's `bytes` (little-endian float32) or a single Python float, so
    a batch turns them into one array with one join and one cast, not an array per message.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        obj = _unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception:  # noqa: BLE001  # msgpack raises many types; decode_raw_block names them
        return None
    if type(obj) is not dict or not obj.keys() <= _RAW_KEYS:
        return None
    get = obj.get
    if get("v") != 1 or type(get("v")) is not int or get("sensor") != sensor:
        return None  # (a str equal to `sensor` is the only value equal to it)
    values = get("values")
    if type(values) is bytes:
        if not values or len(values) & 3:
            return None
    elif type(values) is list and len(values) == 1 and type(values[0]) is float:
        values = values[0]
    else:
        return None
    t0 = get("t0")
    if t0 is None:
        t0 = 0
    elif type(t0) is not int or not 0 <= t0 <= _I64_MAX:
        return None
    seq = get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq < SEQ_MODULUS):
        return None
    dt = get("dt")
    if dt is not None:
        if type(dt) is int:
            dt = float(dt)
        if type(dt) is not float or not (dt > 0 and math.isfinite(dt)):
            return None
    elif type(values) is bytes and len(values) >= 8:
        return None
    return values, t0, dt, seq


@numba.njit(cache=True, nogil=True)
def fill_times(base: I64Array, step: F64Array, starts: I64Array, out: I64Array) -> None:
    """Sample times of regularly spaced blocks: block b's j-th sample at base[b] + rint(j * step[b])."""
    for b in range(base.shape[0]):
        t, dt = base[b], step[b]
        block = out[starts[b]:starts[b + 1]]  # indices from 0: no wraparound, so it vectorises
        if dt == np.floor(dt):  # whole milliseconds, the usual case: no rounding per sample
            whole = np.int64(dt)
            for j in range(block.shape[0]):
                block[j] = t + j * whole
        else:
            for j in range(block.shape[0]):
                block[j] = t + np.int64(np.rint(j * dt))


@numba.njit(cache=True, nogil=True)
def group_runs(sensor: npt.NDArray[np.int32], starts: I64Array, received: I64Array,
               arrived: npt.NDArray[np.int32], arrival: I64Array,
               block_sensor: npt.NDArray[np.int32], block_start: I64Array) -> tuple[int, int]:
    """From entries sorted by sensor: each sensor's first and last arrival (`arrival` rows 0 and 1)
    and one block per sensor with samples. Returns (sensors arrived, blocks)."""
    n_arrived, n_blocks = 0, 0
    for e in range(sensor.shape[0]):
        s, t = sensor[e], received[e]
        if e == 0 or s != sensor[e - 1]:
            arrived[n_arrived] = s
            arrival[0, n_arrived], arrival[1, n_arrived] = t, t
            n_arrived += 1
        else:
            arrival[0, n_arrived - 1] = min(arrival[0, n_arrived - 1], t)
            arrival[1, n_arrived - 1] = max(arrival[1, n_arrived - 1], t)
        if starts[e + 1] > starts[e]:
            if n_blocks == 0 or block_sensor[n_blocks - 1] != s:
                block_sensor[n_blocks] = s
                block_start[n_blocks] = starts[e]
                n_blocks += 1
            block_start[n_blocks] = starts[e + 1]
    if n_blocks == 0:
        block_start[0] = 0
    return n_arrived, n_blocks


def _savez(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **{"format": np.array(STATE_FORMAT), **arrays})  # type: ignore[arg-type]
    return out.getvalue()


def _loadz(blob: bytes) -> dict[str, np.ndarray] | None:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        log.warning("saved detection state is unreadable (%s); starting detection afresh", exc)
        return None
    if int(arrays.pop("format", -1)) != STATE_FORMAT:
        return None
    return arrays


#: Chain state arrays that are not one row per sensor.
_UNROWED: Final = frozenset({"layout"})


def _laid_over(full: dict[str, np.ndarray], delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`full` with the rows of the sensors in `delta` replaced by theirs (sensors new in `delta`
    appended); `full` alone (with a warning) if the two do not fit together."""
    where = {str(sensor_id): i for i, sensor_id in enumerate(full["ids"].tolist())}
    delta_ids = [str(sensor_id) for sensor_id in delta["ids"].tolist()]
    known = [i for i, sensor_id in enumerate(delta_ids) if sensor_id in where]
    new = [i for i, sensor_id in enumerate(delta_ids) if sensor_id not in where]
    target = np.array([where[delta_ids[i]] for i in known], dtype=np.intp)
    out: dict[str, np.ndarray] = {}
    try:
        for key, column in full.items():
            if key.startswith("wr_") or (key[6:] in _UNROWED and key.startswith("chain_")):
                out[key] = column  # not one row per sensor (window rules: rows by sensor index)
                continue
            other = delta[key]
            merged = column.astype(np.result_type(column, other)) if key == "ids" else column.copy()
            merged[target] = other[known]
            out[key] = np.concatenate([merged, other[new]]) if new else merged
    except (KeyError, ValueError, IndexError) as exc:
        log.warning("saved detection state and its later delta do not fit together (%s); "
                    "resuming from the full state alone", exc)
        return full
    return out


class _Parts:
    """A batch being gathered: parallel lists, one entry per message or block.

    `values` entries are float32 bins (`bytes`), single floats, or arrays; `explicit` maps an
    entry to its own sample times (RawBlock `ts`, serial and Modbus blocks).
    """

    __slots__ = ("sensors", "values", "counts", "base", "step", "received", "explicit", "stamped")

    def __init__(self) -> None:
        self.sensors: list[int] = []
        self.values: list[Any] = []
        self.counts: list[int] = []
        self.base: list[int] = []
        self.step: list[float] = []
        self.received: list[int] = []
        self.explicit: dict[int, I64Array] = {}
        #: Whether each entry's times were stamped by the agent (no sender `t0`/`ts`).
        self.stamped: list[bool] = []

    def add(self, sensor: int, values: Any, count: int, base: int, step: float,
            received: int) -> None:
        """Append one entry."""
        self.sensors.append(sensor)
        self.values.append(values)
        self.counts.append(count)
        self.base.append(base)
        self.step.append(step)
        self.received.append(received)


def _grown(buffer: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """`buffer` if it holds `size` items, else a new one with room to spare."""
    if len(buffer) >= size:
        return buffer
    return np.empty(max(size, 2 * len(buffer)), dtype=buffer.dtype)


def _join_values(ordered: list[Any], out: F64Array) -> None:
    """Write the entries' samples, in order, into `out` (float64): one cast per bin straight
    into place (no joined temporary: a fresh megabyte costs a page fault per 4 KiB), one
    conversion for a batch of single floats."""
    if all(type(v) is float for v in ordered):
        out[:] = ordered
        return
    arrays = [np.frombuffer(v, dtype="<f4") if type(v) is bytes else
              np.array((v,)) if type(v) is float else v for v in ordered]
    np.concatenate(arrays, out=out, casting="same_kind")
