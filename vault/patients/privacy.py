"""Separate consent (PIPL arts. 14, 28-29; COMPLIANCE PIPL-1): the privacy notice, consent rows and the checks.

Owns: loading the versioned privacy notice (bundled `vault/patients/notices/privacy-notice.json`, or the file named by
`settings.privacy_notice_path`) and its SHA-256 over the exact file bytes; the append-only consent history (one row
per decision: patient, item, given or not, notice version and hash, time); the decision "may this patient's data be
processed now" (both required items given on the CURRENT notice: a changed notice forces re-consent) and "may this
patient's lab sheets be read by OCR" (the optional item). Every consent change is audited (`consent.give` /
`consent.withdraw`, reason = the item; no PHI).
Never: stores a consent against a notice the patient was not shown (the client names the version it displayed, and
it must be the current one), updates or deletes a consent row (the database refuses too), or treats silence as
consent (missing = not given).

Notice file (JSON, UTF-8): {"version": str (1-32 chars), "effective_date": str, "title": {zh, en},
"summary": {zh, en}, "sections": [{"item": "health_data"|"id_number"|"ocr", "required": bool, "title": {zh, en},
"text": {zh, en}}, ...], "rights": {zh, en}}. health_data and id_number must be required, ocr must be optional.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from vault.access import gate
from vault.db.fastpath import HotStatement
from vault.db.models import CONSENT_ITEMS, Consent
from vault.errors import ConsentRequired, NotFound, RegistrationConsentRequired, VaultError
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

BUNDLED_NOTICE = Path(__file__).parent / "notices" / "privacy-notice.json"
NOTICE_ENDPOINT = "/v1/privacy-notice"
CONSENT_ENDPOINT = "/v1/patients/me/consents"
REQUIRED_ITEMS = ("health_data", "id_number")
OPTIONAL_ITEMS = ("ocr",)
LANGUAGES = ("zh", "en")
MAX_NOTICE_BYTES = 256 * 1024
MAX_VERSION_LENGTH = 32


class NoticeError(ValueError):
    """Operator-facing: the configured privacy notice file is missing or malformed."""


# --- the notice ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Notice:
    version: str
    hash: str  # SHA-256 hex of the file's bytes
    document: dict

    @property
    def ref(self) -> dict:
        return {"version": self.version, "hash": self.hash}


def _texts(value, where: str) -> dict:
    if not isinstance(value, dict) or any(not isinstance(value.get(lang), str) or not value[lang].strip()
                                          for lang in LANGUAGES):
        raise NoticeError(f"privacy notice: {where} needs non-empty 'zh' and 'en' texts")
    return value


def parse_notice(data: bytes) -> Notice:
    """Validate a notice file's bytes; NoticeError says what is wrong."""
    if len(data) > MAX_NOTICE_BYTES:
        raise NoticeError("privacy notice: file is too large")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NoticeError("privacy notice: not UTF-8 JSON") from exc
    if not isinstance(document, dict):
        raise NoticeError("privacy notice: the top level must be an object")
    version = document.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION_LENGTH or not version.isprintable():
        raise NoticeError(f"privacy notice: 'version' must be 1-{MAX_VERSION_LENGTH} printable characters")
    _texts(document.get("title"), "title")
    sections = document.get("sections")
    if not isinstance(sections, list):
        raise NoticeError("privacy notice: 'sections' must be a list")
    items = {}
    for section in sections:
        if not isinstance(section, dict) or section.get("item") not in CONSENT_ITEMS or section["item"] in items:
            raise NoticeError(f"privacy notice: each section names one of {', '.join(CONSENT_ITEMS)} once")
        _texts(section.get("title"), f"section {section['item']} title")
        _texts(section.get("text"), f"section {section['item']} text")
        items[section["item"]] = section.get("required")
    if set(items) != set(CONSENT_ITEMS):
        raise NoticeError(f"privacy notice: sections must cover {', '.join(CONSENT_ITEMS)}")
    if any(items[i] is not True for i in REQUIRED_ITEMS) or any(items[i] is not False for i in OPTIONAL_ITEMS):
        raise NoticeError("privacy notice: health_data and id_number are required, ocr is optional")
    return Notice(version=version, hash=hashlib.sha256(data).hexdigest(), document=document)


_cache: dict[str, tuple[tuple[int, int], Notice]] = {}
_cache_lock = threading.Lock()


