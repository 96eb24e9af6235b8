"""The decision: build this request's policies, ask Casbin, say which source allowed it.

Owns turning (caller, patient, object, action, time) into allow/deny. Per request it loads only the policies that can
matter — the static role policy, the caller's ownership, the caller's live grants and break-glass claims for this one
patient (an indexed query) — into an enforcer private to this thread, cleared before every decision. Nothing is
cached across requests, so withdrawal takes effect on the next request in every process. Fail closed: any error is
a denial.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from pathlib import Path

import casbin
from casbin.model import Model
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from consent.models import BreakGlass, Grant

HERE = Path(__file__).parent
MODEL_TEXT = (HERE / "model.conf").read_text()
ACTIONS_BY_GRANT_VERB = {"view": ("record.read", "record.list"), "download": ("record.download",)}
OWNER_ACTIONS = ("patient.read", "record.create", "record.read", "record.list", "record.download", "record.update",
                 "access_log.read", "grant.create", "grant.list", "grant.revoke", "lab.read", "lab.correct")
LABELS = ("normal", "sensitive", "special")
GRANTABLE_LABELS = ("normal", "sensitive")  # a category-wide grant never reaches "special"
BREAKGLASS_ACTIONS = ("patient.read", "record.read", "record.list", "record.download")


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


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    source: str  # "role" | "owner" | "grant:<id>" | "breakglass:<id>" | a denial reason

    @property
    def grant_id(self) -> str | None:
        kind, _, ident = self.source.partition(":")
        return ident if kind in ("grant", "breakglass") else None


def grant_policies(grant: Grant) -> list[list[str]]:
    """The Casbin policies one grant stands for."""
    sub, dom = f"user:{grant.grantee_id}", f"patient:{grant.patient_id}"
    nbf, exp, source = stamp(grant.not_before), stamp(grant.expires_at), f"grant:{grant.id}"
    objects = [f"record:{rid}" for rid in json.loads(grant.record_ids)]
    if grant.include_future:
        objects += [f"category:{c}/{label}" for c in json.loads(grant.categories) for label in GRANTABLE_LABELS]
    rows = []
    for verb in json.loads(grant.actions):
        for action in ACTIONS_BY_GRANT_VERB.get(verb, ()):
            if action == "record.list":
                rows.append([sub, dom, "*", action, nbf, exp, source])
            else:
                rows += [[sub, dom, obj, action, nbf, exp, source] for obj in objects]
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
# Built once and run as Core on the session's connection: this is the per-request, indexed (grantee, patient) lookup.
_LIVE_GRANTS = select(_G.c.id, _G.c.patient_id, _G.c.grantee_id, _G.c.record_ids, _G.c.categories,
                      _G.c.include_future, _G.c.actions, _G.c.not_before, _G.c.expires_at).where(
    _G.c.grantee_id == bindparam("who"), _G.c.patient_id == bindparam("patient"), _G.c.revoked_at.is_(None),
    _G.c.expires_at > bindparam("now", type_=_G.c.expires_at.type))
_LIVE_BREAKGLASS = select(_B.c.id, _B.c.patient_id, _B.c.created_at, _B.c.expires_at).where(
    _B.c.doctor_id == bindparam("who"), _B.c.patient_id == bindparam("patient"),
    _B.c.expires_at > bindparam("now", type_=_B.c.expires_at.type))


def live_grants(session: Session, *, grantee_id: str, patient_id: str, now: dt.datetime) -> list:
    return session.connection().execute(_LIVE_GRANTS, {"who": grantee_id, "patient": patient_id, "now": now}).all()


def live_breakglass(session: Session, *, doctor_id: str, patient_id: str, now: dt.datetime) -> list:
    return session.connection().execute(_LIVE_BREAKGLASS,
                                        {"who": doctor_id, "patient": patient_id, "now": now}).all()


def decide(session: Session, request: Request, *, now: dt.datetime) -> Decision:
    """Allow only what a policy allows; any failure is a denial."""
    try:
        # Only policies for this action can match (the matcher requires r.act == p.act): loading just those keeps
        # the enforcer's linear scan to a handful of rules whatever the role table or grant count.
        act = request.action
        policies = [list(p) for p in ROLE_POLICIES_BY_ACTION.get(act, ())]
        sub = f"user:{request.account_id}"
        if request.role == "patient" and request.own_patient_id and act in OWNER_ACTIONS:
            policies.append([sub, f"patient:{request.own_patient_id}", "*", act, "0000", "9999", "owner"])
        if request.patient_id and request.role in ("doctor", "escort"):
            for grant in live_grants(session, grantee_id=request.account_id, patient_id=request.patient_id, now=now):
                policies += [p for p in grant_policies(grant) if p[3] == act]
            if request.role == "doctor" and act in BREAKGLASS_ACTIONS:
                for claim in live_breakglass(session, doctor_id=request.account_id, patient_id=request.patient_id,
                                             now=now):
                    policies.append([sub, f"patient:{claim.patient_id}", "*", act, stamp(claim.created_at),
                                     stamp(claim.expires_at), f"breakglass:{claim.id}"])
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
            return Decision(True, explain[-1] if explain else "role")
        return Decision(False, "no-policy")
    except Exception:  # noqa: BLE001 - fail closed
        return Decision(False, "error")
