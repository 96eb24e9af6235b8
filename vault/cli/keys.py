"""`healthvault keys status | rotate | rewrap | retire`: the key hierarchy from the host (docs/key-rotation.md).

The operations are vault.keys' (status, rotation, rewrap, retirement); this module parses options, shows progress
and prints results. A root rotation in production needs an approved two-person request (vault.keys.rotation).
Never: prints key bytes, or a patient id other than the one the operator passed to `--kek`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kms import KeyStoreError
from vault.cli import cli_identity, common_options, open_or_fail
from vault.identity import RequestContext

if TYPE_CHECKING:
    from vault.keys.retirement import RetireResult
    from vault.keys.rewrap import RewrapJobView
    from vault.keys.status import KeyStatus


@click.group("keys")
def keys_group() -> None:
    """Rotate, rewrap, retire and inspect keys (root -> patient KEK -> record DEK). See docs/key-rotation.md."""


def _keys_status_text(status: KeyStatus) -> list[str]:
    from kms import suites

    lines = [f"provider {status.provider}, suite {suites.name_of(status.suite)} (id {status.suite}) for new keys, "
             f"current root version {status.current_root_version}",
             "root versions:"]
    for r in status.root_versions:
        lines.append(f"  v{r.version}{' (current)' if r.current else ''}: wraps {r.patient_keks} patient KEK(s), "
                     f"{r.service_keys} service key(s)")
    lines.append("patient KEK versions:")
    for k in status.kek_versions:
        lines.append(f"  v{k.version}: {k.keks} patient(s), wraps {k.deks} DEK(s)")
    lines.append(f"waiting for rewrap: {status.keks_under_old_root} KEK(s) and {status.service_keys_under_old_root} "
                 f"service key(s) under an old root, {status.deks_under_old_kek} DEK(s) under an old KEK")
    if status.deks_unreadable:
        lines.append(f"UNREADABLE wrapped DEKs (integrity problem): {status.deks_unreadable}")
    lines.append(f"root rotation requests open: {status.pending_rotations}")
    job = status.rewrap_job
    if job is not None:
        lines.append(f"last rewrap job {job.job_id}: {job.status}, phase {job.phase}, {job.scanned}/{job.total} "
                     f"looked at, {job.rewrapped} rewrapped, {job.failed} failed")
    return lines


@keys_group.command("status")
@common_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def keys_status(data_dir: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Root and KEK versions, what each wraps, and what still waits for a rewrap."""
    import dataclasses
    import json

    from vault.access import audit_append
    from vault.keys import status as keystatus

    vault = open_or_fail(data_dir, passphrase_file)
    try:
        status = keystatus.compute_status(vault)
        with vault.session() as session:
            audit_append.append(session, vault, identity=cli_identity(), ctx=RequestContext(request_id="cli"),
                                action="key.status", outcome="allow", resource_type="keys")
            session.commit()
    finally:
        vault.close()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(status), default=str, indent=2))
    else:
        click.echo("\n".join(_keys_status_text(status)))


@keys_group.command("rotate")
@common_options
@click.option("--root", "root", is_flag=True, help="A new root version (two-person rule in production).")
@click.option("--kek", "patient_id", metavar="PATIENT", help="A new KEK version for one patient.")
@click.option("--all-keks", "all_keks", is_flag=True, help="A new KEK version for every patient.")
def keys_rotate(data_dir: str | None, passphrase_file: str | None, root: bool, patient_id: str | None,
                all_keks: bool) -> None:
    """Make a new key version; everything wrapped from now on uses it. Old wraps keep opening until rewrapped."""
    if sum((bool(root), bool(patient_id), bool(all_keks))) != 1:
        raise click.UsageError("give exactly one of --root, --kek PATIENT, --all-keks")
    from vault.keys import rotation

    ctx = RequestContext(request_id="cli")
    vault = open_or_fail(data_dir, passphrase_file)
    try:
        if root:
            if vault.settings.profile != "production":
                click.echo("warning: development profile: a root rotation without a second secadmin's approval "
                           "(the production profile refuses this; see POST /v1/keys/rotations)", err=True)
            view = rotation.rotate_root_cli(vault, identity=cli_identity(), ctx=ctx)
            click.echo(f"root key rotated: version {view.new_version} is current (request {view.request_id}); "
                       "run `healthvault keys rewrap` to move old wraps")
        elif patient_id:
            version = rotation.rotate_kek(vault, patient_id=patient_id, identity=cli_identity(), ctx=ctx)
            click.echo(f"patient KEK rotated: version {version}; run `healthvault keys rewrap` to move old DEKs")
        else:
            from tqdm import tqdm

            with tqdm(unit="patient", desc="rotate KEKs") as bar:
                count = rotation.rotate_all_keks(vault, identity=cli_identity(), ctx=ctx, progress=bar.update)
            click.echo(f"rotated the KEK of {count} patient(s); run `healthvault keys rewrap` to move old DEKs")
    except rotation.TwoPersonRuleRefused as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        vault.close()


