"""Issue 14 item 13: the OpenAPI document declares the bearer scheme (so `/docs` can authorize and a fuzzer runs
authenticated) on exactly the non-public operations, and every error as the RFC 9457 problem it is served as; the
credential is still refused by our own 401 problem, before any 422."""

from __future__ import annotations

import pytest

from tests.helpers.role_matrix import PUBLIC

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the document does not depend on the database


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_the_bearer_scheme_is_declared_on_every_operation_but_the_public_ones(app):
    document = app.openapi()
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer",
                                                                    "description": document["components"][
                                                                        "securitySchemes"]["bearer"]["description"]}}
    unsecured = {(method, path) for method, path, op in _operations(document) if "security" not in op}
    assert unsecured == PUBLIC
    for method, path, op in _operations(document):
        if (method, path) not in PUBLIC:
            assert op["security"] == [{"bearer": []}], (method, path)


def test_every_error_is_declared_as_a_problem(app):
    document = app.openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
    for method, path, op in _operations(document):
        for status in ("422", "default"):
            content = op["responses"][status]["content"]
            assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, (
                method, path, status)


def test_docs_can_authorize(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert client.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwdw==", "bearer hv_forged"])
def test_a_missing_or_wrong_credential_is_our_401_problem_before_any_422(client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    checks = [("GET", "/v1/audit/events?since=naive"), ("POST", "/v1/grants")]
    if authorization != "bearer hv_forged":  # the hot reads check the token's form first, its validity in the lane
        checks += [("GET", "/v1/records/not-a-uuid"), ("GET", "/v1/records?limit=0")]
    for method, url in checks:
        response = client.request(method, url, headers=headers, json={"expires_at": "naive"})
        assert response.status_code == 401, (method, url, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"].endswith(":unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer"

