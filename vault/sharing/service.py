"""Sharing: consent grants from a patient to a doctor or escort, their withdrawal, the grantee's view, break-glass.

Owns the rules a grant must satisfy before it becomes a Casbin policy source: a named recipient with a care role, a
purpose, a bounded window, a scope inside the patient's own records. A category grant without `include_future`
is frozen at creation to the records that exist then (never `special` ones); with it, the category policy also
reaches records created later in the window (still never `special`). Every create, list, revoke and break-glass
claim is audited with the grant id. Purposes and reasons are sealed under the patient's profile DEK; the signed consent
receipt and its purpose salt are vault.sharing.receipt's (the salt is shown to the patient only, and a grantee sees a
grant's receipt only while the grant is live). Every grant and claim row carries an integrity tag over what
authorisation reads (vault.access.integrity, INT-1), re-sealed when a grant is withdrawn; a grant whose tag fails is
left out of the grantee's listing and raises the alarm.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from consent.models import BreakGlass, Grant
from kms import DataKey
from vault import fields, text
from vault.access import alerts, audit_append, gate, integrity
from vault.accounts import totp
from vault.accounts.usernames import normalize_username
from vault.db.models import CATEGORIES, Account, Patient, Record
from vault.errors import InvalidInput, NotFound, OtpRequired, RateLimited
from vault.identity import Identity, RequestContext
from vault.sharing import receipt as receipts

if TYPE_CHECKING:
    from vault.runtime import Vault

GRANTEE_ROLES = ("doctor", "escort")
VERBS = ("view", "download")
MAX_PURPOSE = 500
BREAKGLASS_MINUTES = 60


@dataclasses.dataclass(frozen=True)
class GrantView:
    grant_id: str
    patient_id: str
    grantee_id: str
    grantee_username: str
    grantee_role: str
    record_ids: list[str]
    categories: list[str]
    include_future: bool
    actions: list[str]
    purpose: str | None
    consult_ref: str | None
    not_before: dt.datetime
    expires_at: dt.datetime
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    active: bool
    # The signed receipt: always to the patient, to the grantee only while the grant is live (else None).
    receipt: dict | None
    # The random salt of the receipt's purpose commitment (hex), to the patient only: with it and the purpose anyone
    # can check what the receipt commits to (consent.receipts.purpose_matches). None for others and older receipts.
    purpose_salt: str | None = None


def _profile_dek(vault: Vault, session: Session, patient_id: str) -> DataKey:
    wrapped = session.scalar(select(Patient.wrapped_dek).where(Patient.id == patient_id))
    if wrapped is None:  # the gate has let the caller reach this patient: a missing row is a vanished patient
        raise NotFound()
    return vault.keys.open_data_key(patient_id, wrapped)


def _view(vault: Vault, grant: Grant | SimpleNamespace, *, grantee_username: str, grantee_role: str,
          purpose: str | None, dek: DataKey, patient: bool) -> GrantView:
    """The grant as the patient (`patient=True`: with the purpose salt) or its grantee sees it."""
    now = vault.clock()
    active = grant.revoked_at is None and grant.not_before <= now < grant.expires_at
    return GrantView(
        grant_id=grant.id, patient_id=grant.patient_id, grantee_id=grant.grantee_id,
        grantee_username=grantee_username, grantee_role=grantee_role, record_ids=json.loads(grant.record_ids),
        categories=json.loads(grant.categories), include_future=grant.include_future,
        actions=json.loads(grant.actions), purpose=purpose, consult_ref=grant.consult_ref,
        not_before=grant.not_before, expires_at=grant.expires_at, created_at=grant.created_at,
        revoked_at=grant.revoked_at, active=active,
        receipt=json.loads(grant.receipt) if patient or active else None,
        purpose_salt=receipts.open_salt(dek, grant) if patient else None,
    )


def _open_purpose(dek, grant: Grant | SimpleNamespace) -> str:
    return fields.open_text(dek, grant.purpose_enc, table="grants", column="purpose", row_id=grant.id,
                            patient_id=grant.patient_id)


_G = cast(Table, Grant.__table__)
# Grant and revoke are the write hot path (issue 4: >= 500 grants/s). Their statements are built once (building a
# SQLAlchemy statement per call cost more CPU than running it) and run as Core on the session's connection; each read
# brings back everything the request needs in one round trip (recipient and the patient's wrapped profile DEK; the
# grant, its grantee and the DEK), and the grant row is written without the ORM unit of work.
_INSERT_GRANT = _G.insert()
_REVOKE = (update(_G).where(_G.c.id == bindparam("grant_id"), _G.c.revoked_at.is_(None))
           .values(revoked_at=bindparam("now", type_=_G.c.revoked_at.type), integrity_mac=bindparam("mac")))


_RECIPIENT_AND_DEK = select(
    Account.id, Account.username, Account.role, Account.is_active,
    select(Patient.wrapped_dek).where(Patient.id == bindparam("patient")).scalar_subquery().label("wrapped_dek"),
).where(Account.username == bindparam("username"))
_GRANT_GRANTEE_DEK = (
    select(_G, Account.username.label("grantee_username"), Account.role.label("grantee_role"),
           Patient.wrapped_dek.label("wrapped_dek"))
    .outerjoin(Account, Account.id == _G.c.grantee_id).outerjoin(Patient, Patient.id == _G.c.patient_id)
    .where(_G.c.id == bindparam("grant_id")))


def _recipient_and_dek(session: Session, *, username: str, patient_id: str):
    """(id, username, role, is_active, the patient's wrapped profile DEK) of an account, or None."""
    try:
        name = normalize_username(username)
    except Exception:  # noqa: BLE001 - malformed names are unknown recipients
        return None
    return session.connection().execute(_RECIPIENT_AND_DEK, {"username": name, "patient": patient_id}).first()


def create_grant(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, grantee: str,
                 record_ids: list[str], categories: list[str], include_future: bool, actions: list[str],
                 purpose: str, consult_ref: str | None, not_before: dt.datetime | None,
                 expires_at: dt.datetime) -> GrantView:
    """A patient's separate consent to share chosen records with one recipient, for a purpose and a time."""
    patient_id = identity.patient_id
    grant_id = str(uuid.uuid4())
    target = gate.Target("grant", grant_id, patient_id)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="grant.create", target=target, audit_allow=False)
    assert patient_id is not None  # only a patient may grant: the gate refused anyone else
    now = vault.clock()
    expires_at = text.checked_instant(expires_at, field="expires_at")
    not_before = text.checked_instant(not_before, field="not_before") or now
    purpose = text.inert(purpose or "", field="purpose", max_length=MAX_PURPOSE)
    if consult_ref is not None:
        consult_ref = text.inert(consult_ref, field="consult_ref", max_length=64)
    if not actions or any(a not in VERBS for a in actions):
        raise InvalidInput("actions must be a non-empty subset of view, download", extra={"reason": "actions"})
    if any(c not in CATEGORIES for c in categories):
        raise InvalidInput("unknown category", extra={"reason": "category"})
    if not record_ids and not categories:
        raise InvalidInput("name records or categories to share", extra={"reason": "scope"})
    if expires_at <= not_before or expires_at <= now:
        raise InvalidInput("expires_at must be after not_before and in the future", extra={"reason": "window"})
    if expires_at - not_before > dt.timedelta(days=vault.settings.grant_max_days):
        raise InvalidInput(f"a grant may last at most {vault.settings.grant_max_days} days",
                           extra={"reason": "window"})
    recipient = _recipient_and_dek(session, username=grantee, patient_id=patient_id)
    if recipient is None or recipient.role not in GRANTEE_ROLES or not recipient.is_active:
        raise NotFound("No doctor or escort with that username")
    own = set(session.scalars(select(Record.id).where(Record.patient_id == patient_id,
                                                      Record.id.in_(record_ids)))) if record_ids else set()
    if own != set(record_ids):
        raise NotFound("Record not found")
    scope_ids = list(dict.fromkeys(record_ids))
    if categories and not include_future:
        scope_ids += [rid for rid in session.scalars(
            select(Record.id).where(Record.patient_id == patient_id, Record.category.in_(categories),
                                    Record.label != "special").order_by(Record.created_at))
                      if rid not in scope_ids]
    dek = vault.keys.open_data_key(patient_id, recipient.wrapped_dek)
    receipt, salt_enc = receipts.issue(
        vault, dek=dek, grant_id=grant_id, patient_id=patient_id, grantee_id=recipient.id,
        grantee_role=recipient.role, record_ids=scope_ids, categories=categories, include_future=include_future,
        actions=actions, purpose=purpose, consult_ref=consult_ref, not_before=not_before, expires_at=expires_at,
        now=now)
    grant = SimpleNamespace(  # the row as written (a plain object: the ORM's instrumentation is not needed here)
        id=grant_id, patient_id=patient_id, grantee_id=recipient.id, record_ids=json.dumps(scope_ids),
        categories=json.dumps(sorted(set(categories))), include_future=include_future,
        actions=json.dumps(sorted(set(actions))),
        purpose_enc=fields.seal(dek, purpose, table="grants", column="purpose", row_id=grant_id,
                                patient_id=patient_id),
        purpose_salt_enc=salt_enc, consult_ref=consult_ref, not_before=not_before, expires_at=expires_at,
        created_at=now, revoked_at=None, receipt=receipt,
    )
    grant.integrity_mac = integrity.seal_grant(vault, grant, revoked_at=None)
    session.connection().execute(_INSERT_GRANT, vars(grant))
    gate.audit(vault, session, identity=identity, ctx=ctx, action="grant.create", target=target, outcome="allow",
               reason=f"to-{recipient.role}", grant_id=grant_id)
    session.commit()
    return _view(vault, grant, grantee_username=recipient.username, grantee_role=recipient.role, purpose=purpose,
                 dek=dek, patient=True)


