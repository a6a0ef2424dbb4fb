"""Ops console under load: 10 000 open cases, 100 alerts/s arriving on the ops topics.

Measures what the duty officer notices: how long the board takes to show (navigation start to
the first rows drawn, in Chromium) while alerts keep arriving, and how far the board's live
updates trail the ops topic (the alert's delivery to a plain MQTT subscriber, to the update
drawn on the open board: the page stamps each case change when it is drawn). A real Mosquitto,
`lifeline console` as its own process (SQLite by default, `--database postgresql` for PostgreSQL)
and Chromium; the gateway is not part of it (the figures start at the ops topic).

    python -m benchmarks.bench_console [--quick] [--database sqlite|postgresql] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

from benchmarks.bench_e2e import OpsListener
from benchmarks.procstat import cpu_seconds
from benchmarks.suite import write_section
from console.auth import Accounts
from console.cases import CaseStore
from console.config import DatabaseSettings
from console.db import migrate, open_database
from lifeline.config import MqttSettings
from lifeline.contract import ops_topic, tiers_for
from lifeline.errors import LifelineError
from simulators.demo import Child, start_child
from simulators.servers import MosquittoServer, PostgresServer, VictoriaMetricsServer, free_port
from tests.console_harness import CHROMIUM, CHROMIUM_ARGS, PASSWORD, make_alert
from tests.test_gateway_integration import Publisher

PREFIX = "bench/console"
TOWNSHIPS = [f"t{n:02d}" for n in range(10)]
#: Records, in the page, when each (sensor, level) change was drawn on the board.
PROBE = """
window.benchDrawn = {};
window.lifeline.live.on("cases", (list) => {
  const got = Date.now();
  requestAnimationFrame(() => {
    const drawn = Date.now();
    for (const c of list) {
      for (const k of [c.sensor, c.sensor + ":" + c.level]) if (!(k in window.benchDrawn)) window.benchDrawn[k] = [got, drawn];
    }
  });
});
"""


def preload(db_settings: DatabaseSettings, n: int) -> float:
    """`n` open cases of levels 2-4 in district yz (what a district operator sees); seconds taken."""
    db = open_database(db_settings)
    migrate(db)
    store = CaseStore(db, origin="bench-preload", ack_seconds=[3600.0] * 4)
    began = time.perf_counter()
    now = int(time.time() * 1000)
    for start in range(0, n, 1000):
        store.ingest([make_alert(f"PRE-{i}", level=2 + i % 3, district="yz", township=TOWNSHIPS[i % 10],
                                 ts=now - (n - i) * 1000) for i in range(start, min(n, start + 1000))])
    took = time.perf_counter() - began
    Accounts(db).add_user("duty", PASSWORD, role="operator", area="yz")
    db.dispose()
    return took


class Load(threading.Thread):
    """Publishes `rate` alerts/s to the ops topics (as the gateway routes them) for `duration_s`:
    half open new cases, half change the level of cases opened earlier in the run."""

    def __init__(self, publisher: Publisher, rate: float, duration_s: float) -> None:
        super().__init__(name="console-load", daemon=True)
        self.publisher, self.rate, self.duration_s = publisher, rate, duration_s
        self.sent: dict[str, str] = {}  # alert id -> what the page shows for it
        self.stop = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        n = 0
        while not self.stop.is_set() and time.monotonic() - began < self.duration_s:
            due = began + n / self.rate
            if (wait := due - time.monotonic()) > 0:
                self.stop.wait(wait)
            if n % 2 == 0:
                alert = make_alert(f"LIVE-{n}", level=2 + n % 3, district="yz", township=TOWNSHIPS[n % 10])
            else:
                opened = 2 + (n - 1) % 3
                alert = make_alert(f"LIVE-{n - 1}", level=2 + (opened - 1) % 3, prev=opened, district="yz",
                                   township=TOWNSHIPS[(n - 1) % 10])
            for tier in tiers_for(alert.level, alert.prev):
                self.publisher.publish(ops_topic(PREFIX, tier, alert.district), alert.encode())
            # a new case counts as shown when its sensor first shows (its level may already have
            # changed in the same batch); a level change when that level shows
            self.sent[alert.id] = alert.sensor if n % 2 == 0 else f"{alert.sensor}:{alert.level}"
            n += 1
        self.publisher.wait_all()


def wait_healthy(url: str, console: Child, timeout_s: float = 60.0) -> None:
    """Until the console answers /healthz connected to its broker (a child process: poll it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        console.check_alive()
        try:
            if httpx.get(url + "/healthz", timeout=2).json().get("mqtt_connected"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise LifelineError(f"the console did not come up on {url}; log {console.log_path}")


def first_render_ms(page: Page, url: str) -> float:
    """Navigation start to the board's first rows painted, by the page's own clock (the harness's
    own delays on a loaded machine do not count)."""
    page.goto(url + "/")
    page.wait_for_function("window.lifelineFirstRows !== undefined", timeout=60_000)
    return float(page.evaluate("window.lifelineFirstRows - performance.getEntriesByType('navigation')[0].startTime"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(cases: int, rate: float, duration_s: float, database: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lifeline-bench-console-"))
    with MosquittoServer() as broker, VictoriaMetricsServer() as store:
        pg = PostgresServer().start() if database == "postgresql" else None
        try:
            db_settings = (DatabaseSettings(url=pg.url, username=pg.user) if pg
                           else DatabaseSettings(url=f"sqlite:///{work / 'console.db'}"))
            preload_s = preload(db_settings, cases)
            port = free_port()
            db_line = f'url = "{db_settings.url}"' + (f'\nusername = "{db_settings.username}"' if pg else "")
            (work / "console.toml").write_text(
                f'[console]\nid = "bench"\nport = {port}\n\n[mqtt]\nurl = "{broker.url}"\nprefix = "{PREFIX}"\n\n'
                f'[database]\n{db_line}\n\n[store]\nurl = "{store.url}"\n')
            publisher = Publisher(broker.port, "bench-console-load")
            console = start_child("console", ["console", "--config", str(work / "console.toml")], work)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_healthy(url, console)
            except BaseException:
                console.stop()
                raise
            with OpsListener(MqttSettings(url=broker.url, prefix=PREFIX), client_id="bench-console-ops") as ops, \
                    sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
                page = context.new_page()
                page.goto(url + "/login")
                page.get_by_label("User name").fill("duty")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_selector("tr[data-testid=case-row]")
                idle_render = [first_render_ms(page, url) for _ in range(3)]
                # its own context: a second tab of one window would be a background tab, whose
                # animation frames Chromium holds back
                watch_context = browser.new_context(viewport={"width": 1400, "height": 900},
                                                    storage_state=context.storage_state(), bypass_csp=True)
                watcher = watch_context.new_page()
                watcher.goto(url + "/")
                watcher.wait_for_selector("tr[data-testid=case-row]")
                watcher.wait_for_function("document.getElementById('live').textContent === 'live'")
                watcher.evaluate(PROBE)
                cpu0 = cpu_seconds(console.proc.pid)
                load = Load(publisher, rate, duration_s)
                load.start()
                busy_render = []
                while load.is_alive():
                    busy_render.append(first_render_ms(page, url))
                deadline = time.monotonic() + 30
                drawn: dict[str, list[int]] = {}
                while time.monotonic() < deadline:
                    drawn = watcher.evaluate("window.benchDrawn")
                    if all(key in drawn for key in load.sent.values()):
                        break
                    time.sleep(0.2)  # the page has no callback into Python: poll it, bounded
                cpu = cpu_seconds(console.proc.pid)
                lat_got, lat_drawn, missing = [], [], 0
                for alert_id, key in load.sent.items():
                    arrived = ops.arrivals.get(alert_id)
                    if arrived is None or key not in drawn:
                        missing += 1
                        continue
                    lat_got.append(drawn[key][0] - arrived[1])
                    lat_drawn.append(drawn[key][1] - arrived[1])
                status = httpx.get(url + "/healthz", timeout=10).json()
                browser.close()
            console.stop()
            publisher.close()
        finally:
            if pg:
                pg.stop()
    return {
        "database": database, "cases": cases, "rate": rate, "duration_s": duration_s, "preload_s": preload_s,
        "sent": len(load.sent), "idle_render": idle_render, "busy_render": busy_render,
        "lat_got": lat_got, "lat_drawn": lat_drawn, "missing": missing, "ingested": status["alerts_ingested"], "push_lag": status.get("push_lag_ms", {}),
        "cpu_s": cpu - cpu0,
    }


def report(r: dict[str, Any], command: str, load: tuple[float, float]) -> str:
    drawn = r["lat_drawn"]
    ok_render = max(r["busy_render"] + r["idle_render"]) < 1000
    ok_live = bool(drawn) and percentile(drawn, 0.99) < 1000 and r["missing"] == 0
    lines = [
        f"Command: `{command}` (1-minute load average {load[0]:.1f} before, {load[1]:.1f} after, 2 cores shared "
        "with other jobs). Console, Mosquitto and Chromium on the same machine; database "
        f"**{r['database']}** with {r['cases']:,} open cases preloaded ({r['preload_s']:.1f} s), then "
        f"{r['rate']:.0f} alerts/s on the ops topics for {r['duration_s']:.0f} s ({r['sent']:,} alerts, half new "
        "cases, half level changes; each on every tier topic it is routed to, so the console de-duplicates).",
        "",
        "| measure | median | p95 | p99 | max | target |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]

    def row(name: str, values: list[float], target: str) -> str:
        if not values:
            return f"| {name} | – | – | – | – | {target} |"
        return (f"| {name} | {statistics.median(values):.0f} ms | {percentile(values, 0.95):.0f} ms | "
                f"{percentile(values, 0.99):.0f} ms | {max(values):.0f} ms | {target} |")

    reached = "yes" if r["missing"] == 0 else f"no, {r['missing']} missing"
    lines += [
        row(f"board first render, idle ({len(r['idle_render'])} loads)", r["idle_render"], "< 1 s"),
        row(f"board first render during the load ({len(r['busy_render'])} loads)", r["busy_render"], "< 1 s"),
        row("ops topic -> update in the page", r["lat_got"], ""),
        row("ops topic -> update drawn on the board", drawn, "< 1 s"),
        "",
        f"Every alert reached the board: {reached}; "
        f"the console stored {r['ingested']:,} alerts (each once). Its own share of the lag (taking the alert "
        f"off the broker to handing the case to the page feeds, from its /healthz): median "
        f"{r['push_lag'].get('p50', float('nan')):.0f} ms, p95 {r['push_lag'].get('p95', float('nan')):.0f} ms, "
        f"p99 {r['push_lag'].get('p99', float('nan')):.0f} ms. The console (`lifeline console`, its own "
        f"process) used {r['cpu_s']:.1f} s of CPU during the {r['duration_s']:.0f} s of load "
        f"({100 * r['cpu_s'] / r['duration_s']:.0f} % of a core). Targets met: first render {'yes' if ok_render else 'NO'}, "
        f"live updates under 1 s (p99) {'yes' if ok_live else 'NO'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 000 cases, 15 s of load")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    cases, duration = (2_000, 15.0) if args.quick else (10_000, 60.0)
    began = time.perf_counter()
    before = os.getloadavg()[0]
    result = run(cases, 100.0, duration, args.database)
    command = "python -m benchmarks.bench_console" + (" --quick" if args.quick else "") + \
        (f" --database {args.database}" if args.database != "sqlite" else "") + (" --write" if args.write else "")
    text = report(result, command, (before, os.getloadavg()[0]))
    print(text)
    print(f"(benchmark took {time.perf_counter() - began:.0f} s)")
    if args.write:
        heading = "## Ops console" + (" (PostgreSQL)" if args.database == "postgresql" else "")
        write_section(heading, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
