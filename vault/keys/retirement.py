"""Retirement: destroy old root and KEK versions that nothing references any more.

Owns the decision of what may be retired: a KEK version no wrapped DEK names (and that is not a patient's newest), a
root version no KEK or service key is wrapped by (never the current one), each only `grace_seconds` after the newest
version was created, so an upload that wrapped its DEK just before a rotation and commits later never finds its KEK
gone. What it keeps it reports, saying why, without identifiers.
Never: retires a root version a wrapped key names or a KEK version a wrapped DEK names, or returns key bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

from kms import KeyStoreError
from vault.db import keystate
from vault.identity import Identity, RequestContext
from vault.keys.common import DEFAULT_BATCH, audit_now, scan_dek_heads, utc

if TYPE_CHECKING:
    from vault.runtime import Vault

DEFAULT_GRACE_SECONDS = 3600


@dataclasses.dataclass
class RetireResult:
    root_versions: list[int] = dataclasses.field(default_factory=list)
    kek_versions: int = 0
    refused: list[str] = dataclasses.field(default_factory=list)  # human-readable, no identifiers


def _referenced_kek_versions(vault: Vault) -> set[tuple[str, int]]:
    referenced: set[tuple[str, int]] = set()
    for _name, _row_id, patient_id, version in scan_dek_heads(vault):
        if version is not None:
            referenced.add((patient_id, version))
    return referenced


def retire(vault: Vault, *, identity: Identity, ctx: RequestContext, grace_seconds: int = DEFAULT_GRACE_SECONDS,
           batch_size: int = DEFAULT_BATCH) -> RetireResult:
    """Retire every old version nothing references: KEK versions no wrapped DEK names (and that are not a patient's
    newest), then root versions no KEK or service key is wrapped by (never the current one)."""
    store, keys = vault.keystore, vault.keys
    # KEK rows carry the key manager's clock, rotation requests the vault's; the same wall clock in a deployment.
    now = max(vault.clock(), keys.utcnow())
    grace = dt.timedelta(seconds=max(0, grace_seconds))
    result = RetireResult()
    referenced = _referenced_kek_versions(vault)
    after = None
    young = in_use = 0
    while True:
        rows = store.old_kek_rows(after=after, limit=batch_size)
        if not rows:
            break
        after = (rows[-1][0], rows[-1][1])
        doomed = []
        for patient_id, version, newest_created in rows:
            if (patient_id, version) in referenced:
                in_use += 1
            elif utc(newest_created) + grace > now:
                young += 1
            else:
                doomed.append((patient_id, version))
        if doomed:
            deleted = keys.retire_patient_keks(doomed)
            result.kek_versions += deleted
            audit_now(vault, identity=identity, ctx=ctx, action="key.retire", resource_type="patient-kek",
                      reason=f"batch retired={deleted}")
    if in_use:
        result.refused.append(f"{in_use} old KEK version(s) still wrap DEKs: run `healthvault keys rewrap` first")
    if young:
        result.refused.append(f"{young} old KEK version(s) wait for the {grace_seconds} s grace period after rotation")
    current = keys.current_root_version()
    counts = store.root_version_counts()
    last_rotation = next((r for r in store.rotation_requests(target="root", statuses=("executed",))
                          if r.new_version == current), None)
    for version in keys.root_versions():
        if version == current:
            continue
        used = counts.get(version)
        if used and (used["patient_keks"] or used["service_keys"]):
            result.refused.append(f"root version {version} still wraps {used['patient_keks']} KEK(s) and "
                                  f"{used['service_keys']} service key(s): run `healthvault keys rewrap` first")
            continue
        executed = utc(last_rotation.executed_at) if last_rotation is not None else None
        if executed is not None and executed + grace > now:
            result.refused.append(f"root version {version} waits for the {grace_seconds} s grace period")
            continue
        try:
            keys.retire_root_version(version)
        except KeyStoreError as exc:
            result.refused.append(str(exc))
            continue
        result.root_versions.append(version)
        audit_now(vault, identity=identity, ctx=ctx, action="key.retire", resource_type="root-key",
                  resource_id=str(version), reason="unreferenced")
    if result.kek_versions or result.root_versions:  # other processes drop whatever they cached
        with vault.session() as session:
            keystate.publish(session, patient_id=None, reason="retire", now=vault.clock())
            session.commit()
    return result
