"""A grant's consent receipt: the signed statement made when the grant is given, and the one gated read of it.

Owns what a receipt states (ids, pseudonyms, scope, window; of the purpose only a commitment under a random salt of
this grant, `consent.receipts`) and who may read it. The salt is sealed under the patient's profile DEK next to the
purpose and shown only to the patient (their own grant listing), who can then prove the purpose a receipt commits to;
a receipt leaked alone gives nothing to test guesses of a short purpose against.
Reading (`get_receipt`, action `grant.receipt`) passes the gate: the patient who gave the grant always; the grantee
only while the grant is live, because the permission comes from the live grant itself (a Casbin policy on
`grant:<id>`, consent/engine.py) — a revoked, expired or not-yet-valid grant's receipt is the same 404 as an unknown
grant's; anyone else 404. Every read, allowed or denied, is audited in the caller's transaction and committed before
the receipt is returned.
Never: puts the purpose, or an unkeyed hash of it, into a statement; shows the salt to anyone but the patient.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from consent import receipts
from consent.models import Grant
from kms import DataKey
from vault import fields
from vault.access import audit_append, gate
from vault.errors import NotFound
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

ACTION = "grant.receipt"
_G = cast(Table, Grant.__table__)
_PARTIES = select(_G.c.patient_id, _G.c.grantee_id, _G.c.receipt).where(_G.c.id == bindparam("grant_id"))


def issue(vault: Vault, *, dek: DataKey, grant_id: str, patient_id: str, grantee_id: str, grantee_role: str,
          record_ids: list[str], categories: list[str], include_future: bool, actions: list[str], purpose: str,
          consult_ref: str | None, not_before: dt.datetime, expires_at: dt.datetime,
          now: dt.datetime) -> tuple[str, bytes]:
    """(the signed receipt, its purpose salt sealed under the patient's profile DEK) for a grant being given."""
    salt = receipts.new_salt()
    statement = {
        "grant_id": grant_id, "patient": audit_append.patient_pseudonym(vault, patient_id),
        "grantee": audit_append.actor_pseudonym(vault, grantee_id), "grantee_role": grantee_role,
        "record_ids": record_ids, "categories": sorted(set(categories)), "include_future": include_future,
        "actions": sorted(set(actions)), "purpose_commitment": receipts.purpose_commitment(salt, purpose),
        "consult_ref": consult_ref, "not_before": not_before.isoformat(), "expires_at": expires_at.isoformat(),
        "issued_at": now.isoformat(),
    }
    signed = receipts.sign(vault.keys.service_key(receipts.PURPOSE), statement)
    return signed, fields.seal(dek, salt, table="grants", column="purpose_salt", row_id=grant_id,
                               patient_id=patient_id)


def open_salt(dek: DataKey, grant) -> str | None:
    """The grant's purpose salt as hex (None for a format /1 receipt, which has none): for the patient's eyes."""
    if grant.purpose_salt_enc is None:
        return None
    return fields.open_bytes(dek, grant.purpose_salt_enc, table="grants", column="purpose_salt", row_id=grant.id,
                             patient_id=grant.patient_id).hex()


def get_receipt(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, grant_id: str) -> dict:
    """The signed receipt, to the patient who gave the grant or to its grantee while it is live; NotFound otherwise."""
    row = session.connection().execute(_PARTIES, {"grant_id": grant_id}).first()
    party = row is not None and (row.patient_id == identity.patient_id or row.grantee_id == identity.account_id)
    target = gate.Target("grant", grant_id, row.patient_id if party and row is not None else None, exists=party)
    gate.enter(vault, session, identity=identity, ctx=ctx, action=ACTION, target=target, deny_as=NotFound)
    assert row is not None  # the gate refused (404) a grant the caller is no party to
    session.commit()
    return json.loads(row.receipt)
