"""Patients: registration, the masked profile, and lookup by blind index.

Owns how a patient's identifying data is stored: real name, ID number, phone and birth date are sealed under the
patient's profile DEK (wrapped by the patient KEK in the separate key store), and ID number and phone also get an HMAC
blind index so they can be found without decrypting any row. Nothing here returns an unmasked ID number or phone.
Registration stores nothing without the two separate consents of PIPL-1 (vault/privacy.py); an erased patient
(vault/erasure.py) reads as absent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vault import fields, text
from vault.access import gate, ratelimit
from vault.accounts import service as accounts
from vault.db.models import Account, Patient
from vault.errors import Conflict, InvalidInput
from vault.identity import Identity, RequestContext
from vault.patients import privacy, realname
from vault.patients.identifiers import (
    birth_date_from_id,
    mask_id_number,
    mask_phone,
    normalize_id_number,
    normalize_phone,
)

if TYPE_CHECKING:
    from vault.runtime import Vault

ID_INDEX_PURPOSE = "blind-index:id_number"
PHONE_INDEX_PURPOSE = "blind-index:phone"
MAX_NAME_LENGTH = 64


@dataclasses.dataclass(frozen=True)
class Profile:
    patient_id: str
    real_name: str
    id_number_masked: str
    phone_masked: str
    birth_date: dt.date
    created_at: dt.datetime


def id_number_index(vault: Vault, normalized: str) -> bytes:
    """The index a new row stores (HMAC-SHA-256 or HMAC-SM3 by crypto_suite); lookups use id_number_indexes."""
    return fields.blind_index(vault, ID_INDEX_PURPOSE, kind="id_number", normalized_value=normalized)


def phone_index(vault: Vault, normalized: str) -> bytes:
    return fields.blind_index(vault, PHONE_INDEX_PURPOSE, kind="phone", normalized_value=normalized)


def id_number_indexes(vault: Vault, normalized: str) -> list[bytes]:
    """Every index the ID number may be stored under (rows indexed before a crypto_suite switch too)."""
    return fields.blind_index_candidates(vault, ID_INDEX_PURPOSE, kind="id_number", normalized_value=normalized)


def phone_indexes(vault: Vault, normalized: str) -> list[bytes]:
    return fields.blind_index_candidates(vault, PHONE_INDEX_PURPOSE, kind="phone", normalized_value=normalized)


def _clean_name(real_name: str) -> str:
    name = " ".join(real_name.split())
    if not name or len(name) > MAX_NAME_LENGTH or not text.is_inert(real_name):
        raise InvalidInput("Real name must be 1-64 printable characters", extra={"reason": "real-name"})
    return name


def _refuse_collision(session: Session, vault: Vault, *, ctx: RequestContext, patient_id: str) -> None:
    """A registration with a registered ID number: audited as a denial against that patient (pseudonym only) by the
    anonymous client, counted toward the client's denial-burst alert, then the same 409 as a taken username."""
    anonymous = Identity(account_id=f"anonymous:{ctx.client_addr or '-'}", role="anonymous")
    target = gate.Target("patient", patient_id, patient_id)
    gate.audit(vault, session, identity=anonymous, ctx=ctx, action="patient.register", target=target,
               outcome="deny", reason="id-number-registered")
    gate.alert_on_burst(vault, session, identity=anonymous, ctx=ctx, target=target)
    session.commit()
    raise Conflict("An account with these details already exists")


