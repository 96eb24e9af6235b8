"""The `healthvault` command line (also `python -m vault.cli`): the `main` group and what every command shares.

Commands, one module per group (`--help` on each says more):
  healthvault init                                        vault/cli/init.py
  healthvault serve                                       vault/cli/serve.py (the composition root: imports `api`)
  healthvault doctor                                      vault/cli/doctor.py
  healthvault users add | disable-idle                    vault/cli/users.py
  healthvault audit export | verify | public-key | archive | checkpoint | trace
                                                          vault/cli/audit.py (trace: vault/cli/trace.py)
  healthvault keys status | rotate | rewrap | retire      vault/cli/keys.py
  healthvault patients erase                              vault/cli/patients.py
  healthvault worker [--concurrency N]                    vault/cli/worker.py (the PostgreSQL job queue)
  healthvault backup                                      vault/cli/backup.py (docs/backup.md)
  healthvault restore                                     vault/cli/backup.py
  healthvault ocr FILE...                                 ocr/cli.py (owned by ocr/)

Adding a group: a new module defining one click command or group, and one line in `COMMANDS` below. A command module
is imported only when its command runs (or `--help` lists it), so a command's imports never slow the others down.

Owns operator interaction: the shared options (`--data-dir`, `--passphrase-file`), reading secrets, opening the vault,
the operator's identity. Secrets are never taken as command-line arguments (they would show in `ps` and shell
history): the root-key passphrase comes from $HEALTHVAULT_PASSPHRASE or --passphrase-file, and a prompt is used only
when neither is given and a terminal is attached, so scripts and CI never hang.
Never: imports `api` (only vault/cli/serve.py does), or prints a secret, key or PHI.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from kms import KeyStoreError
from vault.identity import Identity
from vault.profile import ProductionRefused
from vault.settings import Settings

if TYPE_CHECKING:
    from vault.runtime import Vault

PASSPHRASE_ENV = "HEALTHVAULT_PASSPHRASE"  # noqa: S105 (the name of the variable, not a secret)

# command name -> "module:attribute" of its click command or group (one line per group).
COMMANDS: dict[str, str] = {
    "init": "vault.cli.init:init",
    "serve": "vault.cli.serve:serve",
    "doctor": "vault.cli.doctor:doctor",
    "users": "vault.cli.users:users",
    "audit": "vault.cli.audit:audit_group",
    "keys": "vault.cli.keys:keys_group",
    "patients": "vault.cli.patients:patients_group",
    "worker": "vault.cli.worker:worker",
    "backup": "vault.cli.backup:backup",
    "restore": "vault.cli.backup:restore",
    "ocr": "ocr.cli:ocr_command",
}

F = TypeVar("F", bound=Callable[..., object])


def read_secret_file(path: str) -> bytes:
    data = Path(path).read_bytes()
    return data[:-1] if data.endswith(b"\n") else data


def read_passphrase(passphrase_file: str | None, *, confirm: bool = False) -> bytes | None:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if passphrase_file:
        return read_secret_file(passphrase_file)
    if os.environ.get("HEALTHVAULT_ROOT_KEY") or os.environ.get("HEALTHVAULT_KMS_PROVIDER") == "pkcs11":
        return None  # a development key, or the root key is in a token (its PIN: vault.runtime, env or file)
    if not sys.stdin.isatty():
        raise click.UsageError(f"no passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file")
    return click.prompt("Root key passphrase", hide_input=True, confirmation_prompt=confirm).encode()


def common_options(fn: F) -> F:
    """`--data-dir` and `--passphrase-file`, for every command that opens the vault."""
    fn = click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True),
                      help="File holding the root-key passphrase.")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                      help="Data directory (default: $HEALTHVAULT_DATA_DIR, else ./var).")(fn)
    return fn


def load_settings(data_dir: str | None) -> Settings:
    try:
        return Settings.load(data_dir)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def open_or_fail(data_dir: str | None, passphrase_file: str | None) -> Vault:
    """The opened vault, or a clean CLI error (exit 1) when the key or the production profile refuses."""
    from vault.runtime import open_vault

    settings = load_settings(data_dir)
    try:
        return open_vault(settings, read_passphrase(passphrase_file))
    except (KeyStoreError, ProductionRefused) as exc:
        raise click.ClickException(str(exc)) from exc


def cli_identity() -> Identity:
    """The operator on the host, as audited: `cli:<login name>`."""
    return Identity(account_id="cli:" + (os.environ.get("USER") or "operator"), role="operator")


class _Commands(click.Group):
    """Resolves the commands of `COMMANDS`, importing a command's module when it is first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=_Commands)
def main() -> None:
    """Health Vault: encrypted, consent-gated, audited health records."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter drowns what the operator asked for


if __name__ == "__main__":  # pragma: no cover
    main()
