"""What the console hands out (issue 15 on top of issue 16's services): the patient's "export my data" pages
(re-authentication, a passphrase chosen twice and never echoed, progress by an htmx fragment, the package once) and
the record download (the patient's original byte for byte; a doctor's or escort's copy watermarked with a download id
its audit event holds; nothing for a grantee whose grant does not cover downloads)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import time
import urllib.parse

import pikepdf
import pypdfium2
import pyzipper
from sqlalchemy import func, select

from api.disposition import attachment
from audit.models import AuditEvent
from tests.helpers import PASSWORD, login, pdf_bytes, png_bytes, register, staff, stored, totp_code, upload
from tests.helpers.console import assert_console_headers, console_login
from vault.db.models import PatientExport
from vault.records import watermark

PASSPHRASE = "我的 export passphrase 2026"
UUID_PATH = re.compile(r"/export/[0-9a-f-]{36}")


def _exports(vault) -> int:
    with vault.session() as session:
        return session.scalar(select(func.count()).select_from(PatientExport)) or 0


def _events(vault, action: str) -> list[AuditEvent]:
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _form(csrf: str, **values: str) -> dict:
    return {"csrf": csrf, "password": PASSWORD, "passphrase": PASSPHRASE, "passphrase_again": PASSPHRASE, **values}


def _wait_ready(client, url: str) -> str:
    """Poll the progress fragment as htmx does, until the build is over; the last fragment."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fragment = client.get(url, headers={"hx-request": "true"})
        assert fragment.status_code == 200 and "<html" not in fragment.text
        if "hx-get" not in fragment.text:  # no longer polled: done, or failed
            return fragment.text
        time.sleep(0.1)
    raise AssertionError("the export did not finish")


def test_patient_exports_from_the_console(client, vault):
    register(client, username="c.exporter", real_name="周晓燕")
    bearer = login(client, "c.exporter")
    upload(client, bearer, png_bytes(b"console-export"), category="exam_report")
    csrf = console_login(client, "c.exporter")
    assert 'href="/export"' in client.get("/records").text  # in the patient's navigation
    form = client.get("/export")
    assert form.status_code == 200 and 'name="passphrase_again"' in form.text
    assert_console_headers(form)

    # Refused, and nothing built: no CSRF token; the wrong password; two different passphrases; a weak one.
    assert client.post("/export", data={k: v for k, v in _form(csrf).items() if k != "csrf"}).status_code == 403
    wrong = client.post("/export", data=_form(csrf, password="not-the-password"))
    assert wrong.status_code == 401 and "用户名或密码不正确" in wrong.text
    assert [(e.outcome, e.reason) for e in _events(vault, "export.create")] == [("deny", "reauth-failed")]
    differ = client.post("/export", data=_form(csrf, passphrase_again=PASSPHRASE + "x"))
    assert differ.status_code == 422 and "两次输入的解压密码不一致" in differ.text
    weak = client.post("/export", data=_form(csrf, passphrase="aaaaaaaaaaaaa", passphrase_again="aaaaaaaaaaaaa"))
    assert weak.status_code == 422 and "解压密码不符合要求" in weak.text
    for refused in (wrong, differ, weak):
        assert PASSPHRASE not in refused.text and PASSWORD not in refused.text and "aaaaaaaaaaaaa" not in refused.text
        assert 'id="pexport-form"' in refused.text  # the form again, empty
    assert _exports(vault) == 0

    started = client.post("/export", data=_form(csrf), follow_redirects=False)
    assert started.status_code == 303 and UUID_PATH.fullmatch(started.headers["location"])
    status_url = started.headers["location"]
    page = client.get(status_url)
    assert page.status_code == 200 and 'id="pexport-job"' in page.text and PASSPHRASE not in page.text
    assert_console_headers(page)
    final = _wait_ready(client, status_url)
    assert 'id="pexport-download"' in final and "已完成" in final
    package = client.get(status_url + "/download")
    assert package.status_code == 200 and package.headers["content-type"] == "application/zip"
    assert package.headers["cache-control"] == "no-store"
    assert package.headers["content-disposition"].startswith('attachment; filename="healthvault-export.zip"')
    with pyzipper.AESZipFile(io.BytesIO(package.content)) as archive:
        archive.setpassword(PASSPHRASE.encode())
        assert len(json.loads(archive.read("manifest.json"))["records"]) == 1
    again = client.get(status_url + "/download")
    assert again.status_code == 410 and "已经下载过" in again.text  # once only
    assert "已下载" in client.get(status_url).text


