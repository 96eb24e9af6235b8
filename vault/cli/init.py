"""`healthvault init`: create the data directory, the sealed root key and the databases.

Never: creates an account (it prints how to create the three separated administrators) or echoes the passphrase.
"""

from __future__ import annotations

import click

from kms import KeyStoreError
from vault.cli import common_options, load_settings, read_passphrase


@click.command()
@common_options
def init(data_dir: str | None, passphrase_file: str | None) -> None:
    """Create the data directory, the sealed root key and the databases."""
    from vault.runtime import init_data_dir, open_vault

    settings = load_settings(data_dir)
    fresh = not settings.root_key_path.exists()
    try:
        init_data_dir(settings, read_passphrase(passphrase_file, confirm=True) if fresh
                      else read_passphrase(passphrase_file))
        vault = open_vault(settings, read_passphrase(passphrase_file))
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    vault.close()
    click.echo(f"Vault ready in {settings.data_dir}")
    click.echo("No account exists yet. Create the three separated administrators, each with their own password:")
    for role in ("sysadmin", "secadmin", "auditadmin"):
        click.echo(f"  healthvault users add --data-dir {settings.data_dir} --role {role} --username <name>")
    click.echo(f"Then start the service:  healthvault serve --data-dir {settings.data_dir}")
