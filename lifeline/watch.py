"""`lifeline alerts` and `lifeline status`: what an operator looks at from a shell.

`follow_alerts` follows the agents' alert topic (`P/alert/...`, every alert once) or the
gateway's ops topics (`P/ops/{tier}/{district}`, as routed) and prints each alert as one
readable line, or one JSON object a line for scripts, filtered by district, level, sensor and
rule. `agent_statuses` reads the agents' retained `P/status/{agent}` and `render_statuses` shows
them as a table: online or offline, how long ago, version, backlog, sensors in gap and warming
up, and whether the agent started on a cold kernel cache. Both speak MQTT through aiomqtt with
the settings of an `[mqtt]` section (`--config` of an agent or gateway file, or `--url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiomqtt
from pydantic import BaseModel, ConfigDict, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lifeline.backoff import backoff_delays
from lifeline.config import MqttSettings, load_toml_model, redact_url
from lifeline.contract import LEVEL_NAMES, Alert, DecodeError, Status, decode_alert, decode_status
from lifeline.errors import ConfigError, LifelineError
from lifeline.mqtt import tls_context

LEVEL_STYLE: Final = {0: "green", 1: "blue", 2: "yellow", 3: "dark_orange", 4: "bold red"}
#: An `online` agent whose last status is older than this is shown as stale (the gateway's default).
STALE_S: Final = 120.0
#: `lifeline status` stops reading retained statuses once none arrived for this long.
RETAINED_QUIET_S: Final = 0.5


class WatchError(LifelineError):
    """The broker cannot be reached or refuses us; the message names the URL and the cause."""


class _MqttOfFile(BaseModel):
    """The `[mqtt]` section of an agent or gateway file; the file's other sections are theirs."""

    model_config = ConfigDict(extra="ignore")
    mqtt: MqttSettings = MqttSettings()