def test_an_enrolled_patient_gives_the_code_too(client, vault, clock):
    register(client, username="c.exporter2")
    enrolled = client.post("/v1/auth/totp/enroll", json={"username": "c.exporter2", "password": PASSWORD})
    secret = enrolled.json()["secret"]
    assert client.post("/v1/auth/totp/activate", json={"username": "c.exporter2", "password": PASSWORD,
                                                      "otp": totp_code(secret, clock())}).status_code == 204
    clock.advance(seconds=60)
    csrf = console_login(client, "c.exporter2", otp=totp_code(secret, clock()))
    missing = client.post("/export", data=_form(csrf))
    assert missing.status_code == 401 and "动态验证码" in missing.text and _exports(vault) == 0
    clock.advance(seconds=60)
    done = client.post("/export", data=_form(csrf, otp=totp_code(secret, clock())), follow_redirects=False)
    assert done.status_code == 303 and _exports(vault) == 1
    _wait_ready(client, done.headers["location"])


def _pages_text(data: bytes) -> str:
    document = pypdfium2.PdfDocument(data)
    try:
        return "".join(page.get_textpage().get_text_range() for page in document)
    finally:
        document.close()


def test_record_download_watermarked_for_a_grantee_original_for_the_patient(client, vault, clock):
    register(client, username="c.wm.patient", real_name="孙美丽")
    bearer = login(client, "c.wm.patient")
    sent = pdf_bytes("consult page glucose")
    name = '复查 "报告";.pdf'
    record_id = upload(client, bearer, sent, category="exam_report", filename=name,
                       content_type="application/pdf").json()["record_id"]
    secrets = {}
    for who in ("c.wm.doc", "c.wm.viewer"):
        secrets[who] = staff(client, vault, "doctor", who).pop("_secret")
    for who, actions in (("c.wm.doc", ["view", "download"]), ("c.wm.viewer", ["view"])):
        assert client.post("/v1/grants", headers=bearer, json={
            "grantee": who, "record_ids": [record_id], "actions": actions, "purpose": "会诊",
            "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).status_code == 201

    console_login(client, "c.wm.patient")
    assert "下载原件" in client.get(f"/records/{record_id}").text
    own = client.get(f"/records/{record_id}/download")
    assert own.status_code == 200 and own.content == stored(sent)  # byte-identical, no mark
    assert watermark.read_download_id(own.content) is None
    disposition = own.headers["content-disposition"]
    assert "\r" not in disposition and "\n" not in disposition and disposition.count('"') == 2
    exact = urllib.parse.unquote(disposition.split("filename*=UTF-8''")[1])
    assert exact.startswith("复查") and exact.endswith(".pdf") and '"' not in exact and ";" not in exact

    clock.advance(seconds=60)
    console_login(client, "c.wm.doc", otp=totp_code(secrets["c.wm.doc"], clock()))
    page = client.get(f"/records/{record_id}")
    assert "下载（带水印）" in page.text and 'id="record-download"' in page.text
    marked = client.get(f"/records/{record_id}/download")
    assert marked.status_code == 200 and marked.headers["content-type"] == "application/pdf"
    assert marked.headers["cache-control"] == "no-store" and marked.content != own.content
    with pikepdf.open(io.BytesIO(marked.content)) as pdf:
        download_id = str(pdf.docinfo[watermark.INFO_KEY])
    assert watermark.DOWNLOAD_ID.match(download_id)
    text = _pages_text(marked.content)
    assert download_id in text and "仅供诊疗使用" in text and "c.wm.doc" in text and "consult page glucose" in text
    assert "孙美丽" not in text
    assert download_id[:8] in marked.headers["content-disposition"] and "复查" not in urllib.parse.unquote(
        marked.headers["content-disposition"])
    event = _events(vault, "record.download")[-1]
    assert event.outcome == "allow" and event.reason.endswith(f"{watermark.REASON_PREFIX}{download_id}")
    assert watermark.read_download_id(client.get(f"/records/{record_id}/download").content) != download_id

    clock.advance(seconds=60)
    console_login(client, "c.wm.viewer", otp=totp_code(secrets["c.wm.viewer"], clock()))
    page = client.get(f"/records/{record_id}")
    assert page.status_code == 200 and 'id="record-download"' not in page.text and "/content" not in page.text
    before = len(_events(vault, "record.download"))
    assert client.get(f"/records/{record_id}/download").status_code == 404  # a view-only grant: no copy at all
    assert [e.outcome for e in _events(vault, "record.download")[before:]] == ["deny"]


def test_content_disposition_keeps_a_hostile_name_inside_its_parameter():
    for hostile in ('a"; filename="evil.exe', "x\r\nSet-Cookie: a=b.pdf", "..\\..\\boot.ini", "/etc/passwd",
                    "报告;\x00\x7f\u202e.pdf", "", None, "...", '"""', "%41.pdf"):
        value = attachment(hostile, fallback="record.pdf")
        plain, _, exact = value.partition("; filename*=UTF-8''")
        assert plain.startswith('attachment; filename="') and plain.count('"') == 2 and plain.isascii()
        assert all(32 <= ord(c) < 127 for c in value) and ";" not in plain[len('attachment; filename="'):]
        name = urllib.parse.unquote(exact)
        assert name and "/" not in name and "\\" not in name and '"' not in name and ";" not in name
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in name)
    assert attachment("血常规 2026.pdf", fallback="x.pdf") == (
        "attachment; filename=\"___ 2026.pdf\"; filename*=UTF-8''%E8%A1%80%E5%B8%B8%E8%A7%84%202026.pdf")
    assert attachment(None, fallback="record-1.png") == (
        "attachment; filename=\"record-1.png\"; filename*=UTF-8''record-1.png")
    assert attachment("..\\..\\boot.ini", fallback="x").startswith('attachment; filename="boot.ini"')


def test_the_inline_view_of_a_grantee_is_the_watermarked_copy(client, vault, clock):
    """The record page's inline original is a copy like any other: a grantee's is watermarked with a download id of
    its own (an image becomes a marked PDF in a frame); the patient's is the file as uploaded."""
    register(client, username="c.inline.patient", real_name="钱晓红")
    bearer = login(client, "c.inline.patient")
    sent = png_bytes(b"inline-view")
    record_id = upload(client, bearer, sent, category="exam_report", filename="化验单.png",
                       content_type="image/png").json()["record_id"]
    secret = staff(client, vault, "doctor", "c.inline.doc").pop("_secret")
    assert client.post("/v1/grants", headers=bearer, json={
        "grantee": "c.inline.doc", "record_ids": [record_id], "actions": ["view", "download"], "purpose": "会诊",
        "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).status_code == 201

    console_login(client, "c.inline.patient")
    assert '<img class="original"' in client.get(f"/records/{record_id}").text
    own = client.get(f"/records/{record_id}/content")
    assert own.status_code == 200 and own.content == stored(sent) and own.headers["content-disposition"] == "inline"
    assert "sandbox" in own.headers["content-security-policy"]

    clock.advance(seconds=60)
    console_login(client, "c.inline.doc", otp=totp_code(secret, clock()))
    page = client.get(f"/records/{record_id}").text
    assert '<iframe class="original"' in page and '<img class="original"' not in page
    before = len(_events(vault, "record.download"))
    shown = client.get(f"/records/{record_id}/content")
    assert shown.status_code == 200 and shown.headers["content-type"] == "application/pdf"
    assert shown.headers["content-disposition"] == "inline" and shown.headers["cache-control"] == "no-store"
    assert shown.content != own.content and stored(sent) not in shown.content
    download_id = watermark.read_download_id(shown.content)
    assert download_id is not None and watermark.DOWNLOAD_ID.match(download_id)
    (event,) = _events(vault, "record.download")[before:]
    assert event.outcome == "allow" and event.reason.endswith(f"{watermark.REASON_PREFIX}{download_id}")
