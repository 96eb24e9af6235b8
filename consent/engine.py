"""The decision: build this request's policies, ask Casbin, say which source allowed it.

Owns turning (caller, patient, object, action, time) into allow/deny. Per request it loads only the policies that can
match — the static role rows for this action, the caller's ownership, and the caller's live grants and break-glass
claims for this one patient (one indexed query), of each grant only the rows for this action and this record or
category — into an enforcer private to this thread, cleared before every decision. The filtering only drops rules
the matcher could never match (tests/test_consent.py compares every decision with an enforcer holding all rules);
Casbin still decides. docs/authorization.md explains the layout and its figures.

A request that reads no grant or claim (a patient on their own data, staff on role permissions, anyone without a
patient in view) is decided by the static role file and the ownership rule alone: every such policy names a role
(not a user), has `*` for domain and object and the open validity window 0000..9999, so Casbin's answer is a
function of (role, action, owner-or-not). Casbin decides each such triple once per process and the answer is kept
(`_STATIC_DECISIONS`); the check at import below turns this off if the role file ever gets a policy of another
shape.
Every grant and break-glass row read is checked against its integrity tag (`consent.integrity`, under a service key
the caller's `key_for` supplies) before it becomes a policy: a row whose tag fails is treated as absent and named in
the decision (`Decision.tampered`), so the gate can refuse and raise the alarm (INT-1).
Never: keeps a decision or anything read from the grant and break-glass tables beyond one request (withdrawal takes
effect on the next request in every process), shares an enforcer between threads, lets an error become an allow, or
turns a row whose integrity tag fails into a policy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from pathlib import Path
from typing import NamedTuple

import casbin
from casbin.model import Model
from sqlalchemy import bindparam, literal_column, null, select, union_all
from sqlalchemy.orm import Session

from consent import integrity
from consent.models import BreakGlass, Grant

HERE = Path(__file__).parent
MODEL_TEXT = (HERE / "model.conf").read_text()
ACTIONS_BY_GRANT_VERB = {"view": ("record.read", "record.list"), "download": ("record.download",)}
OWNER_ACTIONS = ("patient.read", "record.create", "record.read", "record.list", "record.download", "record.update",
                 "access_log.read", "grant.create", "grant.list", "grant.revoke", "grant.receipt", "lab.read",
                 "lab.correct",
                 "export.create", "export.read", "export.download")  # issue 16: the patient's own export (PIPL 45)
LABELS = ("normal", "sensitive", "special")
GRANTABLE_LABELS = ("normal", "sensitive")  # a category-wide grant never reaches "special"
BREAKGLASS_ACTIONS = ("patient.read", "record.read", "record.list", "record.download")
# A live grant also lets its grantee read the grant's own receipt (object "grant:<id>"), and nothing else of it: once
# the grant is revoked or expired the policy is gone, and so is the grantee's copy.
RECEIPT_ACTION = "grant.receipt"


def _role_policies() -> list[list[str]]:
    rows = []
    for line in (HERE / "policy.csv").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parts = [p.strip() for p in line.split(",")]
            if parts[0] != "p" or len(parts) != 8:
                raise ValueError("malformed policy line")
            rows.append(parts[1:])
    return rows


ROLE_POLICIES = _role_policies()
ROLE_POLICIES_BY_ACTION: dict[str, list[list[str]]] = {}
for _policy in ROLE_POLICIES:
    ROLE_POLICIES_BY_ACTION.setdefault(_policy[3], []).append(_policy)
# The static decisions may be kept only while every role policy ignores domain, object and time (see the docstring).
STATIC_DECISIONS_HOLD = all(p[0].startswith("role:") and p[1] == "*" and p[2] == "*" and p[4] == "0000"
                            and p[5] == "9999" for p in ROLE_POLICIES)
_STATIC_DECISIONS: dict[tuple[str, str, bool], Decision] = {}


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Request:
    account_id: str
    role: str
    own_patient_id: str | None
    patient_id: str | None
    obj: str
    cls: str
    action: str


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    source: str  # "role" | "owner" | "grant:<id>" | "breakglass:<id>" | a denial reason ("integrity": see tampered)
    # Grants and break-glass claims of this request whose integrity tag failed ("grant:<id>", "breakglass:<id>"):
    # they were treated as absent.
    tampered: tuple[str, ...] = ()

    @property
    def grant_id(self) -> str | None:
        kind, _, ident = self.source.partition(":")
        return ident if kind in ("grant", "breakglass") else None


def grant_policies(grant, *, act: str | None = None, want: tuple[str, ...] | None = None) -> list[list[str]]:
    """The Casbin policies one grant stands for (fields as in `Grant`: id, patient_id, grantee_id, record_ids,
    categories, include_future, actions, not_before, expires_at).

    With `act` and `want` (the objects a request can match: "*", its `obj`, its `cls`), only the policies for that
    action whose object is one of them: the matcher requires `r.act == p.act` and `p.obj` in ("*", r.obj, r.cls), so
    no other policy of the grant can ever match, and the decision costs the same for a grant of 1 or 5,000 records.
    Besides its records, a grant opens its own receipt to its grantee (`grant.receipt` on `grant:<id>`).
    """
    sub, dom = f"user:{grant.grantee_id}", f"patient:{grant.patient_id}"
    nbf, exp, source = stamp(grant.not_before), stamp(grant.expires_at), f"grant:{grant.id}"
    if act == RECEIPT_ACTION:  # the grant's own receipt: object "grant:<id>" (its source name)
        return [[sub, dom, source, act, nbf, exp, source]] if want is None or source in want else []
    record_ids = json.loads(grant.record_ids)
    categories = ([f"category:{c}/{label}" for c in json.loads(grant.categories) for label in GRANTABLE_LABELS]
                  if grant.include_future else [])
    if want is None:
        objects = [f"record:{rid}" for rid in record_ids] + categories
    else:
        objects = [o for o in want if (o.startswith("record:") and o[7:] in record_ids) or o in categories]
    rows = []
    for verb in json.loads(grant.actions):
        for action in ACTIONS_BY_GRANT_VERB.get(verb, ()):
            if act is not None and action != act:
                continue
            if action == "record.list":
                rows.append([sub, dom, "*", action, nbf, exp, source])
            else:
                rows += [[sub, dom, obj, action, nbf, exp, source] for obj in objects]
    if act is None:
        rows.append([sub, dom, source, RECEIPT_ACTION, nbf, exp, source])
    return rows


class _ParsedOnceEnforcer(casbin.Enforcer):
    """pycasbin re-parses the matcher (`ast.parse`) on every enforce(); the matcher text never changes, so this
    enforcer parses it once and only refreshes the evaluator's functions (the role-link closure) per call. The one
    parse is serialised: CPython 3.11's parser is not safe to run from several threads at once (seen here: SystemError
    "AST constructor recursion depth mismatch" under 6 threads, i.e. spurious denials)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self._parsed: dict = {}

    def _get_expression(self, expr, functions=None):  # overrides a staticmethod; always called on the instance
        evaluator = self._parsed.get(expr)
        if evaluator is None:
            with _PARSE_LOCK:
                evaluator = casbin.Enforcer._get_expression(expr, functions)
            self._parsed[expr] = evaluator
        evaluator.functions = functions or {}
        return evaluator