def _with_grantee_and_dek(query):
    """Grants with their grantee's name and role and the patient's wrapped profile DEK, in one statement."""
    return (query.add_columns(Account.username, Account.role, Patient.wrapped_dek)
            .outerjoin(Account, Account.id == Grant.grantee_id).outerjoin(Patient, Patient.id == Grant.patient_id))


def list_grants(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext) -> list[GrantView]:
    """Patients see the grants they gave; doctors and escorts the grants they received; nobody sees others'."""
    target = gate.Target("grant", None, identity.patient_id)
    if identity.role == "patient":
        gate.enter(vault, session, identity=identity, ctx=ctx, action="grant.list", target=target)
        rows = session.execute(_with_grantee_and_dek(select(Grant)).where(Grant.patient_id == identity.patient_id)
                               .order_by(Grant.created_at.desc())).all()
    elif identity.role in GRANTEE_ROLES:
        gate.enter(vault, session, identity=identity, ctx=ctx, action="shared.list", target=gate.Target(
            "grant", None, None))
        rows = session.execute(_with_grantee_and_dek(select(Grant)).where(Grant.grantee_id == identity.account_id)
                               .order_by(Grant.created_at.desc())).all()
    else:
        gate.enter(vault, session, identity=identity, ctx=ctx, action="grant.list", target=target)
        rows = []
    session.commit()
    views = []
    for grant, username, role, wrapped in rows:
        dek = vault.keys.open_data_key(grant.patient_id, wrapped)
        views.append(_view(vault, grant, grantee_username=username, grantee_role=role,
                           purpose=_open_purpose(dek, grant), dek=dek, patient=identity.role == "patient"))
    return views


