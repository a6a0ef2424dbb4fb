"""The `lifeline` command line: one entry point for the agent, the gateway, simulators and the demo.

The one module of the core that knows every part: each command imports its part inside the
command, so `lifeline agent` loads neither the gateway nor the simulators.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from lifeline import __version__
from lifeline.contract import TIERS
from lifeline.errors import ConfigError, LifelineError
from lifeline.jitcache import kernel_cache_dir

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    """Plain one-line-per-event logs to stderr, in UTC, readable in journald or a terminal."""
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%SZ",
                        stream=sys.stderr, force=True)


def fail(error: LifelineError | str, code: int = 2) -> NoReturn:
    """Print an error an operator can act on and exit non-zero."""
    click.echo(f"lifeline: error: {error}", err=True)
    sys.exit(code)


config_option = click.option(
    "--config", "config_path", required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Path of the TOML configuration file.",
)


_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulators.cli", "simulate"),
    "console": ("console.cli", "console"),
    "bench": ("benchmarks.cli", "bench"),
}


def _installed(module: str) -> bool:
    """Whether `module` can be imported (the benchmarks exist only in a source checkout)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not there
        return False


class _LazyGroup(click.Group):
    """Loads command groups of other packages only when they are asked for, so `lifeline agent`
    starts without importing the simulators or benchmarks."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, (module, _) in _LAZY_COMMANDS.items() if _installed(module)]
        return sorted([*super().list_commands(ctx), *lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS:
            module, attr = _LAZY_COMMANDS[cmd_name]
            if not _installed(module):
                fail(f"`lifeline {cmd_name}` needs {module.split('.')[0]}/, which is in the source "
                     "tree only (not in the wheel): run it from a clone set up with deploy/install.sh")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lifeline")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Least severe log level printed.")
def cli(log_level: str) -> None:
    """lifeline: edge agent and sensor-ingest gateway for urban lifeline monitoring.

    Sensors on pipes, streets, bridges and tunnels feed an edge agent on a small gateway board;
    the agent detects events in real time and forwards alerts and window summaries over MQTT to
    the central gateway, which stores them and routes alerts to city, district and township.
    """
    setup_logging(log_level)


@cli.command()
@config_option
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
@click.option("--precompile", is_flag=True,
              help="Compile the detection kernels into the on-disk cache and exit (as `lifeline precompile`).")
def agent(config_path: Path, check: bool, precompile: bool) -> None:
    """Run the edge agent: read sensors, detect events, forward alerts and summaries."""
    from edge_agent import config_warnings, load_agent_config

    try:
        config = load_agent_config(config_path)
    except LifelineError as exc:
        fail(exc)
    warnings = [f"{config_path}: {w}" for w in config_warnings(config)]
    if check:
        for line in warnings:
            click.echo(f"lifeline: warning: {line}", err=True)
        click.echo(f"{config_path}: OK: agent {config.agent.id!r}, {len(config.sensor)} sensor(s)"
                   + (f", {len(warnings)} warning(s)" if warnings else ""))
        return
    for line in warnings:
        logging.getLogger("lifeline.config").warning("%s", line)
    from edge_agent import run_agent

    try:
        sys.exit(run_agent(config, precompile_only=precompile))
    except LifelineError as exc:
        fail(exc)


@cli.command()
def precompile() -> None:
    """Compile every detection kernel into the on-disk cache, so agents start without compiling.

    Run once after install and after each upgrade, as the user the agent runs as and with its
    environment (deploy/install.sh does). The cache is NUMBA_CACHE_DIR, else
    $LIFELINE_CACHE_DIR/numba, else $CACHE_DIRECTORY/numba (systemd), else
    ~/.cache/lifeline/numba; it survives restarts.
    """
    from edge_agent import precompile as compile_kernels

    click.echo(f"compiling the detection kernels into {kernel_cache_dir()} "
               "(minutes on a small board the first time; seconds when cached)")
    sys.exit(compile_kernels())


@cli.command()
@config_option
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
def gateway(config_path: Path, check: bool) -> None:
    """Run the central gateway: store alerts and summaries, route alerts to the tiers."""
    from gateway.config import load_gateway_config

    try:
        config = load_gateway_config(config_path)
    except LifelineError as exc:
        fail(exc)
    if check:
        click.echo(f"{config_path}: OK: gateway {config.gateway.id!r}, store {config.influx.url}")
        return
    from gateway.service import run_gateway

    try:
        sys.exit(run_gateway(config))
    except LifelineError as exc:
        fail(exc)


@cli.command()
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Stop by itself after this many seconds and print the report "
                   "(default: the scenario's length, or Ctrl-C).")
@click.option("--scenario", "scenario_name", default="mixed", show_default=True,
              help="Built-in scenario name or path of a scenario TOML file.")
@click.option("--keep", is_flag=True, help="Keep the work directory (store data, configs, logs) at the end.")
def demo(duration: float | None, scenario_name: str, keep: bool) -> None:
    """Run the whole chain on this machine with no configuration.

    Starts Mosquitto and VictoriaMetrics on free loopback ports, an agent per township of a
    simulated district, the gateway and the ops console (its URL and demo logins are printed),
    replays the district in real time, and shows a live view.
    At the end it prints what flowed, what was detected and how that scores against the
    simulation's ground truth. Ctrl-C stops everything cleanly.
    """
    from simulators.demo import run_demo

    try:
        sys.exit(run_demo(duration, scenario_name=scenario_name, keep=keep))
    except LifelineError as exc:
        fail(exc)


def _broker_options(func: Any) -> Any:
    """--config / --url / --prefix / --username: the broker of `alerts` and `status`."""
    for option in reversed([
        click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="An agent or gateway TOML file: use its [mqtt] broker, credentials and prefix."),
        click.option("--url", help="Broker URL, mqtt:// or mqtts:// (default: the config's, else "
                                   "mqtt://127.0.0.1:1883). Password: LIFELINE_MQTT_PASSWORD."),
        click.option("--prefix", help="Topic prefix (default: the config's, else lifeline/v1)."),
        click.option("--username", help="Broker user name."),
    ]):
        func = option(func)
    return func


@cli.command()
@_broker_options
@click.option("--tier", type=click.Choice(list(TIERS)),
              help="Follow what the gateway routes to this ops tier (P/ops/{tier}/...) instead of "
                   "the agents' alerts (P/alert/...).")
@click.option("--district", "districts", multiple=True, help="Only this district (repeatable).")
@click.option("--level", "min_level", type=click.IntRange(0, 4), default=0,
              help="Only alerts whose level or previous level is at least this (1 blue .. 4 red).")
@click.option("--sensor", "sensors", multiple=True, help="Only sensors matching this glob, e.g. 'YZ-P-*' (repeatable).")
@click.option("--rule", "rules", multiple=True, help="Only this rule, e.g. high, rate, gap (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per alert and line, for scripts.")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many alerts.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), help="Exit after this many seconds.")
def alerts(config_path: Path | None, url: str | None, prefix: str | None, username: str | None,
           tier: str | None, districts: tuple[str, ...], min_level: int, sensors: tuple[str, ...],
           rules: tuple[str, ...], as_json: bool, count: int | None, timeout_s: float | None) -> None:
    """Follow alerts live and print them readably (Ctrl-C to stop)."""
    from lifeline.watch import AlertFilter, broker_settings, run_alerts

    try:
        settings = broker_settings(config_path, url, prefix, username)
        sys.exit(run_alerts(settings, AlertFilter(districts, min_level, sensors, rules), tier=tier,
                            as_json=as_json, count=count, timeout_s=timeout_s))
    except ConfigError as exc:
        fail(exc)
    except LifelineError as exc:  # the broker cannot be reached
        fail(exc, 1)


@cli.command()
@_broker_options
@click.option("--json", "as_json", is_flag=True, help="The agents as a JSON list, for scripts.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Longest to wait for the broker's retained statuses.")
def status(config_path: Path | None, url: str | None, prefix: str | None, username: str | None,
           as_json: bool, timeout_s: float) -> None:
    """List the agents from their retained status: online or offline, version, backlog, sensors."""
    from lifeline.watch import broker_settings, run_status

    try:
        sys.exit(run_status(broker_settings(config_path, url, prefix, username), as_json=as_json,
                            timeout_s=timeout_s))
    except ConfigError as exc:
        fail(exc)
    except LifelineError as exc:  # the broker cannot be reached
        fail(exc, 1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lifeline")


if __name__ == "__main__":
    main()