class _ThreadEnforcer(threading.local):
    def __init__(self) -> None:
        model = Model()
        model.load_model_from_text(MODEL_TEXT)
        self.enforcer = _ParsedOnceEnforcer(model)


_PARSE_LOCK = threading.Lock()
_local = _ThreadEnforcer()


_G, _B = Grant.__table__, BreakGlass.__table__
# The per-request lookup: the caller's live grants and break-glass claims on this one patient, in ONE round trip (an
# index probe on each table: ix_grants_grantee_patient, ix_breakglass_doctor_patient). Built once as Core; on
# PostgreSQL its compiled text is run straight on the session's psycopg connection as a prepared statement (the
# SQLAlchemy execution path costs as much as the database work here, ~40 us). Columns:
# kind ("grant" | "breakglass"), id, grantee_id (a claim's doctor), patient_id, record_ids, categories, include_future,
# actions, not_before (a claim's created_at), expires_at — the names `grant_policies` reads — and the integrity tag.
_LIVE_SOURCES = union_all(
    select(literal_column("'grant'").label("kind"), _G.c.id, _G.c.grantee_id, _G.c.patient_id, _G.c.record_ids,
           _G.c.categories, _G.c.include_future, _G.c.actions, _G.c.not_before, _G.c.expires_at,
           _G.c.integrity_mac).where(
        _G.c.grantee_id == bindparam("who"), _G.c.patient_id == bindparam("patient"), _G.c.revoked_at.is_(None),
        _G.c.expires_at > bindparam("now", type_=_G.c.expires_at.type)),
    select(literal_column("'breakglass'"), _B.c.id, _B.c.doctor_id, _B.c.patient_id, null(), null(), null(), null(),
           _B.c.created_at, _B.c.expires_at, _B.c.integrity_mac).where(
        _B.c.doctor_id == bindparam("who"), _B.c.patient_id == bindparam("patient"),
        _B.c.expires_at > bindparam("now", type_=_B.c.expires_at.type)))
_PSYCOPG_SQL: dict[type, str] = {}