def revoke_grant(session: Session, vault: Vault,
                 *, identity: Identity, ctx: RequestContext, grant_id: str) -> GrantView:
    """Withdrawal in one step: effective on the very next request everywhere (no decision is cached)."""
    row = session.connection().execute(_GRANT_GRANTEE_DEK, {"grant_id": grant_id}).first()
    mine = row is not None and row.patient_id == identity.patient_id
    target = gate.Target("grant", grant_id, row.patient_id if mine and row is not None else None, exists=mine)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="grant.revoke", target=target, deny_as=NotFound,
               audit_allow=False)
    assert row is not None  # the gate refused (404) a grant that is not the caller's
    grant = SimpleNamespace(**{c.name: getattr(row, c.name) for c in _G.columns})
    if grant.revoked_at is None:
        now = vault.clock()
        # The withdrawn state is sealed, so a revoked_at set back to NULL breaks the tag; a row whose tag already
        # fails keeps it (withdrawal never launders an edit) and raises the alarm.
        if integrity.grant_intact(vault, grant, revoked_at=None, tag=grant.integrity_mac):
            mac = integrity.seal_grant(vault, grant, revoked_at=now)
        else:
            mac = grant.integrity_mac
            integrity.alarm(vault, session, identity=identity, ctx=ctx, target=target, sources=(f"grant:{grant_id}",))
        # Only a live grant is stamped: a repeated withdrawal keeps the first time (and is audited again).
        if session.connection().execute(_REVOKE, {"grant_id": grant_id, "now": now, "mac": mac}).rowcount == 1:
            grant.revoked_at = now
        else:
            grant.revoked_at = session.scalar(select(_G.c.revoked_at).where(_G.c.id == grant_id))
    gate.audit(vault, session, identity=identity, ctx=ctx, action="grant.revoke", target=target, outcome="allow",
               reason="withdrawn", grant_id=grant_id)
    session.commit()
    dek = vault.keys.open_data_key(grant.patient_id, row.wrapped_dek)
    return _view(vault, grant, grantee_username=row.grantee_username, grantee_role=row.grantee_role,
                 purpose=_open_purpose(dek, grant), dek=dek, patient=True)


@dataclasses.dataclass(frozen=True)
class SharedRecord:
    record_id: str
    patient_id: str
    category: str
    content_type: str
    created_at: dt.datetime
    grant_id: str
    expires_at: dt.datetime


