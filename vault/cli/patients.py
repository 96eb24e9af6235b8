"""`healthvault patients erase`: patient data operations run by an operator on the host.

Never: erases without a confirmation (a terminal prompt, or --yes), or names the patient in its report other than by
pseudonym (only the confirmation prompt repeats the id the operator typed).
"""

from __future__ import annotations

import sys

import click

from kms import KeyStoreError
from vault.cli import cli_identity, common_options, open_or_fail
from vault.errors import VaultError
from vault.identity import RequestContext


@click.group("patients")
def patients_group() -> None:
    """Patient data operations run by an operator on the host."""


@patients_group.command("erase")
@common_options
@click.argument("patient_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (erasure cannot be undone).")
def patients_erase(data_dir: str | None, passphrase_file: str | None, patient_id: str, yes: bool) -> None:
    """Erase a patient by crypto-shredding (PIPL art. 47): destroy their KEKs, blind indexes, records and blobs.

    Audited with the patient's pseudonym only. Running it again finishes an interrupted erasure."""
    from vault.patients import erasure

    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("erasure cannot be undone: pass --yes to confirm")
        click.confirm(f"Erase patient {patient_id} for good?", abort=True)
    vault = open_or_fail(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            report = erasure.erase_by_operator(session, vault, patient_id=patient_id, actor=cli_identity(),
                                               ctx=RequestContext(request_id="cli"))
    except VaultError as exc:
        raise click.ClickException(exc.detail) from exc
    except KeyStoreError as exc:
        raise click.ClickException(f"{exc} (nothing was erased unless the patient is marked erased: run again)") \
            from exc
    finally:
        vault.close()
    if report.already_erased:
        click.echo(f"patient {report.patient_pseudonym} was already erased")
    else:
        click.echo(f"erased patient {report.patient_pseudonym}: {report.key_versions_destroyed} key version(s) "
                   f"destroyed, {report.records_deleted} record(s) and {report.grants_revoked} grant(s) removed")