class _Source(NamedTuple):
    kind: str
    id: str
    grantee_id: str
    patient_id: str
    record_ids: str | None
    categories: str | None
    include_future: bool | None
    actions: str | None
    not_before: dt.datetime
    expires_at: dt.datetime
    integrity_mac: bytes | None


def intact(source: _Source, key_for: integrity.KeyLookup) -> bool:
    """Whether a live source's integrity tag verifies (a live grant is not revoked: its tag covers revoked_at=None)."""
    if source.kind == "grant":
        message = integrity.grant_message(source, revoked_at=None)
    else:
        message = integrity.breakglass_message(claim_id=source.id, doctor_id=source.grantee_id,
                                               patient_id=source.patient_id, created_at=source.not_before,
                                               expires_at=source.expires_at)
    return integrity.check(source.integrity_mac, message, key_for)


def live_sources(session: Session, *, who: str, patient_id: str, now: dt.datetime) -> list[_Source]:
    """Live (not revoked, not expired) grants to `who` and break-glass claims by `who` on this patient."""
    connection = session.connection()
    params = {"who": who, "patient": patient_id, "now": now}
    dialect = connection.dialect
    if dialect.driver == "psycopg":
        sql = _PSYCOPG_SQL.get(type(dialect))
        if sql is None:
            sql = _PSYCOPG_SQL[type(dialect)] = _LIVE_SOURCES.compile(dialect=dialect).string
        # Same transaction as the session (the audit append that follows commits with it).
        # (the psycopg connection: SQLAlchemy types dbapi_connection as the generic, optional DBAPI one)
        with connection.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(sql, params, prepare=True)
            return [_Source(*row) for row in cursor.fetchall()]
    return [_Source(*row) for row in connection.execute(_LIVE_SOURCES, params)]


def decide(session: Session, request: Request, *, now: dt.datetime, key_for: integrity.KeyLookup) -> Decision:
    """Allow only what a policy allows; any failure is a denial. `key_for(suite)` gives the integrity key of a
    suite (or None); it is asked only when a grant or claim was read."""
    try:
        # Only policies that can match are loaded: the matcher requires r.act == p.act and p.obj in ("*", r.obj,
        # r.cls), and the lookup already fixed sub and dom. The enforcer's linear scan stays at a handful of rules
        # whatever the role table, the grant count or a grant's scope size.
        act = request.action
        reads_sources = bool(request.patient_id) and request.role in ("doctor", "escort")
        owner = request.role == "patient" and bool(request.own_patient_id) and act in OWNER_ACTIONS
        static_key = (request.role, act, owner and request.patient_id == request.own_patient_id)
        if not reads_sources and STATIC_DECISIONS_HOLD:
            kept = _STATIC_DECISIONS.get(static_key)
            if kept is not None:
                return kept
        policies = [list(p) for p in ROLE_POLICIES_BY_ACTION.get(act, ())]
        tampered: list[str] = []
        sub = f"user:{request.account_id}"
        if owner:
            policies.append([sub, f"patient:{request.own_patient_id}", "*", act, "0000", "9999", "owner"])
        if reads_sources:
            want = ("*", request.obj, request.cls)
            breakglass = request.role == "doctor" and act in BREAKGLASS_ACTIONS
            assert request.patient_id is not None  # reads_sources says so
            for source in live_sources(session, who=request.account_id, patient_id=request.patient_id, now=now):
                if not intact(source, key_for):
                    tampered.append(f"{source.kind}:{source.id}")  # treated as absent
                elif source.kind == "grant":
                    policies += grant_policies(source, act=act, want=want)
                elif source.kind == "breakglass" and breakglass:
                    policies.append([sub, f"patient:{source.patient_id}", "*", act, stamp(source.not_before),
                                     stamp(source.expires_at), f"breakglass:{source.id}"])
        enforcer = _local.enforcer
        enforcer.clear_policy()
        enforcer.add_policies(policies)
        enforcer.add_grouping_policy(sub, f"role:{request.role}")
        # clear_policy() leaves the role manager's links in place: rebuild them from this request's policies only,
        # or a previous caller's role would still be linked (seen: a stale user→auditor link allowed audit.read).
        enforcer.build_role_links()
        dom = f"patient:{request.patient_id}" if request.patient_id else "-"
        allowed, explain = enforcer.enforce_ex(sub, dom, request.obj, request.cls, request.action, stamp(now))
        if allowed:
            decision = Decision(True, explain[-1] if explain else "role", tuple(tampered))
        else:
            decision = Decision(False, "integrity" if tampered else "no-policy", tuple(tampered))
        if not reads_sources and STATIC_DECISIONS_HOLD:
            _STATIC_DECISIONS[static_key] = decision
        return decision
    except Exception:  # noqa: BLE001 - fail closed
        return Decision(False, "error")

