"""Screenshots of the console's main views for docs/ (`python -m tests.console_screenshots`).

Starts Mosquitto, VictoriaMetrics, a gateway and a console on loopback, feeds a day's worth of a
made-up district's alerts and summaries through the gateway, works one case through its life,
and photographs the board, a case, the map, a sensor and the cockpit with the Debian Chromium.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import update
from playwright.sync_api import Page, expect, sync_playwright

from benchmarks.bench_e2e import OpsListener
from console.db import open_database
from console.geo import grid_places, sites_toml
from console.schema import case_events, cases
from lifeline.config import MqttSettings
from lifeline.contract import Summary, summary_topic
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.console_harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    ApiClient,
    agent_status,
    agent_topic_of,
    console_config,
    make_alert,
    running_console,
)
from tests.test_gateway_integration import Publisher, gateway_config, running_gateway

PREFIX = "lifeline/v1"
OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
TOWNSHIPS = {"jiefangbei": "yz-jfb-01", "chaotianmen": "yz-ctm-01", "daxigou": "yz-dxg-01", "lianglukou": "yz-llk-01"}
KINDS = [("pipe.pressure", "P", 0.62, 0.6), ("flood.level", "F", 31.0, 27.0), ("bridge.accel", "B", 2.6, 2.0),
         ("tunnel.co", "T", 140.0, 120.0)]


def login(page: Page, url: str, user: str, path: str) -> None:
    page.goto(url + path)
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live")).to_have_text("live", timeout=20_000)


def spread_over_the_night(config: Any, case_id: int, now: int) -> None:
    """The worked case's steps were taken within a second; for the pictures, space them out the
    way a night's work would (opened 105 min ago, acknowledged 4 min later, ...)."""
    minutes = {"raised": 0, "level": 1, "acknowledge": 4, "assign": 6, "note": 20, "photo": 35, "resolve": 70,
               "close": 80}
    opened = now - 105 * 60_000
    db = open_database(config.database)
    with db.write() as conn:
        for action, m in minutes.items():
            conn.execute(update(case_events).where(case_events.c.case_id == case_id, case_events.c.action == action)
                         .values(at=opened + m * 60_000))
        conn.execute(update(cases).where(cases.c.id == case_id).values(
            opened_at=opened, ack_at=opened + 4 * 60_000, assigned_at=opened + 6 * 60_000,
            resolved_at=opened + 70 * 60_000, closed_at=opened + 80 * 60_000, cleared_at=opened + 64 * 60_000,
            alert_cleared=True))
    db.dispose()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lifeline-shots-"))
    site_names = {t: [f"{t[:3]}-{k[1].lower()}{i}" for k in KINDS for i in (1, 2)] for t in TOWNSHIPS}
    sites, boundaries = grid_places("yuzhong", list(site_names.items()))
    (work / "boundaries.geojson").write_text(json.dumps(boundaries))
    (work / "sites.toml").write_text(sites_toml(sites))
    with MosquittoServer() as broker, VictoriaMetricsServer() as store:
        config = console_config(broker.url, store.url, f"sqlite:///{work / 'console.db'}", prefix=PREFIX,
                                boundaries_file=str(work / "boundaries.geojson"), sites_file=str(work / "sites.toml"))
        pub = Publisher(broker.port, "shots-agents")
        for township, agent in TOWNSHIPS.items():
            topic, payload = agent_status(PREFIX, agent, district="yuzhong", township=township,
                                          backlog=0 if township != "daxigou" else 1240, sensors=8,
                                          sensors_gap=1 if township == "daxigou" else 0,
                                          limits={f"{township[:3].upper()}-B1": {"high": [2.0, 3.0, 4.0, 5.0], "low": []}})
            pub.publish(topic, payload, retain=True)
        pub.wait_all()
        gw = gateway_config(broker.url, store.url, prefix=PREFIX, gateway_id="shots-gw", group="")
        users = [("wang", "operator", "yuzhong/jiefangbei"), ("zhao", "supervisor", "yuzhong")]
        with running_gateway(gw), running_console(config, users) as console, \
                OpsListener(MqttSettings(url=broker.url, prefix=PREFIX), client_id="shots-ops") as ops:
            now = int(time.time() * 1000)
            rng = np.random.default_rng(7)
            n = 0
            for township, agent in TOWNSHIPS.items():
                for kind, letter, value, limit in KINDS:
                    for i in (1, 2):
                        sensor = f"{township[:3].upper()}-{letter}{i}"
                        site = f"{township[:3]}-{letter.lower()}{i}"
                        level = int(rng.integers(1, 5))
                        if rng.random() < 0.35 or sensor == "JIE-B1":  # JIE-B1 is the worked case below
                            continue
                        ts = now - int(rng.integers(5, 20 * 60)) * 60_000
                        a = make_alert(sensor, level=level, rule="high", district="yuzhong", township=township,
                                       site=site, agent=agent, kind=kind, value=value * (1 + level / 10), limit=limit, ts=ts)
                        pub.publish(agent_topic_of(PREFIX, a), a.encode())
                        n += 1
                fault = make_alert(f"{township[:3].upper()}-F9", level=1, rule="flatline", district="yuzhong",
                                   township=township, site=f"{township[:3]}-f1", agent=agent, kind="flood.level",
                                   value=12.0, limit=None, extra={"fault": True})
                pub.publish(agent_topic_of(PREFIX, fault), fault.encode())
                n += 1
            sensor = "JIE-B1"
            for k in range(6 * 60):  # six hours of 1-minute windows of a bridge accelerometer
                t1 = now - (6 * 60 - k) * 60_000
                wave = 1.2 + 0.6 * np.sin(k / 40) + 0.2 * rng.standard_normal()
                s = Summary(agent="yz-jfb-01", township="jiefangbei", district="yuzhong", t0=t1 - 60_000, t1=t1,
                            sensor=[sensor], kind=["bridge.accel"], site=["jie-b1"], n=np.array([6000]),
                            min=np.array([-wave]), max=np.array([wave + (1.8 if 250 < k < 262 else 0)]),
                            mean=np.array([0.01]), last=np.array([0.1]),
                            extra={"rms": np.array([wave / 2]), "f_peak": np.array([3.1 - k / 4000])})
                pub.publish(summary_topic(PREFIX, "yz-jfb-01"), s.encode())
            a = make_alert(sensor, level=2, rule="high", district="yuzhong", township="jiefangbei", site="jie-b1",
                           agent="yz-jfb-01", kind="bridge.accel", value=3.2, limit=3.0, ts=now - 105 * 60_000)
            pub.publish(agent_topic_of(PREFIX, a), a.encode())
            pub.wait_all()
            deadline = time.monotonic() + 30
            while len(ops.arrivals) < n + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            store.flush()
            wang = ApiClient.login(console.url, "wang")
            case = next(c for c in wang.board()["cases"] if c["sensor"] == sensor)
            wang.act(case["id"], "acknowledge")
            wang.act(case["id"], "assign", crew="bridge crew 2", text="check bearing at pier 3")
            wang.act(case["id"], "note", text="heavy truck convoy passed 10:40, traffic police informed")
            wang.act(case["id"], "photo", ref="https://photos.example/jfb/pier3-0142.jpg")
            wang.act(case["id"], "resolve", report="bearing inspected, no damage; sensor bracket re-tightened")
            wang.act(case["id"], "close", cause="real event, handled", text="normal again")
            spread_over_the_night(config, case["id"], now)
            other = next(c for c in wang.board()["cases"] if c["state"] == "new" and c["level"] >= 2)
            wang.act(other["id"], "acknowledge")
            wang.act(other["id"], "escalate", reason="street flooded across two townships: district pumps needed")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_context(viewport={"width": 1400, "height": 760}).new_page()
                login(page, console.url, "zhao", "/")
                expect(page.get_by_test_id("case-row").first).to_be_visible()
                late = make_alert("JIE-P9", level=4, rule="low", district="yuzhong", township="jiefangbei",
                                  site="jie-p1", agent="yz-jfb-01", kind="pipe.pressure", value=0.04, limit=0.05)
                pub.publish(agent_topic_of(PREFIX, late), late.encode())
                pub.wait_all()
                expect(page.get_by_test_id("arrival").first).to_be_visible(timeout=10_000)
                page.screenshot(path=str(OUT / "board.png"))
                page.goto(f"{console.url}/case/{case['id']}")
                expect(page.get_by_test_id("review")).to_be_visible()
                page.screenshot(path=str(OUT / "case-review.png"))
                page.goto(f"{console.url}/case/{other['id']}")
                expect(page.get_by_test_id("tier")).to_contain_text("district")
                page.screenshot(path=str(OUT / "case.png"))
                page.goto(f"{console.url}/map")
                expect(page.get_by_test_id("map")).to_have_attribute("data-sites", "32", timeout=10_000)
                page.wait_for_timeout(500)  # Leaflet's fit animation; nothing to wait on
                page.screenshot(path=str(OUT / "map.png"))
                page.goto(f"{console.url}/sensor/{sensor}")
                expect(page.get_by_test_id("windows")).to_contain_text("f_peak", timeout=10_000)
                page.screenshot(path=str(OUT / "sensor.png"), full_page=True)
                page.goto(f"{console.url}/cockpit")
                expect(page.get_by_test_id("agents")).to_contain_text("yz-jfb-01", timeout=10_000)
                page.screenshot(path=str(OUT / "cockpit.png"))
                page = browser.new_context(viewport={"width": 1400, "height": 760}).new_page()
                login(page, console.url, "wang", "/maintenance")  # faults are level 1: the township's
                expect(page.get_by_test_id("case-row").first).to_be_visible()
                page.screenshot(path=str(OUT / "maintenance.png"))
                browser.close()
            wang.close()
        pub.close()
    if shutil.which("pngquant"):  # Debian's pngquant: a palette PNG is a quarter of the size
        subprocess.run(["pngquant", "--force", "--skip-if-larger", "--ext", ".png", "--quality", "70-95",
                        *map(str, OUT.glob("*.png"))], check=False)
    print(f"screenshots in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