def register(session: Session, vault: Vault,
             *, username: str, password: str, real_name: str, id_number: str, phone: str,
             birth_date: dt.date | None, ctx: RequestContext, consents: privacy.Choices | None,
             realname_challenge: str | None = None, realname_code: str | None = None) -> str:
    """Create the patient, their KEK, their account and their consent rows; returns the patient id.

    Both separate consents (health data, ID number) on the current privacy notice come first: without them nothing is
    validated or stored (422 consent-required). With real-name verification configured, the caller must then have
    proved control of the phone (`realname_challenge`, `realname_code`) before a taken ID number is answered (409)."""
    notice = privacy.check_registration(vault, consents)
    assert consents is not None  # check_registration refused (422) a registration without them
    id_norm = normalize_id_number(id_number, today=vault.clock().date())
    ratelimit.check(vault, ctx=ctx, scope="register", target=id_norm)
    phone_norm = normalize_phone(phone)
    name = _clean_name(real_name)
    embedded = birth_date_from_id(id_norm)
    if birth_date is not None and birth_date != embedded:
        raise InvalidInput("Birth date does not match the ID number", extra={"reason": "birth-date-mismatch"})
    patient_id = str(uuid.uuid4())
    account = accounts.build(vault, username=username, password=password, role="patient", patient_id=patient_id)
    realname.require_control(session, vault, ctx=ctx, phone=phone_norm, challenge=realname_challenge,
                             code=realname_code)
    id_bidx = id_number_index(vault, id_norm)
    holder = session.scalar(
        select(Patient.id).where(Patient.id_number_bidx.in_(id_number_indexes(vault, id_norm))).limit(1))
    if holder is not None:
        _refuse_collision(session, vault, ctx=ctx, patient_id=holder)
    if session.scalar(select(Account.id).where(Account.username == account.username).limit(1)):
        raise Conflict("An account with these details already exists")

    # The KEK lives in the key store, committed first: a failure below leaves an unused KEK, never a patient
    # whose data cannot be decrypted.
    vault.keys.create_patient_key(patient_id)
    dek, wrapped = vault.keys.new_data_key(patient_id)
    where = dict(table="patients", row_id=patient_id, patient_id=patient_id)
    patient = Patient(
        id=patient_id,
        created_at=vault.clock(),
        wrapped_dek=wrapped,
        real_name_enc=fields.seal(dek, name, column="real_name", **where),
        id_number_enc=fields.seal(dek, id_norm, column="id_number", **where),
        phone_enc=fields.seal(dek, phone_norm, column="phone", **where),
        birth_date_enc=fields.seal(dek, embedded.isoformat(), column="birth_date", **where),
        id_number_bidx=id_bidx,
        phone_bidx=phone_index(vault, phone_norm),
    )
    session.add(patient)
    session.flush()
    session.add(account)
    identity = Identity(account_id=account.id, role="patient", patient_id=patient_id)
    gate.audit(vault, session, identity=identity, ctx=ctx, action="patient.register",
               target=gate.Target("patient", patient_id, patient_id), outcome="allow", reason="self")
    gate.audit(vault, session, identity=identity, ctx=ctx, action="key.create",  # the KEK made above (key event)
               target=gate.Target("patient-kek", "v1", patient_id), outcome="allow", reason="registration")
    privacy.record_registration(session, vault, identity=identity, ctx=ctx, patient_id=patient_id,
                                choices=consents, notice=notice)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        vault.keys.destroy_patient_keys(patient_id)
        raise Conflict("An account with these details already exists") from exc
    return patient_id


def get(session: Session, *, patient_id: str) -> Patient | None:
    return session.get(Patient, patient_id)


def get_profile(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, patient_id: str) -> Profile:
    """The masked profile, through the gate."""
    patient = get(session, patient_id=patient_id)
    if patient is not None and patient.erased_at is not None:
        patient = None  # crypto-shredded: nothing left to read
    target = gate.Target("patient", patient_id, patient_id if patient else None, exists=patient is not None)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="patient.read", target=target)
    assert patient is not None  # the gate refused (404) a patient that does not exist
    session.commit()
    dek = vault.keys.open_data_key(patient.id, patient.wrapped_dek)
    where = dict(table="patients", row_id=patient.id, patient_id=patient.id)
    return Profile(
        patient_id=patient.id,
        real_name=fields.open_text(dek, patient.real_name_enc, column="real_name", **where),
        id_number_masked=mask_id_number(fields.open_text(dek, patient.id_number_enc, column="id_number", **where)),
        phone_masked=mask_phone(fields.open_text(dek, patient.phone_enc, column="phone", **where)),
        birth_date=dt.date.fromisoformat(fields.open_text(dek, patient.birth_date_enc, column="birth_date", **where)),
        created_at=patient.created_at,
    )


def find_ids(session: Session, vault: Vault, *, id_number: str | None = None, phone: str | None = None) -> list[str]:
    """Patient ids whose ID number or phone matches exactly, by blind index only: no row is decrypted."""
    clauses = []
    if id_number is not None:
        clauses.append(Patient.id_number_bidx.in_(id_number_indexes(vault, normalize_id_number(id_number))))
    if phone is not None:
        clauses.append(Patient.phone_bidx.in_(phone_indexes(vault, normalize_phone(phone))))
    if not clauses:
        return []
    return list(session.scalars(select(Patient.id).where(or_(*clauses)).order_by(Patient.id)))