def shared_with_me(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext) -> list[SharedRecord]:
    """What a doctor or escort may see right now: records of live grants (and break-glass claims), no PHI."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="shared.list", target=gate.Target("grant", None,
                                                                                                  None))
    session.commit()
    now = vault.clock()
    out: list[SharedRecord] = []
    grants = session.scalars(select(Grant).where(Grant.grantee_id == identity.account_id,
                                                 Grant.revoked_at.is_(None), Grant.not_before <= now,
                                                 Grant.expires_at > now))
    tampered = []
    for grant in grants:
        if not integrity.grant_intact(vault, grant, revoked_at=grant.revoked_at, tag=grant.integrity_mac):
            tampered.append(f"grant:{grant.id}")  # treated as absent
            continue
        ids = set(json.loads(grant.record_ids))
        query = select(Record).where(Record.patient_id == grant.patient_id)
        for record in session.scalars(query.order_by(Record.created_at)):
            future = (grant.include_future and record.category in json.loads(grant.categories)
                      and record.label != "special")
            if record.id in ids or future:
                out.append(SharedRecord(record.id, record.patient_id, record.category, record.content_type,
                                        record.created_at, grant.id, grant.expires_at))
    if tampered:
        integrity.alarm(vault, session, identity=identity, ctx=ctx, target=gate.Target("grant", None, None),
                        sources=tuple(tampered))
        session.commit()
    return out


def breakglass(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, patient_id: str,
               reason: str, otp: str | None = None) -> BreakGlass:
    """Emergency access for a doctor: time-boxed, audited as its own action, shown to the patient and auditors.

    Whoever is refused (another role, an unknown patient, an erased one) gets the same 404, each attempt audited; an
    allowed doctor then steps up with a fresh TOTP code (401 without it), and at most `breakglass_daily_cap` claims
    per doctor in 24 hours are granted (429 past that, audited)."""
    reason = text.inert(reason or "", field="reason", min_length=10, max_length=MAX_PURPOSE)
    patient = session.get(Patient, patient_id)
    reachable = patient is not None and patient.erased_at is None
    target = gate.Target("patient", patient_id, patient_id if patient else None, exists=reachable)
    decision = gate.enter(vault, session, identity=identity, ctx=ctx, action="breakglass", target=target,
                          deny_as=NotFound, audit_allow=False)
    doctor = session.get(Account, identity.account_id)
    if doctor is None or not doctor.totp_enabled or not otp or not totp.check(vault, doctor, otp):
        gate.audit(vault, session, identity=identity, ctx=ctx, action="breakglass", target=target, outcome="deny",
                   reason="otp-missing" if not otp else "bad-otp")
        session.commit()
        raise OtpRequired("Break-glass needs a fresh code from your authenticator (otp)")
    since = vault.clock() - dt.timedelta(hours=24)
    claims = session.scalar(select(func.count()).select_from(BreakGlass).where(
        BreakGlass.doctor_id == identity.account_id, BreakGlass.created_at > since)) or 0
    if claims >= vault.settings.breakglass_daily_cap:
        gate.audit(vault, session, identity=identity, ctx=ctx, action="breakglass", target=target, outcome="deny",
                   reason="daily-cap")
        session.commit()
        raise RateLimited(f"At most {vault.settings.breakglass_daily_cap} break-glass claims in 24 hours",
                          extra={"retry_after": 3600})
    gate.audit(vault, session, identity=identity, ctx=ctx, action="breakglass", target=target, outcome="allow",
               reason=decision.source.partition(":")[0])
    now = vault.clock()
    claim = BreakGlass(id=str(uuid.uuid4()), doctor_id=identity.account_id, patient_id=patient_id,
                       reason_enc=b"", created_at=now, expires_at=now + dt.timedelta(minutes=BREAKGLASS_MINUTES))
    claim.integrity_mac = integrity.seal_breakglass(vault, claim_id=claim.id, doctor_id=claim.doctor_id,
                                                    patient_id=patient_id, created_at=now,
                                                    expires_at=claim.expires_at)
    claim.reason_enc = fields.seal(_profile_dek(vault, session, patient_id), reason, table="breakglass",
                                   column="reason", row_id=claim.id, patient_id=patient_id)
    session.add(claim)
    session.flush()
    gate.audit(vault, session, identity=identity, ctx=ctx, action="alert.raised", target=target, outcome="allow",
               reason="breakglass", grant_id=claim.id)
    session.commit()
    alerts.send_webhook(vault.settings.alert_webhook, {
        "kind": "breakglass", "claim_id": claim.id, "actor": audit_append.actor_pseudonym(vault, identity.account_id),
        "patient": audit_append.patient_pseudonym(vault, patient_id), "expires_at": claim.expires_at.isoformat()})
    return claim
