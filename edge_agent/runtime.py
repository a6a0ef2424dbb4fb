"""`lifeline agent`: wires config, inputs, pipeline, outbox and uplink together and runs them.

Threads: one MQTT network thread for RawBlocks, one reader per serial port, one poller per
Modbus bus, the uplink's own, and the pipeline on the main thread. The pipeline sleeps until
input arrives (at most `IDLE_STEP_S`), runs at most one batch per `batch_interval_ms` (more
often when a batch's worth is queued), and appends what it found to the outbox in one
transaction with the alert counter and the rule levels, so `kill -9` loses nothing already
detected and a restart does not raise the same alert again. SIGTERM or SIGINT stops the
inputs, processes what is queued, saves the full detection state and lets the uplink drain for
a few seconds before exiting 0.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

from edge_agent.config import AgentConfig, sensor_rules
from edge_agent.inputs.base import Ingress, ThrottledWarnings
from edge_agent.inputs.mqtt_raw import RawMqttInput
from edge_agent.kernel_cache import WarmReport
from edge_agent.outbox import OutboundMessage, Outbox, OutboxError
from edge_agent.pipeline import AgentIdentity, GapSettings, Pipeline, StepResult
from edge_agent.registry import SensorRegistry
from edge_agent.statelock import StateDirLock
from lifeline import __version__
from lifeline.contract import alert_topic, summary_topic
from lifeline.errors import ConfigError, LifelineError
from lifeline.jitcache import kernel_cache_dir
from lifeline.progress import stage_progress

log = logging.getLogger(__name__)

OUTBOX_FILE: Final = "outbox.sqlite"
STATE_KEY: Final = "detection"
#: The state of the sensors that changed level since the last full save (see `Agent._store`).
DELTA_KEY: Final = "detection-delta"
#: Levels saved with each alert by versions before the delta (read, never written).
LEVELS_KEY: Final = "levels"
#: Agents with at most this many sensors store their full detection state with every output.
FULL_STATE_SENSORS: Final = 64
#: Otherwise the full state goes with a summary, a periodic save, or the first alert after this
#: many seconds; other alerts take only the state of the sensors that changed level since.
FULL_STATE_EVERY_S: Final = 2.0
#: Seconds the uplink may take to drain on shutdown.
STOP_TIMEOUT_S: Final = 3.0
#: Disk space (bytes) the outbox holds back beside it, given up when the disk is full so the
#: outbox can still make room (see `edge_agent.outbox`).
OUTBOX_RESERVE_BYTES: Final = 4 << 20
#: Longest sleep of an idle pipeline: gap checks and summary windows need a step this often.
IDLE_STEP_S: Final = 0.1
#: Alerts of one batch logged one per line; beyond this, one line says how many more.
ALERT_LOG_LINES: Final = 20
#: glibc `mallopt` parameter and the free heap (bytes) the agent keeps instead of returning it.
_M_TRIM_THRESHOLD: Final = -1
KEEP_FREE_HEAP: Final = 32 << 20


def freeze_startup_objects() -> None:
    """Exempt everything built at start-up from the cyclic garbage collector.

    Loading numba and the config leaves hundreds of thousands of long-lived objects, and every
    message allocates a few containers, so without this the collector's periodic full passes
    over that heap cost the pipeline thread more CPU than detection itself.
    """
    gc.collect()
    gc.freeze()


def keep_freed_heap(keep_bytes: int = KEEP_FREE_HEAP) -> bool:
    """Ask glibc's malloc to keep up to `keep_bytes` of freed heap rather than hand it back.

    Every batch frees up to a megabyte of payloads that the next batch allocates again; handed
    back, each 4 KiB page costs a fault when it is reused (measured in-process: about a tenth
    of the pipeline's CPU on 1000-sample blocks). A no-op (False) where the C library has no
    `mallopt`.
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_TRIM_THRESHOLD, keep_bytes))
    except (OSError, AttributeError):
        return False


def precompile() -> int:
    """Compile (or load from numba's on-disk cache) every kernel the agent calls, with progress."""
    from edge_agent.kernel_cache import precompile as compile_all

    with stage_progress("compiling kernels", log=log) as on_stage:
        report = compile_all(on_stage)
    log.info("kernels ready in %.1f s (%s) in %s", report.seconds,
             f"compiled {report.compiled} signature(s)" if report.cold else "all from the on-disk cache",
             kernel_cache_dir())
    return 0


