"""Several console instances on one PostgreSQL: they migrate together, take each alert once
between them, escalate each overdue case once, and each one's boards follow the others' steps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import func, select

from console.config import DatabaseSettings
from console.db import head_revision, migrate, open_database
from console.schema import alerts, case_events, cases
from simulators.servers import MosquittoServer, PostgresServer, VictoriaMetricsServer
from tests.console_harness import PASSWORD, ApiClient, console_config, make_alert, running_console
from tests.test_console_service import eventually, route
from tests.test_gateway_integration import Publisher

pytestmark = pytest.mark.integration
USERS = [("wang", "operator", "yz/jfb"), ("zhao", "operator", "yz")]


def test_instances_starting_together_migrate_once(postgres: PostgresServer) -> None:
    settings = DatabaseSettings(url=postgres.new_database("migrate_together"), username=postgres.user)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(migrate(open_database(settings)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [head_revision()] * 3


def test_two_instances_share_the_cases(broker: MosquittoServer, store: VictoriaMetricsServer,
                                       postgres: PostgresServer, chromium: Browser, tmp_path: Path) -> None:
    prefix = "test/console-pg"
    url = postgres.new_database("two_instances")
    configs = [console_config(broker.url, store.url, url, prefix=prefix, instance=name, ack_minutes=[0.02, 5, 5, 5])
               for name in ("console-a", "console-b")]
    configs = [c.model_copy(update={"database": DatabaseSettings(url=url, username=postgres.user)}) for c in configs]
    publisher = Publisher(broker.port, "console-pg-pub")
    with running_console(configs[0], USERS) as a, running_console(configs[1]) as b:
        page = chromium.new_context().new_page()
        page.goto(b.url + "/")
        page.get_by_label("User name").fill("zhao")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#live")).to_have_text("live", timeout=15_000)

        sent = [make_alert(f"PG-{n}", level=1 + n % 4) for n in range(100)]
        for alert in sent:
            route(publisher, prefix, alert)  # both instances get every copy
        wang = ApiClient.login(a.url, "wang")
        eventually(lambda: wang.board(limit=500)["total"] == 100, "100 cases", 30)
        db = open_database(configs[0].database)
        with db.read() as conn:
            assert conn.execute(select(func.count()).select_from(alerts)).scalar() == 100
            assert conn.execute(select(func.count()).select_from(case_events)
                                .where(case_events.c.action == "raised")).scalar() == 100

        # the level-1 cases escalate once each (two instances check the same deadlines)
        def escalated() -> bool:
            with db.read() as conn:
                return conn.execute(select(func.count()).select_from(cases).where(cases.c.tier != "township")).scalar() == 25

        eventually(escalated, "the level-1 cases to escalate", 30)
        with db.read() as conn:
            steps = conn.execute(select(case_events.c.case_id, case_events.c.detail, func.count())
                                 .where(case_events.c.action == "escalate")
                                 .group_by(case_events.c.case_id, case_events.c.detail)).all()
        assert len({case_id for case_id, _, _ in steps}) == 25
        assert all(n == 1 for _, _, n in steps), "a step from one tier to the next is taken once"
        db.dispose()

        # a step taken on instance a shows on instance b's board
        target = next(c for c in wang.board(limit=500)["cases"] if c["sensor"] == "PG-3")  # level 4
        row = page.locator(f'tr[data-id="{target["id"]}"]')
        expect(row).to_contain_text("not acknowledged", timeout=15_000)
        assert wang.act(target["id"], "acknowledge").status_code == 200
        expect(row).to_contain_text("acknowledged", timeout=15_000)
        expect(row).not_to_contain_text("not acknowledged")
        wang.close()
        page.context.close()
    publisher.close()
