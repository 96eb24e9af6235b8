"""Erasure by crypto-shredding (PIPL art. 47; COMPLIANCE PIPL-6, PIPL-9; issue 6 item 4).

Owns the one procedure that makes a patient unreadable everywhere: the patient asks (`DELETE /v1/patients/me`, with
their password again, and their TOTP code when they use one) or an operator on the host runs
`healthvault patients erase PATIENT_ID`. Steps, in this order so an interrupted erasure is finished by running it
again (every step is idempotent):

1. mark the patient erased, disable the account, revoke its tokens, append `patient.erase`, revoke its grants and
   end its break-glass claims (each row sealed again with its new end; commit): from here on nobody can reach the
   data through the service, in any process;
2. destroy every KEK version in the key store (`KeyManager.destroy_patient_keys`, a tombstone stays): every wrapped
   DEK of the patient — in this database, in any copy or backup of it — can no longer be unwrapped by anyone, root
   key or not, because the KEKs live only in the separate key store (or the HSM) whose destruction a data restore
   does not undo;
3. delete the encrypted blob files;
4. close the consent history with withdrawals, delete the record and lab-correction rows, overwrite the blind
   indexes with random bytes (so the ID number and phone no longer match anything) and the sealed profile with
   nothing, scrub the account's username, password hash and TOTP secret, append `key.shred` (commit).

Never: writes the patient id, a name or any identifier into the audit trail (events carry the patient pseudonym
only, resource id empty), erases without re-authentication on the API path, or deletes audit events or consent rows
(processing records kept under pseudonyms, PIPL arts. 55-56).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from consent.models import BreakGlass, Grant
from kms import KeyStoreError
from kms.blind_index import INDEX_SIZE
from vault.access import audit_append, gate, integrity
from vault.accounts import service as accounts
from vault.db import keystate
from vault.db.models import Account, AuthToken, LabCorrection, Patient, Record
from vault.errors import NotFound
from vault.identity import Identity, RequestContext
from vault.patients import privacy

if TYPE_CHECKING:
    from vault.runtime import Vault

UNUSABLE_PASSWORD_HASH = "!erased"  # noqa: S105 - not a password: a hash no password can ever match


@dataclasses.dataclass(frozen=True)
class ErasureReport:
    patient_pseudonym: str
    key_versions_destroyed: int
    records_deleted: int
    grants_revoked: int
    already_erased: bool = False


def _target(patient_id: str) -> gate.Target:
    """Audit target naming the patient by pseudonym only (resource id left empty)."""
    return gate.Target("patient", None, patient_id)


def erase_self(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, password: str,
               otp: str | None) -> ErasureReport:
    """The patient erases themself; the password (and TOTP code, if enrolled) is checked again first."""
    if identity.role != "patient" or identity.patient_id is None:
        raise NotFound("This account is not a patient")
    account = session.get(Account, identity.account_id)
    if account is None or account.patient_id != identity.patient_id:
        raise NotFound("This account is not a patient")
    accounts.reauthenticate(session, vault, identity=identity, ctx=ctx, password=password, otp=otp,
                            action="patient.erase", target=_target(identity.patient_id))
    return _erase(session, vault, patient_id=identity.patient_id, actor=identity, ctx=ctx, reason="self")


def erase_by_operator(session: Session, vault: Vault, *, patient_id: str, actor: Identity,
                      ctx: RequestContext) -> ErasureReport:
    """An operator on the host erases a patient (`healthvault patients erase`); also finishes an interrupted one."""
    if session.get(Patient, patient_id) is None:
        raise NotFound("No such patient")
    return _erase(session, vault, patient_id=patient_id, actor=actor, ctx=ctx, reason="operator")


def _erase(session: Session, vault: Vault, *, patient_id: str, actor: Identity, ctx: RequestContext,
           reason: str) -> ErasureReport:
    pseudonym = audit_append.patient_pseudonym(vault, patient_id)
    patient = session.get(Patient, patient_id)
    assert patient is not None  # callers checked it exists
    if (patient.erased_at is not None and patient.wrapped_dek == b""
            and not vault.keys.patient_key_exists(patient_id)):
        return ErasureReport(pseudonym, 0, 0, 0, already_erased=True)
    if not vault.keys.patient_key_exists(patient_id) and not vault.keystore.is_destroyed(patient_id):
        # A key store that never knew this patient is the wrong one (misconfigured URL or schema): shredding there
        # would report success while the real KEK survives. Refuse before touching anything.
        raise KeyStoreError("the configured key store holds no key for this patient: is it the right key store?")
    now = vault.clock()
    account_ids = list(session.scalars(select(Account.id).where(Account.patient_id == patient_id)))

    # 1. Out of reach: erased mark, account disabled, tokens revoked, the erasure on record.
    if patient.erased_at is None:
        patient.erased_at = now
        session.execute(update(Account).where(Account.patient_id == patient_id).values(is_active=False))
        if account_ids:
            session.execute(update(AuthToken).where(AuthToken.account_id.in_(account_ids),
                                                    AuthToken.revoked_at.is_(None)).values(revoked_at=now))
        gate.audit(vault, session, identity=actor, ctx=ctx, action="patient.erase", target=_target(patient_id),
                   outcome="allow", reason=reason)
    # Grants revoked and break-glass claims ended before any key is destroyed (every process refuses them from this
    # commit on), each row sealed again: its integrity tag covers the revocation and the end.
    grants = list(session.scalars(select(Grant).where(Grant.patient_id == patient_id, Grant.revoked_at.is_(None))))
    for grant in grants:
        grant.revoked_at = now
        grant.integrity_mac = integrity.seal_grant(vault, grant, revoked_at=now)
        gate.audit(vault, session, identity=actor, ctx=ctx, action="grant.revoke", target=_target(patient_id),
                   outcome="allow", reason="erasure", grant_id=grant.id)
    for claim in session.scalars(select(BreakGlass).where(BreakGlass.patient_id == patient_id,
                                                          BreakGlass.expires_at > now)):
        claim.expires_at = now
        claim.integrity_mac = integrity.seal_breakglass(vault, claim_id=claim.id, doctor_id=claim.doctor_id,
                                                        patient_id=claim.patient_id, created_at=claim.created_at,
                                                        expires_at=now)
    session.commit()

    # 2. Crypto-shred: the only step a data backup cannot undo.
    destroyed = vault.keys.destroy_patient_keys(patient_id)

    # 3. Ciphertext files (unreadable already; removed so they do not linger).
    record_ids = list(session.scalars(select(Record.id).where(Record.patient_id == patient_id)))
    for record_id in record_ids:
        vault.blobs.delete(record_id)

    # 4. Everything else that could point at the person.
    privacy.withdraw_all(session, vault, identity=actor, ctx=ctx, patient_id=patient_id)
    session.execute(delete(LabCorrection).where(LabCorrection.patient_id == patient_id))
    session.execute(delete(Record).where(Record.patient_id == patient_id))
    session.execute(update(Patient).where(Patient.id == patient_id).values(
        id_number_bidx=os.urandom(INDEX_SIZE), phone_bidx=os.urandom(INDEX_SIZE), wrapped_dek=b"",
        real_name_enc=b"", id_number_enc=b"", phone_enc=b"", birth_date_enc=b""))
    for account_id in account_ids:
        session.execute(update(Account).where(Account.id == account_id).values(
            username=f"erased-{uuid.uuid4().hex}", password_hash=UNUSABLE_PASSWORD_HASH, totp_secret_enc=None,
            totp_enabled=False, totp_last_step=None, previous_password_hashes=None, is_active=False))
    gate.audit(vault, session, identity=actor, ctx=ctx, action="key.shred", target=_target(patient_id),
               outcome="allow", reason=f"kek-versions:{destroyed}")
    keystate.publish(session, patient_id=patient_id, reason="erasure", now=now)  # other processes drop their cache
    session.commit()
    return ErasureReport(pseudonym, destroyed, len(record_ids), len(grants))
