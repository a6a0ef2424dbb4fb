"""`lifeline console`: run the operation centre's web console, and manage its users."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from console.config import ConsoleConfig, load_console_config
from lifeline.cli import config_option, fail
from lifeline.errors import LifelineError


@click.group(invoke_without_command=True)
@config_option
@click.option("--check", is_flag=True, help="Validate the configuration and exit.")
@click.option("--migrate", "migrate_only", is_flag=True,
              help="Bring the database schema to the current version and exit (the console also does it at start).")
@click.pass_context
def console(ctx: click.Context, config_path: Path, check: bool, migrate_only: bool) -> None:
    """Run the ops console: the operation centre's web view of alerts, cases, map and trends.

    City, district and township operators log in, see the alerts of their area live, and take
    each case from raise to review (acknowledge, assign a crew, escalate, note, close). Users
    are managed with the `user` subcommands, e.g.

        lifeline console --config console.toml user add li --role operator --area yuzhong/jiefangbei
    """
    try:
        config = load_console_config(config_path)
    except LifelineError as exc:
        fail(exc)
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return
    if check:
        click.echo(f"{config_path}: OK: console {config.console.id!r} on {config.console.host}:"
                   f"{config.console.port}, database {config.database.url}")
        return
    from console.db import migrate, open_database

    try:
        if migrate_only:
            db = open_database(config.database)
            click.echo(f"database {config.database.url}: schema at revision {migrate(db)}")
            db.dispose()
            return
        from console.service import run_console

        sys.exit(run_console(config))
    except LifelineError as exc:
        fail(exc)


@console.group()
def user() -> None:
    """Add, change and list the console's users."""


def _accounts(ctx: click.Context):  # type: ignore[no-untyped-def]
    from console.auth import Accounts
    from console.db import migrate, open_database

    config: ConsoleConfig = ctx.obj
    db = open_database(config.database)
    migrate(db)
    return Accounts(db)


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@user.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "operator", "supervisor"]), required=True,
              help="viewer: looks; operator: acts on cases; supervisor: also reopens and reviews.")
@click.option("--area", required=True, help="'city', a district id, or 'district/township'.")
@click.option("--name", "display_name", default="", help="Full name shown in the case history.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.pass_context
def user_add(ctx: click.Context, username: str, role: str, area: str, display_name: str, password_stdin: bool) -> None:
    """Create a user (the password is asked for, or read with --password-stdin)."""
    try:
        accounts = _accounts(ctx)
        created = accounts.add_user(username, _password(password_stdin), role=role, area=area,
                                    display_name=display_name)
        accounts.record(None, "user_add", target=username, detail=f"role {role}, area {created.area}")
    except (LifelineError, ValueError) as exc:
        fail(str(exc))
    click.echo(f"user {username!r} added: {role} of {created.area}")


@user.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.pass_context
def user_passwd(ctx: click.Context, username: str, password_stdin: bool) -> None:
    """Set a user's password (ends their sessions)."""
    try:
        accounts = _accounts(ctx)
        accounts.set_password(username, _password(password_stdin))
        accounts.record(None, "user_passwd", target=username)
    except (LifelineError, ValueError) as exc:
        fail(str(exc))
    click.echo(f"password of {username!r} changed")


@user.command("set")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "operator", "supervisor"]), default=None)
@click.option("--area", default=None, help="'city', a district id, or 'district/township'.")
@click.option("--disable/--enable", "disabled", default=None, help="Lock the user out (or let them in again).")
@click.pass_context
def user_set(ctx: click.Context, username: str, role: str | None, area: str | None, disabled: bool | None) -> None:
    """Change a user's role, area or access (ends their sessions)."""
    try:
        accounts = _accounts(ctx)
        accounts.set_user(username, role=role, area=area, disabled=disabled)
        accounts.record(None, "user_set", target=username, detail=f"role={role} area={area} disabled={disabled}")
    except (LifelineError, ValueError) as exc:
        fail(str(exc))
    click.echo(f"user {username!r} changed")


@user.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """List users with role and area."""
    try:
        rows = _accounts(ctx).list_users()
    except LifelineError as exc:
        fail(exc)
    for u, disabled in rows:
        click.echo(f"{u.username:<24} {u.role:<11} {str(u.area):<32} {'disabled' if disabled else ''}".rstrip())
