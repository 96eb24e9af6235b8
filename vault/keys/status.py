"""Key status: which root and KEK versions exist, what each wraps, and what still waits for a rewrap.

Owns the status views (`KeyStatus` and its parts) and the audited look at them (`key.status`: secadmin, auditor and
auditadmin, decided by the gate). Reads counts and the 6-byte headers of wrapped DEKs only.
Never: changes a key, decrypts anything, or returns key bytes or patient ids.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from sqlalchemy.orm import Session

from vault.access import gate
from vault.identity import Identity, RequestContext
from vault.keys.common import scan_dek_heads
from vault.keys.rewrap import RewrapJobView, job_view
from vault.keys.rotation import is_expired

if TYPE_CHECKING:
    from vault.runtime import Vault


@dataclasses.dataclass(frozen=True)
class RootVersionStatus:
    version: int
    current: bool
    patient_keks: Annotated[int, Field(description="patient KEK versions this root version wraps")]
    service_keys: int


@dataclasses.dataclass(frozen=True)
class KekVersionStatus:
    version: int
    keks: Annotated[int, Field(description="patients whose KEK has this version")]
    deks: Annotated[int, Field(description="wrapped DEKs in the data database that name this KEK version")]


@dataclasses.dataclass(frozen=True)
class KeyStatus:
    provider: str
    suite: int
    current_root_version: int
    root_versions: list[RootVersionStatus]
    kek_versions: list[KekVersionStatus]
    keks_under_old_root: int
    service_keys_under_old_root: int
    deks_under_old_kek: int
    deks_unreadable: int  # malformed wraps (integrity problem); erased patients' empty wraps are not counted
    pending_rotations: int
    rewrap_job: RewrapJobView | None


def compute_status(vault: Vault) -> KeyStatus:
    """Versions and counts (no gate: callers check who may see it)."""
    keys, store = vault.keys, vault.keystore
    current = keys.current_root_version()
    root_counts = store.root_version_counts()
    versions = sorted(set(keys.root_versions()) | set(root_counts))
    root = [RootVersionStatus(v, v == current, root_counts.get(v, {}).get("patient_keks", 0),
                              root_counts.get(v, {}).get("service_keys", 0)) for v in versions]
    newest = store.all_newest_kek_versions()
    deks_by_version: dict[int, int] = {}
    stale = unreadable = 0
    for _name, _row_id, patient_id, version in scan_dek_heads(vault):
        if version is None:
            unreadable += 1
            continue
        deks_by_version[version] = deks_by_version.get(version, 0) + 1
        top = newest.get(patient_id)
        if top and version != top:
            stale += 1
    kek_counts = store.kek_version_counts()
    kek = [KekVersionStatus(v, kek_counts.get(v, 0), deks_by_version.get(v, 0))
           for v in sorted(set(kek_counts) | set(deks_by_version))]
    pending = [r for r in store.rotation_requests(target="root", statuses=("pending", "approved", "executing"))
               if not is_expired(r, vault.clock())]
    return KeyStatus(
        provider=keys.provider_name, suite=keys.suite, current_root_version=current, root_versions=root,
        kek_versions=kek,
        keks_under_old_root=sum(r.patient_keks for r in root if not r.current),
        service_keys_under_old_root=sum(r.service_keys for r in root if not r.current),
        deks_under_old_kek=stale, deks_unreadable=unreadable, pending_rotations=len(pending),
        rewrap_job=job_view(next(iter(store.rewrap_jobs(limit=1)), None)))


def status(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext) -> KeyStatus:
    """Key status for secadmin, auditor and auditadmin; the look is audited (`key.status`)."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.status", target=gate.Target("keys", None, None))
    session.commit()
    return compute_status(vault)