class Agent:
    """One running agent: everything `run_agent` builds from the config, and its main loop."""

    def __init__(self, config: AgentConfig) -> None:
        from edge_agent.uplink import Uplink

        self.config = config
        a = config.agent
        self.started = time.monotonic()
        self.registry = SensorRegistry.from_config(config)
        try:
            rules = [sensor_rules(s, i) for i, s in enumerate(config.sensor)]
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        started_ms = time.time_ns() // 1_000_000
        self.state_lock = StateDirLock(Path(a.state_dir), agent_id=a.id).acquire()
        self.outbox = Outbox(Path(a.state_dir) / OUTBOX_FILE, max_messages=a.outbox_max_messages,
                             reserve_bytes=OUTBOX_RESERVE_BYTES)
        self.pipeline = Pipeline(
            self.registry, rules, agent=AgentIdentity(a.id, a.district, a.township),
            window_s=a.window_s, prefix=config.raw_input_settings().prefix,
            gap=GapSettings(multiple=a.gap_multiple, floor_s=a.gap_floor_s, startup_s=a.gap_startup_s),
            gap_s=[s.gap_s for s in config.sensor],
            expected_period_s=[s.period_s if s.source == "modbus" else None for s in config.sensor],
            last_alert_seq=self.outbox.last_alert_seq,
        )
        for report in (r for r in self.outbox.damage_reports() if r.at_ms < started_ms):
            log.warning("outbox damaged at %s (%s) is kept as %s: status fault outbox_damaged "
                        "stands until an operator has looked at it and removed it",
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.at_ms / 1000)),
                        report.cause, report.file)
        if self.pipeline.restore(self.outbox.load_state(STATE_KEY), self.outbox.load_state(LEVELS_KEY),
                                 delta=self.outbox.load_state(DELTA_KEY)):
            log.info("resumed detection state; last alert seq %d", self.outbox.last_alert_seq)
        #: Sensors whose level changed since the last full save, and when that save was.
        self._changed_sensors: set[int] = set()
        self._full_saved_at = -float("inf")
        self.ingress = Ingress()
        self.raw_input: RawMqttInput | None = None
        if self.registry.mqtt_sensors():
            raw = config.raw_input_settings()
            self.raw_input = RawMqttInput(raw, client_id=raw.client_id if config.raw_mqtt and raw.client_id
                                          else f"{a.id}-raw", ingress=self.ingress,
                                          qos=config.raw_mqtt.qos if config.raw_mqtt else 1)
        self.serial: list[Any] = []
        self.modbus: list[Any] = []
        if self.registry.serial_ports():  # imported only when used: every module costs memory
            from edge_agent.inputs.serial_port import SerialPortReader

            self.serial = [SerialPortReader(plan, self.ingress) for plan in self.registry.serial_ports()]
        if self.registry.modbus_buses():
            from edge_agent.inputs.modbus import ModbusBus

            self.modbus = [ModbusBus(plan, self.ingress, timeout_s=a.modbus_timeout_s)
                           for plan in self.registry.modbus_buses()]
        self.uplink = Uplink(config.mqtt, agent_id=a.id, outbox=self.outbox, status=self.status,
                             status_interval_s=a.status_interval_s)
        self.warm = WarmReport(0.0, 0)
        self._stop = threading.Event()
        self._errors = ThrottledWarnings(log)
        self._step_errors = 0
        self._prefix = config.mqtt.prefix
        self._save_state()  # every later delta lies over a full state of this config

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Start every thread, run the pipeline until SIGTERM/SIGINT, then shut down cleanly."""
        self._install_signals()
        a = self.config.agent
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.registry.count_by_source().items()))
        raw = f"; raw input {self.raw_input.settings.url}" if self.raw_input else ""
        log.info("agent %s (%s/%s) v%s starting: %d sensor(s) (%s); uplink %s%s; state in %s",
                 a.id, a.district, a.township, __version__, len(self.registry), counts or "none",
                 self.config.mqtt.url, raw, a.state_dir)
        keep_freed_heap()
        self._warm_kernels()
        freeze_startup_objects()
        self.uplink.start()
        if self.raw_input:
            self.raw_input.start()
        for reader in self.serial:
            reader.start()
        for bus in self.modbus:
            bus.start()
        interval_s = a.batch_interval_ms / 1000.0
        next_save = time.monotonic() + a.state_save_s
        last_step = 0.0
        while not self._stop.is_set():
            if not self.ingress.pending():
                self.ingress.arrived.wait(IDLE_STEP_S)  # first arrival, or time for gap checks
            # gather a batch: at most one step per interval unless a batch's worth is queued
            delay = last_step + interval_s - time.monotonic()
            if delay > 0 and self.ingress.pending():
                self.ingress.wake.wait(delay)
            last_step = time.monotonic()
            self._step()
            if last_step >= next_save:
                self._save_state()
                next_save = time.monotonic() + a.state_save_s
        return self._shutdown()

    def _warm_kernels(self) -> None:
        """Load the kernels before the inputs start, saying so (a cold cache compiles for a while)."""
        from edge_agent.kernel_cache import warm_agent

        with stage_progress("loading kernels", log=log) as on_stage:
            self.warm = warm_agent(self.pipeline, serial=bool(self.serial), on_stage=on_stage)
        if self.warm.cold:
            log.warning("kernels compiled in %.1f s (%d signature(s)): the kernel cache %s was cold; "
                        "`lifeline precompile` fills it ahead (deploy/install.sh runs it)",
                        self.warm.seconds, self.warm.compiled, kernel_cache_dir())
        else:
            log.info("kernels loaded from the cache %s in %.1f s", kernel_cache_dir(), self.warm.seconds)

    def stop(self) -> None:
        """Ask the main loop to finish (safe from a signal handler or another thread)."""
        self._stop.set()
        self.ingress.wake.set()
        self.ingress.arrived.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s; flushing and stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _shutdown(self) -> int:
        """Stop inputs, process what they queued, save state, let the uplink drain, close."""
        self.ingress.close()
        if self.raw_input:
            self.raw_input.stop()
        for reader in self.serial:
            reader.stop()
        for bus in self.modbus:
            bus.stop()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while True:  # what was queued before the inputs stopped is processed and stored
            self._step()
            if not self.ingress.pending() or time.monotonic() > deadline:
                break
        self._save_state()
        self.uplink.stop(timeout_s=STOP_TIMEOUT_S)
        pending = self.outbox.counters()
        self.outbox.close()
        self.state_lock.release()
        log.info("agent %s stopped; %d alert(s) and %d summary(ies) wait in the outbox",
                 self.config.agent.id, pending.pending_alerts, pending.pending_summaries)
        return 0

    # ------------------------------------------------------------------ pipeline

    def _step(self) -> None:
        """One batch: drain inputs, detect, store alerts and summaries durably, wake the uplink."""
        raw, blocks = self.ingress.drain()
        try:
            result = self.pipeline.step(raw, blocks)
        except (LifelineError, ValueError, IndexError, ArithmeticError) as exc:
            # A batch the pipeline cannot handle is dropped; the agent must keep running.
            self._step_errors += 1
            self._errors.warn("step", f"dropped a batch of {len(raw)} message(s) and {len(blocks)} "
                              f"block(s): {type(exc).__name__}: {exc}")
            return
        self._store(result)

    def _store(self, result: StepResult) -> None:
        messages = [OutboundMessage(alert_topic(self._prefix, a.district, a.site, a.sensor),
                                    a.encode(), "alert") for a in result.alerts]
        if result.summary is not None:
            messages.append(OutboundMessage(summary_topic(self._prefix, self.config.agent.id),
                                            result.summary.encode(), "summary"))
        if not messages:
            return
        changed = self._changed_sensors | {self.registry.index[a.sensor] for a in result.alerts}
        state = self._state_with(result, changed)
        try:
            self.outbox.append(messages, last_alert_seq=self.pipeline.last_alert_seq if result.alerts
                               else None, state=state)
        except OutboxError as exc:
            log.error("%s; %d alert(s) of this batch are lost", exc, len(result.alerts))
            return
        self._changed_sensors = set() if STATE_KEY in state else changed
        if STATE_KEY in state:
            self._full_saved_at = time.monotonic()
        self.uplink.wake()
        _log_alerts(result.alerts)

    def _state_with(self, result: StepResult, changed: set[int]) -> dict[str, bytes]:
        """The detection state that goes into the outbox with this step's output, so what is
        stored is always the state that produced it: `kill -9` then neither repeats nor drops
        an alert. Full (and the delta emptied) with a summary (every sensor's window restarts),
        for a small agent, or every `FULL_STATE_EVERY_S`; else the state of the sensors whose
        level changed since the last full save, which `restore` lays over it. The samples of
        other sensors since that save are what a restart loses, as if they came while it was down."""
        full = (result.summary is not None or len(self.registry) <= FULL_STATE_SENSORS
                or time.monotonic() - self._full_saved_at >= FULL_STATE_EVERY_S
                or 2 * len(changed) >= len(self.registry))
        if full:
            return {STATE_KEY: self.pipeline.state_blob(), DELTA_KEY: b""}
        return {DELTA_KEY: self.pipeline.state_blob(changed)}

    def _save_state(self) -> None:
        try:
            self.outbox.append([], state={STATE_KEY: self.pipeline.state_blob(), DELTA_KEY: b""})
        except OutboxError as exc:
            self._errors.warn("save", f"cannot save detection state: {exc}")
            return
        self._changed_sensors = set()
        self._full_saved_at = time.monotonic()

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Counters for the retained status message (called on the uplink thread)."""
        c = self.pipeline.counters
        gap = self.pipeline.sensors_in_gap()
        box = self.outbox.counters()
        serial = [r.status() for r in self.serial]
        modbus = [b.status() for b in self.modbus]
        out: dict[str, Any] = {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "sensors": len(self.registry),
            "sensors_online": len(self.registry) - gap,
            "sensors_gap": gap,
            "sensors_warming": self.pipeline.chain.warming_up(),
            **c.as_dict(),
            "bad_frames": sum(s["bad_frames"] for s in serial),
            "batch_errors": self._step_errors,
            "backlog": box.pending,
            "backlog_alerts": box.pending_alerts,
            "dropped_alerts": box.dropped_alerts,
            "dropped_summaries": box.dropped_summaries,
            "disk_full": self.outbox.space_low,
            "wall_offset_ms": self.pipeline.wall_offset_ms,
            "cold_cache": self.warm.cold,
            "kernels_load_s": round(self.warm.seconds, 2),
            **self._faults(box.in_memory),
        }
        out.update(self._places())
        if self.raw_input is not None:
            out["raw_connected"] = self.raw_input.connected
            out["raw_client_id"] = self.raw_input.client_id
            out["raw_takeovers"] = self.raw_input.takeover.takeovers
        if serial:
            out["serial"] = serial
        if modbus:
            out["modbus"] = modbus
        return out


    def _places(self) -> dict[str, Any]:
        """Where this agent's sites are and its sensors' thresholds, for the ops consoles' map and charts."""
        a = self.config.agent
        sites = {s.site: [s.lat, s.lon] for s in self.config.sensor if s.lat is not None and s.lon is not None}
        limits = {s.id: {"high": list(s.high), "low": list(s.low)} for s in self.config.sensor if s.high or s.low}
        return {"district": a.district, "township": a.township, "sites": sites, "limits": limits}

    def _faults(self, in_memory: int) -> dict[str, Any]:
        """`faults` names every fault of the agent itself now standing (an ops console alarms on
        a non-empty list; docs/operations.md says what each means); the other keys detail them."""
        reports = self.outbox.damage_reports()
        faults = []
        if self.uplink.client_id_taken_over or (self.raw_input is not None
                                                and self.raw_input.client_id_taken_over):
            faults.append("client_id_in_use")
        if reports:
            faults.append("outbox_damaged")
        if not self.outbox.on_disk:
            faults.append("outbox_in_memory")
        if self.outbox.space_low:
            faults.append("disk_full")
        return {"faults": faults, "outbox_damaged": len(reports),
                "outbox_damage": [r.as_status() for r in reports], "outbox_in_memory": in_memory}


def _log_alerts(alerts: Sequence[Any]) -> None:
    """One INFO line per alert (alerts are rare), capped per batch so a storm stays readable."""
    for a in alerts[:ALERT_LOG_LINES]:
        log.info("alert seq=%d %s %s %s level %d -> %d value=%g id=%s", a.seq, a.sensor, a.kind, a.rule,
                 a.prev, a.level, a.value, a.id)
    if len(alerts) > ALERT_LOG_LINES:
        log.info("... and %d more alert(s) in this batch (last seq=%d)",
                 len(alerts) - ALERT_LOG_LINES, alerts[-1].seq)


def run_agent(config: AgentConfig, *, precompile_only: bool = False) -> int:
    """Run the edge agent until SIGTERM/SIGINT; with `precompile_only`, warm the kernels and return."""
    if precompile_only:
        return precompile()
    return Agent(config).run()
