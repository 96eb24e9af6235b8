"""RFC 9457 problems keep their standard members whatever a domain error adds (issue 14, found by the fuzzer)."""

from __future__ import annotations

import json

from starlette.requests import Request

from api import problems


def test_a_problems_standard_members_are_never_overridden_by_its_extras():
    """Found by the fuzzer: a 409 whose extra `status` ("pending") replaced the HTTP status in the body."""
    request = Request({"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b"",
                       "state": {"request_id": "rid"}})
    request.state.request_id = "rid"
    response = problems.problem(request, status=409, slug="conflict", title="Conflict", detail="d",
                                extra={"status": "pending", "type": "x", "title": "t", "detail": "e", "instance": "i",
                                       "request_id": "other", "ocr_status": "pending"})
    body = json.loads(response.body)
    assert body == {"type": "urn:healthvault:problem:conflict", "title": "Conflict", "status": 409, "detail": "d",
                    "instance": "/x", "request_id": "rid", "ocr_status": "pending"}