@keys_group.command("rewrap")
@common_options
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 50_000))
@click.option("--pause-ms", default=0, show_default=True, type=click.IntRange(0, 60_000),
              help="Sleep between batches to leave room for the live service.")
@click.option("--retire", "then_retire", is_flag=True, help="Retire unreferenced old versions afterwards.")
@click.option("--grace-seconds", default=3600, show_default=True, type=click.IntRange(0, None),
              help="With --retire: keep old versions this long after the newest was created.")
def keys_rewrap(data_dir: str | None, passphrase_file: str | None, batch_size: int, pause_ms: int,
                then_retire: bool, grace_seconds: int) -> None:
    """Move every wrapped key to the newest version (resumes an interrupted run; safe to repeat)."""
    from tqdm import tqdm

    from vault.keys import retirement, rewrap

    ctx = RequestContext(request_id="cli")
    vault = open_or_fail(data_dir, passphrase_file)
    bar = tqdm(total=0, unit="key", desc="rewrap")

    def progress(view: RewrapJobView) -> None:
        bar.total = view.total
        bar.n = view.scanned
        bar.set_postfix_str(f"{view.phase} rewrapped={view.rewrapped} failed={view.failed}", refresh=False)
        bar.refresh()

    try:
        job = rewrap.rewrap(vault, identity=cli_identity(), ctx=ctx, batch_size=batch_size, progress=progress,
                            pause_seconds=pause_ms / 1000)
        bar.close()
        click.echo(f"rewrap job {job.job_id} done: {job.scanned} key(s) looked at, {job.rewrapped} rewrapped, "
                   f"{job.failed} failed")
        if then_retire:
            _echo_retired(retirement.retire(vault, identity=cli_identity(), ctx=ctx, grace_seconds=grace_seconds))
    except rewrap.RewrapTakenOver as exc:
        raise click.ClickException("another rewrap run took this job over; this one stopped") from exc
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()
        vault.close()
    if job.failed:
        raise click.ClickException(f"{job.failed} wrapped key(s) did not open (audited as key.unwrap_failed); "
                                   "their versions are kept")


def _echo_retired(result: RetireResult) -> None:
    click.echo(f"retired root version(s): {', '.join(map(str, result.root_versions)) or 'none'}; "
               f"retired {result.kek_versions} old patient KEK version(s)")
    for reason in result.refused:
        click.echo(f"kept: {reason}")


@keys_group.command("retire")
@common_options
@click.option("--grace-seconds", default=3600, show_default=True, type=click.IntRange(0, None),
              help="Keep old versions this long after the newest was created (in-flight uploads).")
def keys_retire(data_dir: str | None, passphrase_file: str | None, grace_seconds: int) -> None:
    """Destroy old root and KEK versions that nothing references any more (refuses the rest, saying why)."""
    from vault.keys import retirement

    vault = open_or_fail(data_dir, passphrase_file)
    try:
        _echo_retired(retirement.retire(vault, identity=cli_identity(), ctx=RequestContext(request_id="cli"),
                                        grace_seconds=grace_seconds))
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        vault.close()
