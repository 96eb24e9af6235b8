"""`healthvault users add | disable-idle`: staff accounts from the host.

Never: takes a password as a command-line argument (file, $HEALTHVAULT_NEW_PASSWORD or a terminal prompt only).
"""

from __future__ import annotations

import os
import sys

import click

from vault.accounts import service as accounts
from vault.cli import cli_identity, common_options, open_or_fail, read_secret_file
from vault.db.models import STAFF_ROLES
from vault.errors import VaultError
from vault.identity import RequestContext


@click.group()
def users() -> None:
    """Manage staff accounts."""


@users.command("add")
@common_options
@click.option("--role", type=click.Choice(STAFF_ROLES), required=True)
@click.option("--username", required=True)
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True),
              help="File holding the new account's initial password (else $HEALTHVAULT_NEW_PASSWORD, else a prompt).")
def users_add(data_dir: str | None, passphrase_file: str | None, role: str, username: str,
              password_file: str | None) -> None:
    """Create a staff account (the password must be changed at first sign-in)."""
    if password_file:
        password = read_secret_file(password_file).decode()
    elif os.environ.get("HEALTHVAULT_NEW_PASSWORD"):
        password = os.environ["HEALTHVAULT_NEW_PASSWORD"]
    elif sys.stdin.isatty():
        password = click.prompt("Initial password", hide_input=True, confirmation_prompt=True)
    else:
        raise click.UsageError("no password: pass --password-file or set HEALTHVAULT_NEW_PASSWORD")
    vault = open_or_fail(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            account = accounts.create(session, vault, username=username, password=password, role=role,
                                      ctx=RequestContext(request_id="cli"), created_by=cli_identity(),
                                      must_change_password=True)
    except VaultError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        vault.close()
    click.echo(f"created {role} account {account.username} ({account.id})")


@users.command("disable-idle")
@common_options
def users_disable_idle(data_dir: str | None, passphrase_file: str | None) -> None:
    """Disable staff accounts unused for 90 days (run daily, e.g. from cron)."""
    vault = open_or_fail(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            names = accounts.disable_idle_staff(session, vault, ctx=RequestContext(request_id="cli"))
    finally:
        vault.close()
    click.echo(f"disabled {len(names)} idle staff account(s)" + (": " + ", ".join(names) if names else ""))
