"""Text from clients is inert (issue 14 item 10): control, line-breaking and bidi characters in a title, file name,
purpose, reason, consult reference or real name are refused with a 422 naming the field, and nothing is stored."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from consent.models import Grant
from tests.helpers import login, make_id_number, make_phone, png_bytes, register, staff, upload
from vault import text
from vault.db.models import Record

HOSTILE = ["a\r\nSet-Cookie: x=1", "nul\x00byte", "del\x7f", "c1\x85next", "invoice\u202efdp.exe", "iso\u2066late",
           "line\u2028sep", "tab\there"]


B = "hvboundary7f3a"


def _raw_form(*, filename: str, data: bytes) -> bytes:
    """A multipart body written byte by byte (an HTTP client would percent-escape CR, LF and quotes in a name)."""
    return (f"--{B}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nother\r\n"
            f"--{B}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{B}--\r\n".encode()


def _count(vault, model) -> int:
    with vault.session() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_titles_and_file_names_are_refused_and_nothing_is_stored(client, vault, bad):
    register(client, username="ht-up")
    headers = login(client, "ht-up")
    before = _count(vault, Record)
    as_title = client.post("/v1/records", headers=headers, data={"category": "other", "title": bad},
                           files={"file": ("a.png", png_bytes(b"t"), "image/png")})
    assert as_title.status_code == 422 and as_title.json()["reason"] == "title", as_title.text
    as_name = client.post("/v1/records", headers={**headers, "content-type": f"multipart/form-data; boundary={B}"},
                          content=_raw_form(filename=bad + ".png", data=png_bytes(b"f")))
    # The bytes exactly as sent (no client-side escaping): refused, or — where a raw CR/LF ends the header line
    # before the name does — stored as an inert name that carries nothing of what followed the break.
    if as_name.status_code == 201:
        stored = as_name.json()["filename"]
        assert text.is_inert(stored) and "Set-Cookie" not in stored and "\r" in bad
    else:
        assert as_name.status_code in (400, 422), as_name.text
    assert _count(vault, Record) == before + (as_name.status_code == 201)
    for response in (as_title, as_name):
        assert bad not in response.text


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_purposes_references_reasons_and_names_are_refused(client, vault, clock, bad):
    patient = register(client, username="ht-share")
    headers = login(client, "ht-share")
    doctor = staff(client, vault, "doctor", "ht-doc")
    doctor.pop("_secret")
    grant = {"grantee": "ht-doc", "categories": ["lab_report"], "actions": ["view"], "purpose": "复诊 consult",
             "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}
    before = _count(vault, Grant)
    for field in ("purpose", "consult_ref"):
        refused = client.post("/v1/grants", headers=headers, json={**grant, field: bad})
        assert refused.status_code == 422 and bad not in refused.text, refused.text
    assert _count(vault, Grant) == before
    reason = client.post("/v1/breakglass", headers=doctor,
                         json={"patient_id": patient["patient_id"], "reason": "emergency case " + bad})
    assert reason.status_code == 422 and bad not in reason.text
    named = client.post("/v1/patients/register", json={**{k: v for k, v in patient.items() if k != "patient_id"},
                                                       "username": "ht-other", "real_name": "王" + bad,
                                                       "id_number": make_id_number(), "phone": make_phone()})
    assert named.status_code == 422 and bad not in named.text


def test_a_script_in_a_title_is_stored_and_returned_as_data(client, vault):
    register(client, username="ht-script")
    headers = login(client, "ht-script")
    title = '<script>alert("x")</script>'
    record = upload(client, headers, png_bytes(b"s"), title=title).json()
    fetched = client.get(f"/v1/records/{record['record_id']}", headers=headers)
    assert fetched.headers["content-type"].startswith("application/json") and fetched.json()["title"] == title