def broker_settings(config: Path | None, url: str | None, prefix: str | None,
                    username: str | None) -> MqttSettings:
    """The broker to watch: an agent's or gateway's `[mqtt]`, with `--url`/`--prefix`/`--username` over it."""
    settings = load_toml_model(config, _MqttOfFile).mqtt if config is not None else MqttSettings()
    changes = {k: v for k, v in (("url", url), ("prefix", prefix), ("username", username)) if v}
    if not changes:
        return settings
    try:
        return MqttSettings.model_validate({**settings.model_dump(exclude_unset=True), **changes})
    except ValidationError as exc:
        problems = "; ".join(f"--{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors(include_url=False))
    raise ConfigError(problems)


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts to show: districts (topic filters), least level (of `level` or `prev`, as the
    tiers see them), sensor id globs and rules; empty means any."""

    districts: tuple[str, ...] = ()
    min_level: int = 0
    sensors: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()

    def topics(self, prefix: str, tier: str | None) -> list[str]:
        districts = self.districts or ("+",)
        if tier is None:
            return [f"{prefix}/alert/{d}/+/+" for d in districts]
        return [f"{prefix}/ops/{tier}/{d}" for d in districts]

    def matches(self, alert: Alert) -> bool:
        return (max(alert.level, alert.prev) >= self.min_level
                and (not self.sensors or any(fnmatch.fnmatchcase(alert.sensor, s) for s in self.sensors))
                and (not self.rules or alert.rule in self.rules))


def _client(settings: MqttSettings, name: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        settings.host, settings.port, identifier=f"lifeline-{name}-{os.getpid()}",
        username=settings.username, password=settings.resolved_password(),
        tls_context=tls_context(settings) if settings.tls else None,
        keepalive=settings.keepalive_s, clean_session=True, protocol=aiomqtt.ProtocolVersion.V311,
    )


def _describe(exc: aiomqtt.MqttError, settings: MqttSettings) -> str:
    return f"cannot follow the broker {redact_url(settings.url)}: {exc}"


async def follow_alerts(settings: MqttSettings, flt: AlertFilter, *, tier: str | None = None,
                        on_error: Callable[[str], None] = lambda m: None,
                        on_subscribed: Callable[[list[str]], None] = lambda t: None,
                        ) -> AsyncIterator[tuple[str, Alert]]:
    """Yield (topic, alert) for every alert that passes `flt`, reconnecting with backoff after a
    connection that worked was lost; WatchError when the first connection fails."""
    connected_once = False
    delays = backoff_delays(initial_s=0.5, cap_s=settings.reconnect_max_s)
    while True:
        try:
            async with _client(settings, "alerts") as client:
                connected_once = True
                delays = backoff_delays(initial_s=0.5, cap_s=settings.reconnect_max_s)
                topics = flt.topics(settings.prefix, tier)
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                on_subscribed(topics)
                async for message in client.messages:
                    try:
                        alert = decode_alert(bytes(message.payload))  # type: ignore[arg-type]
                    except (DecodeError, TypeError) as exc:
                        on_error(f"{message.topic}: not an Alert: {exc}")
                        continue
                    if flt.matches(alert):
                        yield str(message.topic), alert
        except aiomqtt.MqttError as exc:
            if not connected_once:
                raise WatchError(_describe(exc, settings)) from None
            delay = next(delays)
            on_error(f"{_describe(exc, settings)}; reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)


async def agent_statuses(settings: MqttSettings, *, quiet_s: float = RETAINED_QUIET_S,
                         timeout_s: float = 10.0) -> list[Status]:
    """The retained status of every agent on the broker, sorted by agent id."""
    found: dict[str, Status] = {}
    try:
        async with _client(settings, "status") as client:
            await client.subscribe(f"{settings.prefix}/status/+", qos=1)
            deadline = time.monotonic() + timeout_s
            messages = aiter(client.messages)
            while time.monotonic() < deadline:
                try:
                    message = await asyncio.wait_for(anext(messages), quiet_s)
                except TimeoutError:
                    break  # the broker sends retained messages at once: a pause means all are in
                if not message.payload:
                    continue  # a cleared retained status
                with contextlib.suppress(DecodeError, TypeError):
                    status = decode_status(bytes(message.payload))  # type: ignore[arg-type]
                    found[status.agent] = status
    except aiomqtt.MqttError as exc:
        raise WatchError(_describe(exc, settings)) from None
    return [found[a] for a in sorted(found)]


# --------------------------------------------------------------------------- output


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def alert_json(topic: str, alert: Alert) -> str:
    """One alert as one line of JSON (every contract field, plus the topic it came on)."""
    return json.dumps({"topic": topic, **dataclasses.asdict(alert)}, separators=(",", ":"), default=str)


def alert_line(topic: str, alert: Alert, prefix: str) -> Text:
    """One alert as one readable line: time, change, level, where, what, value."""
    a = alert
    change = "clear" if a.level == 0 else ("raise" if a.level > a.prev else "lower")
    tier = topic.split("/")[-2] if topic.startswith(f"{prefix}/ops/") else ""
    value = f"value {a.value:.6g}" + (f" (limit {a.limit:.6g})" if a.limit is not None else "")
    return Text.assemble(
        (_utc(a.ts), "dim"), "  ", (f"{change:5}", "bold" if change == "raise" else ""), " ",
        (f"{LEVEL_NAMES.get(a.level, a.level)!s:6}", LEVEL_STYLE.get(a.level, "")),
        f" ({a.prev}->{a.level})  ", (f"-> {tier}  " if tier else ""),
        f"{a.district}/{a.township}/{a.site}  ", (a.sensor, "cyan"), f" {a.kind} ",
        (a.rule, "bold"), f"  {value}  [{a.agent} #{a.seq}]",
    )


def status_rows(statuses: Sequence[Status], now_ms: int | None = None) -> list[dict[str, Any]]:
    """What `lifeline status` shows of each agent, as plain values (also its `--json` output)."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rows = []
    for s in statuses:
        x = s.extra
        age_s = max(0.0, (now_ms - s.ts) / 1000)
        state = "stale" if s.state == "online" and age_s > STALE_S else s.state
        rows.append({
            "agent": s.agent, "state": state, "last_seen_s": round(age_s, 1),
            "version": x.get("version"), "uptime_s": x.get("uptime_s"),
            "sensors": x.get("sensors"), "sensors_online": x.get("sensors_online"),
            "sensors_gap": x.get("sensors_gap"), "sensors_warming": x.get("sensors_warming"),
            "backlog": x.get("backlog"), "backlog_alerts": x.get("backlog_alerts"),
            "dropped_alerts": x.get("dropped_alerts"), "cold_cache": x.get("cold_cache"),
        })
    return rows


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_statuses(rows: Sequence[dict[str, Any]], console: Console) -> None:
    """The agents as a table, one row each."""
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("agent", "state", "last status", "version", "sensors", "in gap", "warming up",
                "backlog", "dropped alerts", "kernel cache"):
        table.add_column(col, justify="left" if col in ("agent", "state", "last status", "version",
                                                        "kernel cache") else "right")

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    for r in rows:
        style = {"online": "green", "offline": "red", "stale": "yellow"}[r["state"]]
        sensors = "-" if r["sensors"] is None else f"{num(r['sensors_online'])}/{num(r['sensors'])}"
        backlog = num(r["backlog"]) + (f" ({num(r['backlog_alerts'])} alerts)" if r["backlog_alerts"] else "")
        cache = {True: Text("cold at start", style="yellow"), False: "warm", None: "-"}[r["cold_cache"]]
        table.add_row(r["agent"], Text(r["state"], style=style), _ago(r["last_seen_s"]), num(r["version"]),
                      sensors, num(r["sensors_gap"]), num(r["sensors_warming"]), backlog,
                      num(r["dropped_alerts"]), cache)
    console.print(table)
    online = sum(1 for r in rows if r["state"] == "online")
    console.print(f"{len(rows)} agent(s): {online} online, {len(rows) - online} offline or stale",
                  highlight=False)


def run_alerts(settings: MqttSettings, flt: AlertFilter, *, tier: str | None, as_json: bool,
               count: int | None, timeout_s: float | None) -> int:
    """`lifeline alerts`: print matching alerts until Ctrl-C, `count` alerts or `timeout_s`; exit code."""
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)

    async def main() -> int:
        shown = 0
        where = f"what the gateway routes to the {tier} tier" if tier else "the agents' alerts"

        def subscribed(topics: list[str]) -> None:
            err.print(f"following {where} on {redact_url(settings.url)} ({', '.join(topics)})"
                      + ("; Ctrl-C to stop" if err.is_terminal else ""))

        async for topic, alert in follow_alerts(settings, flt, tier=tier, on_error=lambda m: err.print(m),
                                                on_subscribed=subscribed):
            if as_json:
                sys.stdout.write(alert_json(topic, alert) + "\n")
                sys.stdout.flush()
            else:
                out.print(alert_line(topic, alert, settings.prefix))
            shown += 1
            if count is not None and shown >= count:
                break
        return 0

    async def bounded() -> int:
        if timeout_s is None:
            return await main()
        try:
            return await asyncio.wait_for(main(), timeout_s)
        except TimeoutError:
            return 0

    try:
        return asyncio.run(bounded())
    except KeyboardInterrupt:
        return 0


def run_status(settings: MqttSettings, *, as_json: bool, timeout_s: float) -> int:
    """`lifeline status`: print the agents from their retained status; exit code."""
    statuses = asyncio.run(agent_statuses(settings, timeout_s=timeout_s))
    rows = status_rows(statuses)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    elif not rows:
        Console(stderr=True).print(f"no agent status on {redact_url(settings.url)} under "
                                   f"{settings.prefix}/status/ (are agents connected to this broker?)")
    else:
        console = Console(highlight=False)
        render_statuses(rows, console if console.is_terminal else Console(highlight=False, width=200))
    return 0


__all__ = ["AlertFilter", "WatchError", "agent_statuses", "alert_json", "alert_line", "broker_settings",
           "follow_alerts", "render_statuses", "run_alerts", "run_status", "status_rows"]