def load_notice(path: str | Path | None = None) -> Notice:
    """The notice at `path` (None: the bundled one). Re-read when the file changes (size or mtime)."""
    target = Path(path) if path else BUNDLED_NOTICE
    try:
        stat = os.stat(target)
    except OSError as exc:
        raise NoticeError(f"privacy notice: cannot read {target}") from exc
    stamp = (stat.st_mtime_ns, stat.st_size)
    key = str(target)
    cached = _cache.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    notice = parse_notice(target.read_bytes())
    with _cache_lock:
        _cache[key] = (stamp, notice)
    return notice


def current_notice(vault: Vault) -> Notice:
    return load_notice(vault.settings.privacy_notice_path)


# --- consent rows ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Choices:
    """What the patient decided on the notice version they were shown; None = not mentioned (unchanged)."""

    notice_version: str | None = None
    health_data: bool | None = None
    id_number: bool | None = None
    ocr: bool | None = None

    def decided(self) -> dict[str, bool]:
        return {item: getattr(self, item) for item in CONSENT_ITEMS if getattr(self, item) is not None}


@dataclasses.dataclass(frozen=True)
class ItemState:
    item: str
    given: bool
    notice_version: str
    notice_hash: str
    recorded_at: dt.datetime
    on_current_notice: bool


@dataclasses.dataclass(frozen=True)
class ConsentState:
    notice: Notice
    items: dict[str, ItemState | None]
    history: list[ItemState]

    @property
    def missing(self) -> list[str]:
        """Required items not given on the current notice."""
        return [i for i in REQUIRED_ITEMS if not _current_and_given(self.items.get(i))]

    @property
    def up_to_date(self) -> bool:
        return not self.missing

    @property
    def ocr(self) -> bool:
        return self.up_to_date and _current_and_given(self.items.get("ocr"))


def _current_and_given(state: ItemState | None) -> bool:
    return state is not None and state.given and state.on_current_notice


_C = Consent.__table__
# Newest first, on the driver's cursor: the hot path (every processing request of a patient) stops reading once every
# item is seen, however long the patient's append-only history.
_LATEST = HotStatement(select(_C.c.item, _C.c.given, _C.c.notice_hash)
                       .where(_C.c.patient_id == bindparam("patient")).order_by(_C.c.id.desc()))


def _latest(session: Session, patient_id: str) -> dict[str, tuple[bool, str]]:
    seen: dict[str, tuple[bool, str]] = {}

    def visit(row) -> bool:
        seen.setdefault(row.item, (row.given, row.notice_hash))
        return len(seen) == len(CONSENT_ITEMS)

    _LATEST.scan(session, {"patient": patient_id}, visit)
    return seen


def processing_allowed(session: Session, vault: Vault, *, patient_id: str) -> tuple[bool, list[str]]:
    """(allowed, missing required items) against the current notice; one indexed query."""
    notice = current_notice(vault)
    latest = _latest(session, patient_id)
    missing = [i for i in REQUIRED_ITEMS if latest.get(i) != (True, notice.hash)]
    return not missing, missing


def ocr_allowed(session: Session, vault: Vault, *, patient_id: str) -> bool:
    """True only if the required items and the optional OCR item are all given on the current notice."""
    notice = current_notice(vault)
    latest = _latest(session, patient_id)
    return all(latest.get(i) == (True, notice.hash) for i in (*REQUIRED_ITEMS, "ocr"))


def state(session: Session, vault: Vault, *, patient_id: str) -> ConsentState:
    notice = current_notice(vault)
    rows = session.scalars(select(Consent).where(Consent.patient_id == patient_id).order_by(Consent.id)).all()
    history = [ItemState(r.item, r.given, r.notice_version, r.notice_hash, r.recorded_at, r.notice_hash == notice.hash)
               for r in rows]
    items: dict[str, ItemState | None] = dict.fromkeys(CONSENT_ITEMS)
    for entry in history:
        items[entry.item] = entry
    return ConsentState(notice=notice, items=items, history=history)


def _refuse_registration(notice: Notice, detail: str, missing: list[str]) -> VaultError:  # RegistrationConsentRequired
    return RegistrationConsentRequired(detail, extra={"notice": NOTICE_ENDPOINT, "notice_version": notice.version,
                                                      "missing": missing})


def check_registration(vault: Vault, choices: Choices | None) -> Notice:
    """Refuse (422, before anything is stored) unless both required items are given on the current notice."""
    notice = current_notice(vault)
    fetch = f"Fetch the privacy notice (GET {NOTICE_ENDPOINT}) and give separate consent to "
    if choices is None:
        raise _refuse_registration(notice, fetch + "health_data and id_number", list(REQUIRED_ITEMS))
    missing = [i for i in REQUIRED_ITEMS if getattr(choices, i) is not True]
    if missing:
        raise _refuse_registration(notice, fetch + " and ".join(missing), missing)
    if choices.notice_version != notice.version:
        raise _refuse_registration(notice, f"The privacy notice is now version {notice.version}: " + fetch
                                   + "it", list(REQUIRED_ITEMS))
    return notice


