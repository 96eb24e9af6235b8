"""What the key operations share: the wrapped-DEK columns of the data database, the scan of their headers, the
operator-side audit helpers and the `system:kms` identity.

Owns `DEK_COLUMNS`: every column holding a DEK wrapped by a patient KEK must be listed here, or retirement could
delete a KEK still in use (a test checks the models against it).
Never: reads or returns more of a wrapped DEK than its 6-byte header, or puts key bytes or a reason longer than 128
characters into an audit event.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, overload

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vault.access import audit_append
from vault.db.models import Patient, PatientExport, Record
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

log = logging.getLogger("healthvault.keys")

# (name, table, id column, patient-id column, wrapped DEK column): every DEK wrapped by a patient KEK.
_P, _R, _E = Patient.__table__, Record.__table__, PatientExport.__table__
DEK_COLUMNS = (
    ("patients", _P, _P.c.id, _P.c.id, _P.c.wrapped_dek),
    ("records", _R, _R.c.id, _R.c.patient_id, _R.c.wrapped_dek),
    ("patient_exports", _E, _E.c.id, _E.c.patient_id, _E.c.wrapped_dek),  # issue 16: export packages
)
DEFAULT_BATCH = 1000
SYSTEM = Identity(account_id="system:kms", role="system")
_SCAN_CHUNK = 5000


@overload
def utc(moment: dt.datetime) -> dt.datetime: ...
@overload
def utc(moment: None) -> None: ...
def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns: they were written in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment


def audit(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, action: str,
          resource_type: str, outcome: str = "allow", resource_id: str | None = None, patient_id: str | None = None,
          reason: str | None = None) -> None:
    """One audit event in the caller's transaction (the caller commits)."""
    audit_append.append(session, vault, identity=identity, ctx=ctx, action=action, outcome=outcome,
                        resource_type=resource_type, resource_id=resource_id, patient_id=patient_id,
                        reason=reason[:128] if reason else None)


def audit_now(vault: Vault, **kwargs: object) -> None:
    """One audit event in its own transaction (key-store changes cannot share the data database's)."""
    with vault.session() as session:
        audit(session, vault, **kwargs)  # type: ignore[arg-type]
        session.commit()


def scan_dek_heads(vault: Vault) -> Iterator[tuple[str, str, str, int | None]]:
    """Yield (table name, row id, patient id, kek_version | None) for every non-empty wrapped DEK; None = malformed.

    Reads only the first 6 bytes of each wrap (format, KEK version, suite), in id order, a chunk at a time."""
    for name, _table, id_col, patient_col, wrapped_col in DEK_COLUMNS:
        head = func.substr(wrapped_col, 1, 6)
        after = None
        while True:
            query = (select(id_col, patient_col, head).where(func.length(wrapped_col) > 0)
                     .order_by(id_col).limit(_SCAN_CHUNK))
            if after is not None:
                query = query.where(id_col > after)
            with vault.session() as session:
                rows = session.execute(query).all()
            if not rows:
                break
            for row_id, patient_id, prefix in rows:
                version = None
                if prefix is not None and len(prefix) >= 5 and prefix[0] in (1, 2):
                    version = int.from_bytes(bytes(prefix[1:5]), "big")
                yield name, row_id, patient_id, version
            after = rows[-1][0]
