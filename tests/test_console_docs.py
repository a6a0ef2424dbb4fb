"""The console's configuration reference, sample and command line stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from console.config import ConsoleSection, DatabaseSettings, SiteSettings, StoreSettings, load_console_config
from lifeline.cli import cli
from lifeline.config import MqttSettings
from tests.test_docs import REFERENCE, ROOT, keys, sample_keys

SAMPLE = ROOT / "deploy" / "console.sample.toml"


def test_the_sample_loads_and_shows_every_key() -> None:
    assert load_console_config(SAMPLE).console.ack_minutes == [30, 15, 10, 5]
    shown = sample_keys(SAMPLE)
    missing = {k for m in (ConsoleSection, MqttSettings, DatabaseSettings, StoreSettings) for k in keys(m)} - shown
    assert not missing, f"console.sample.toml does not show {sorted(missing)}"


def test_every_key_is_in_the_reference() -> None:
    section = REFERENCE.read_text().split("## Ops console", 1)[1]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    missing = {k for m in (ConsoleSection, DatabaseSettings, StoreSettings, SiteSettings) for k in keys(m)} - documented
    assert not missing, f"docs/configuration.md (ops console) does not document {sorted(missing)}"


def test_the_command_line_checks_configs_and_manages_users(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text('[console]\nack_minutes = [5, 5]\n[database]\nurl = "postgresql://u:secret@db/x"\n')
    result = runner.invoke(cli, ["console", "--config", str(bad), "--check"])
    assert result.exit_code == 2
    assert "console.ack_minutes" in result.output and "database.url: Value error" not in result.output
    assert "database.url: must not carry credentials" in result.output and "secret" not in result.output
    good = tmp_path / "console.toml"
    good.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n')
    assert runner.invoke(cli, ["console", "--config", str(good), "--check"]).exit_code == 0
    add = ["console", "--config", str(good), "user", "add", "wang", "--role", "operator",
           "--area", "yuzhong/jiefangbei", "--password-stdin"]
    result = runner.invoke(cli, add, input="long enough password\n")
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, add, input="long enough password\n").exit_code == 2  # already there
    result = runner.invoke(cli, [*add[:5], "li", "--role", "operator", "--area", "a/b/c", "--password-stdin"],
                           input="long enough password\n")
    assert result.exit_code == 2 and "area 'a/b/c'" in result.output
    listed = runner.invoke(cli, ["console", "--config", str(good), "user", "list"])
    assert "wang" in listed.output and "yuzhong/jiefangbei" in listed.output


def test_the_operations_guide_shows_existing_screenshots() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    images = re.findall(r"\]\((img/[^)]+\.png)\)", guide)
    assert len(images) >= 6, "the walk-through shows the main views"
    missing = [i for i in images if not (ROOT / "docs" / i).is_file()]
    assert not missing, f"docs/operations.md shows missing screenshots {missing} (python -m tests.console_screenshots)"


def test_no_page_loads_anything_from_another_host() -> None:
    templates = (ROOT / "console" / "templates").glob("*.html")
    for template in templates:
        text = template.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), f"{template.name} loads from another host"