def _append(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, patient_id: str, item: str,
            given: bool, notice: Notice) -> Consent:
    row = Consent(patient_id=patient_id, item=item, given=given, notice_version=notice.version,
                  notice_hash=notice.hash, recorded_at=vault.clock())
    session.add(row)
    session.flush()
    gate.audit(vault, session, identity=identity, ctx=ctx, action="consent.give" if given else "consent.withdraw",
               target=gate.Target("consent", str(row.id), patient_id), outcome="allow", reason=item)
    return row


def record_registration(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, patient_id: str,
                        choices: Choices, notice: Notice) -> None:
    """One row per item (OCR not mentioned = not given), in the registration's transaction; the caller commits."""
    for item in CONSENT_ITEMS:
        _append(session, vault, identity=identity, ctx=ctx, patient_id=patient_id, item=item,
                given=getattr(choices, item) is True, notice=notice)


def _own_patient(identity: Identity) -> str:
    if identity.role != "patient" or identity.patient_id is None:
        raise NotFound("This account is not a patient")
    return identity.patient_id


def view(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext) -> ConsentState:
    """The caller's consent state and history (a read of their own profile, through the gate)."""
    patient_id = _own_patient(identity)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="patient.read",
               target=gate.Target("patient", patient_id, patient_id))
    session.commit()
    return state(session, vault, patient_id=patient_id)


def change(session: Session, vault: Vault,
           *, identity: Identity, ctx: RequestContext, choices: Choices) -> ConsentState:
    """Give, re-give (on a new notice) or withdraw items. Giving needs the current notice version; withdrawing is
    always possible in one step (PIPL art. 15). Unchanged items write nothing."""
    patient_id = _own_patient(identity)
    decided = choices.decided()
    notice = current_notice(vault)
    if not decided:
        raise RegistrationConsentRequired("Name at least one of health_data, id_number, ocr",
                                          extra={"notice": NOTICE_ENDPOINT, "notice_version": notice.version})
    if any(decided.values()) and choices.notice_version != notice.version:
        raise RegistrationConsentRequired(
            f"Consent is given to the current privacy notice (version {notice.version}): fetch it (GET "
            f"{NOTICE_ENDPOINT}) and send its version as notice_version",
            extra={"notice": NOTICE_ENDPOINT, "notice_version": notice.version})
    before = state(session, vault, patient_id=patient_id)
    for item, given in decided.items():
        previous = before.items.get(item)
        if previous is not None and previous.given == given and (not given or previous.on_current_notice):
            continue
        _append(session, vault, identity=identity, ctx=ctx, patient_id=patient_id, item=item, given=given,
                notice=notice)
    session.commit()
    return state(session, vault, patient_id=patient_id)


def withdraw_all(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, patient_id: str) -> None:
    """Close the history of an erased patient: every item still given gets a withdrawal row (caller commits)."""
    notice = current_notice(vault)
    for item, (given, _hash) in _latest(session, patient_id).items():
        if given:
            _append(session, vault, identity=identity, ctx=ctx, patient_id=patient_id, item=item, given=False,
                    notice=notice)


def require_processing_consent(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext,
                               action: str) -> None:
    """For a patient caller: refuse (403 consent-required, audited as a denial of `action`) unless both required
    consents are given on the current notice. Other roles pass: grantees act under a grant, itself a consent."""
    if identity.role != "patient" or identity.patient_id is None:
        return
    allowed, missing = processing_allowed(session, vault, patient_id=identity.patient_id)
    if allowed:
        return
    notice = current_notice(vault)
    gate.audit(vault, session, identity=identity, ctx=ctx, action=action,
               target=gate.Target("patient", identity.patient_id, identity.patient_id), outcome="deny",
               reason="consent-required")
    session.commit()
    raise ConsentRequired(
        f"Give consent to the current privacy notice (version {notice.version}) first: GET {NOTICE_ENDPOINT}, then "
        f"POST {CONSENT_ENDPOINT} with notice_version and the items",
        extra={"notice": NOTICE_ENDPOINT, "consents": CONSENT_ENDPOINT, "notice_version": notice.version,
               "missing": missing})
