"""IP-1 (issue 14): schemathesis against the live OpenAPI document, in process, once per role.

For each role (a patient who owns records and a grant, a doctor holding a view grant on one of them, an auditor, a
system administrator, and a second patient who owns nothing of the first one's) every operation is fuzzed with data
that fits the schema and data that does not, with a fixed seed and a small budget (the whole file stays well under
two minutes on the CI machine). Checks, all on: no 5xx; status code, content type, headers and body conform to the
document; data outside the schema is refused; authentication is enforced where the document declares the bearer
scheme (schemathesis replays a 2xx without the token and with a wrong one); and object access — half the cases
reach a real object (the caller's own, or one it must not reach), and a 2xx for an object the caller has no right to
fails the run.

Runs share one token per role, so the operations that end it or the account are left out (logout, password change,
erasure of the caller). A failure names the case and a curl line to replay it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import login, png_bytes, register, staff, upload

pytestmark = pytest.mark.slow
ROLES = ("patient", "doctor", "stranger", "auditor", "sysadmin")
# Every role on SQLite; on PostgreSQL (BIGINT ids, its own time handling) the roles that page and search by time.
RUNS = [pytest.param("sqlite", role, id=f"{role}-sqlite") for role in ROLES] + [
    pytest.param("postgres", role, id=f"{role}-postgres", marks=pytest.mark.postgres)
    for role in ("patient", "auditor")]

SEED = int(os.environ.get("HEALTHVAULT_FUZZ_SEED", "20261207"))
# Cases per operation and mode, doubled for an operation that can reach a real object.
# HEALTHVAULT_FUZZ_SCALE=N multiplies the budget for a deeper run by hand (CI keeps 1), HEALTHVAULT_FUZZ_SEED moves it.
SCALE = int(os.environ.get("HEALTHVAULT_FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: 3 * SCALE, GenerationMode.NEGATIVE: 2 * SCALE}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth]
# Operations that would end the shared token or the caller's account.
SESSION_ENDING = {("POST", "/v1/auth/logout"), ("POST", "/v1/auth/password"), ("DELETE", "/v1/patients/me")}


@dataclasses.dataclass
class Caller:
    headers: dict[str, str]
    reach: dict[str, str]  # path parameter -> a real object id that half the cases use
    forbidden: set[str]  # object ids this caller must never get a 2xx for


@pytest.fixture
def world(client, vault, clock) -> dict[str, Caller]:
    """Who fuzzes, what each may and may not reach."""
    object.__setattr__(vault.settings, "idle_timeout_seconds", 10**7)
    register(client, username="fz-owner")
    owner = login(client, "fz-owner")
    shared = upload(client, owner, png_bytes(b"shared")).json()["record_id"]
    private = upload(client, owner, png_bytes(b"private")).json()["record_id"]
    doctor = staff(client, vault, "doctor", "fz-doctor")
    doctor.pop("_secret")
    grant = client.post("/v1/grants", headers=owner, json={
        "grantee": "fz-doctor", "record_ids": [shared], "actions": ["view"], "purpose": "fuzzing",
        "expires_at": (clock() + dt.timedelta(days=2)).isoformat()})
    assert grant.status_code == 201, grant.text
    grant_id = grant.json()["grant_id"]
    register(client, username="fz-stranger")
    stranger = login(client, "fz-stranger")
    callers = {
        "patient": Caller(owner, {"record_id": private, "grant_id": grant_id}, set()),
        "doctor": Caller(doctor, {"record_id": private, "grant_id": grant_id}, {private}),
        "stranger": Caller(stranger, {"record_id": shared, "grant_id": grant_id}, {shared, private, grant_id}),
    }
    for role in ("auditor", "sysadmin"):
        headers = staff(client, vault, role, f"fz-{role}")
        headers.pop("_secret")
        callers[role] = Caller(headers, {"record_id": shared, "grant_id": grant_id}, {shared, private, grant_id})
    return callers


@pytest.fixture
def api(app, world) -> Iterator[Callable[[Caller], schemathesis.BaseSchema]]:
    """The live document, loaded with a caller's token configured as the bearer scheme's credential (so schemathesis
    knows the credential is the caller's, never negates it in place, and probes without it for `ignored_auth`)."""

    def load(caller: Caller) -> schemathesis.BaseSchema:
        token = caller.headers["Authorization"].removeprefix("Bearer ")
        config = SchemathesisConfig.from_dict({"auth": {"openapi": {"bearer": {"bearer": token}}}})
        return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)

    yield load
    shutdown_lifespans()  # the app's lifespan (its database lane) ends with this test, not at interpreter exit


def _operations(api) -> list:
    operations = [result.ok() for result in api.get_all_operations()]
    return [op for op in operations if (op.method.upper(), op.path) not in SESSION_ENDING]


def _fuzz(operation, caller: Caller, mode: GenerationMode) -> None:
    if mode is GenerationMode.NEGATIVE and not operation.path_parameters and not operation.query \
            and not operation.body:
        return  # nothing to get wrong (the headers are the caller's own)
    strategies = [operation.as_strategy(generation_mode=mode)]
    pinned = {k: v for k, v in caller.reach.items() if "{" + k + "}" in operation.path}
    if pinned:
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=pinned))

    @seed(SEED)
    @settings(max_examples=EXAMPLES[mode] * len(strategies), deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=st.one_of(strategies))
    def run(case) -> None:
        response = case.call_and_validate(checks=CHECKS)
        path = response.request.url.split("?", 1)[0]
        leaked = [i for i in caller.forbidden if i in path]
        assert not (leaked and 200 <= response.status_code < 300), (
            f"object access: {case.method} {path} answered {response.status_code} to a caller without the right")

    run()


@pytest.mark.parametrize(("backend", "role"), RUNS, indirect=["backend"])  # the fixture checks PostgreSQL is there
def test_fuzz_every_operation_as(backend, role, api, world):
    caller = world[role]
    failures = []
    for operation in _operations(api(caller)):
        for mode in EXAMPLES:
            try:
                _fuzz(operation, caller, mode)
            except Exception as exc:
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): "
                                f"{type(exc).__name__}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_checks_bite_on_an_undeclared_error(backend, app, client, world):
    """The document as FastAPI alone would write it (no problem responses, the 422 as HTTPValidationError) fails the
    status-code check on an ordinary 403; the served document passes it. (So a green fuzz run means something.)"""
    from fastapi.openapi.utils import get_openapi
    from schemathesis.core.failures import FailureGroup

    raw = get_openapi(title=app.title, version=app.version, routes=app.routes)
    response = client.get("/v1/audit/events", headers=world["patient"].headers)
    assert response.status_code == 403
    for document, fails in ((raw, True), (app.openapi(), False)):
        operation = schemathesis.openapi.from_dict(document)["/v1/audit/events"]["GET"]
        case = operation.Case(headers=world["patient"].headers)
        if fails:
            with pytest.raises(FailureGroup, match="Undocumented status code"):
                case.validate_response(response, checks=[status_code_conformance])
        else:
            case.validate_response(response, checks=[status_code_conformance, response_schema_conformance,
                                                     content_type_conformance])
