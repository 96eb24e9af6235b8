"""The console in a real browser (Debian's Chromium driven by Playwright) against `healthvault serve` on loopback.

Three journeys, in order, on one server: (1) a patient registers, uploads two generated lab-sheet photos, sees the
extracted values and a trend across both reports, shares with a doctor, reads the access log after the doctor's
view, revokes, then exports all of their data (the password again, a passphrase typed twice; the progress; the ZIP,
once, opened with 7-Zip and that passphrase); (2) the doctor's first sign-in (password change, TOTP enrolment from
the page's QR secret), the shared record with its values, its watermarked download (the PDF carries a download id),
and nothing after the revoke; (3) an auditor's first sign-in, a search of the trail for that
doctor's reads, an export whose bundle verifies offline with `healthvault audit verify DIR --key VKEY`.
Along the way: every URL is recorded (no PHI in any), every console response carries the CSP and `no-store`, no
CSP violation is reported by the browser, a `<script>` in a title, file name and purpose renders as text, a state
change without the CSRF token is refused, cookie flags; axe-core finds no serious or critical violation.
A screenshot of each step goes to $HEALTHVAULT_TEST_ARTIFACTS (default ./artifacts/console, gitignored).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.helpers import PASSWORD, make_id_number, make_phone
from tests.helpers.browser import (
    ARGS,
    CHROMIUM,
    INITIAL,
    Run,
    axe,
    cli,
    first_sign_in,
    fits,
    free_port,
    new_context,
    tab_order,
)
from vault.records import watermark

PASS = "a passphrase for the console browser test"
EXPORT_PASS = "导出 passphrase of the browser journey"
PAYLOAD = '<script>alert("hv")</script>'
FILE_PAYLOAD = "<script>alert(1)</script>"  # Chromium percent-encodes a quote in a multipart file name
REAL_NAME, ID_NUMBER, PHONE = "王芳芳", make_id_number(), make_phone()
TITLE = "血常规 " + PAYLOAD
SECOND = [  # the second report: other values for the same analytes (a trend of two points)
    ("WBC", "白细胞计数", "8.10", "10^9/L", "3.5-9.5", 3.5, 9.5, None),
    ("RBC", "红细胞计数", "4.60", "10^12/L", "3.8-5.1", 3.8, 5.1, None),
    ("HGB", "血红蛋白", "121", "g/L", "115-150", 115, 150, None),
    ("PLT", "血小板计数", "230", "10^9/L", "125-350", 125, 350, None),
    ("GLU", "葡萄糖", "6.80", "mmol/L", "3.90-6.10", 3.9, 6.1, "H"),
]

if os.environ.get("CI") != "true" and (not Path(CHROMIUM).exists() or shutil.which("fc-list") is None):
    pytest.skip("Debian chromium and fonts-noto-cjk are not installed (.ci/run installs them)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api") if os.environ.get("CI") != "true" else \
    __import__("playwright.sync_api", fromlist=["sync_playwright"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
    env.update(HEALTHVAULT_DATA_DIR=str(root / "var"), HEALTHVAULT_PASSPHRASE=PASS, HEALTHVAULT_NEW_PASSWORD=INITIAL)
    cli(env, "init")
    cli(env, "users", "add", "--role", "doctor", "--username", "dr.li")
    cli(env, "users", "add", "--role", "auditor", "--username", "aud.zhao")
    port = free_port()
    log = open(root / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "vault.cli", "serve", "--host", "127.0.0.1", "--port",
                                str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (root / "serve.log").read_text()
            time.sleep(0.1)
        yield base, env
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def run(server):
    artifacts = Path(os.environ.get("HEALTHVAULT_TEST_ARTIFACTS", Path.cwd() / "artifacts" / "console"))
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    return Run(server[0], artifacts)


def _wait_for_values(page) -> None:
    """OCR runs off the request path; the record page polls its status and reloads itself once the sheet is read."""
    page.wait_for_selector("#lab-table, #ocr-status.failed, #ocr-status.declined", timeout=180_000)
    assert page.locator("#lab-table").count() == 1, "the lab sheet could not be read"


def _upload(page, run: Run, *, data: bytes, name: str, title: str, shot: str) -> str:
    page.goto(run.base + "/records")
    page.get_by_label("类别", exact=True).select_option("lab_report")
    page.get_by_label("标题（可选）", exact=True).fill(title)
    page.locator("#file").set_input_files(files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
    progress_events = len(run.progress)
    page.get_by_role("button", name="上传").click()
    page.wait_for_url(re.compile(r".*/records/[0-9a-f-]{36}$"))
    assert len(run.progress) > progress_events and run.progress[-1] == 100  # the bar followed the upload to the end
    record_url = page.url
    _wait_for_values(page)
    run.shot(page, shot)
    return record_url


def _export_my_data(page, run: Run, violations: dict) -> None:
    """Journey 1's export: from the navigation, a mismatched passphrase refused (and not echoed), then the build's
    progress, the package downloaded once, and 7-Zip opening it with the passphrase (and not without)."""
    page.goto(run.base + "/records")
    page.locator("header nav a[href='/export']").click()
    page.wait_for_url("**/export")
    violations["export-form"] = axe(page)
    assert fits(page), "the export form is wider than a 375 px screen"

    def fill(again: str) -> None:
        page.get_by_label("密码", exact=True).fill(PASSWORD)
        page.locator("#x-passphrase").fill(EXPORT_PASS)
        page.locator("#x-passphrase-again").fill(again)

    fill(EXPORT_PASS + "!")
    run.shot(page, "patient-export-form")
    page.get_by_role("button", name="开始导出").click()
    assert "不一致" in page.locator("#pexport-error").inner_text()
    assert page.locator("#x-passphrase").input_value() == "" and EXPORT_PASS not in page.content()
    run.shot(page, "patient-export-mismatch")
    fill(EXPORT_PASS)
    page.get_by_role("button", name="开始导出").click()
    page.wait_for_url(re.compile(r".*/export/[0-9a-f-]{36}$"))
    page.locator("#pexport-download").wait_for(timeout=120_000)  # htmx polled the progress fragment until ready
    violations["export"] = axe(page)
    assert fits(page), "the export page is wider than a 375 px screen"
    run.shot(page, "patient-export-ready")
    with page.expect_download() as download_info:
        page.locator("#pexport-download").click()
    assert download_info.value.suggested_filename == "healthvault-export.zip"
    run.urls.append(download_info.value.url)  # a download fires no page request event: recorded by hand
    package = run.artifacts / "my-export.zip"
    download_info.value.save_as(package)
    page.reload()
    assert "已下载" in page.locator("#pexport-status").inner_text()  # once only
    run.shot(page, "patient-export-downloaded")
    if shutil.which("7z") is None:
        assert os.environ.get("CI") != "true", "7z (Debian p7zip-full) is missing: .ci/run installs it"
        return
    wrong = subprocess.run(["7z", "t", "-pnot-the-passphrase", str(package)], capture_output=True, text=True)
    assert wrong.returncode != 0
    out = run.artifacts / "my-export"
    opened = subprocess.run(["7z", "x", "-y", f"-p{EXPORT_PASS}", f"-o{out}", str(package)], capture_output=True,
                            text=True)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["records"]) == 2
    for entry in manifest["records"]:
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]


def _doctor_downloads(page, run: Run) -> None:
    """Journey 2's download: the consult view offers the watermarked copy; the PDF names the doctor and carries a
    download id of its own (in the visible mark and the document information), never the patient's name."""
    import pypdfium2

    link = page.locator("#record-download")
    assert link.inner_text().strip() == "下载（带水印）"
    with page.expect_download() as download_info:
        link.click()
    run.urls.append(download_info.value.url)
    data = Path(download_info.value.path()).read_bytes()
    (run.artifacts / "doctor-download.pdf").write_bytes(data)
    download_id = watermark.read_download_id(data)
    assert download_id is not None and watermark.DOWNLOAD_ID.match(download_id)
    document = pypdfium2.PdfDocument(data)
    try:
        text = "".join(p.get_textpage().get_text_range() for p in document)
    finally:
        document.close()
    assert download_id in text and "dr.li" in text and "仅供诊疗使用" in text and REAL_NAME not in text
    run.shot(page, "doctor-download")


def test_three_journeys(server, browser, run):
    from tests.ocr import sheetgen

    base, env = server
    first_photo = sheetgen.photo_of(sheetgen.image_sheet())
    second_photo = sheetgen.photo_of(sheetgen.image_sheet(SECOND, seed=1))
    violations: dict[str, list] = {}

    # ---- journey 1: the patient, on a phone-sized screen -------------------------------------------------------
    patient_ctx, patient = new_context(browser, run, mobile=True)
    patient.goto(base + "/")
    patient.wait_for_url("**/login*")
    violations["login"] = axe(patient)
    order = tab_order(patient, 12)  # skip link, header links, then the form: every field and the button by keyboard
    assert {"username", "password", "otp"} <= set(order) and "button" in order, order
    run.shot(patient, "patient-login")
    patient.get_by_role("link", name="还没有账号？注册").click()
    violations["register"] = axe(patient)
    assert fits(patient), "register is wider than a 375 px screen"
    patient.get_by_label("用户名", exact=True).fill("wang.fangfang")
    patient.get_by_label("密码", exact=True).fill(PASSWORD)
    patient.get_by_label("真实姓名", exact=True).fill(REAL_NAME)
    patient.get_by_label("身份证号", exact=True).fill(ID_NUMBER)
    patient.get_by_label("手机号", exact=True).fill(PHONE)
    patient.get_by_label("同意处理我的健康资料（必需）", exact=True).check()
    patient.get_by_label("同意处理我的身份证号（必需）", exact=True).check()
    patient.get_by_label("同意自动识别化验单上的数值（可选）", exact=True).check()
    run.shot(patient, "patient-register")
    patient.get_by_role("button", name="同意并注册").click()
    patient.wait_for_url("**/login?done=registered")
    patient.get_by_label("用户名", exact=True).fill("wang.fangfang")
    patient.get_by_label("密码", exact=True).fill(PASSWORD)
    patient.get_by_role("button", name="登录").click()
    patient.wait_for_url("**/records")
    cookies = {c["name"]: c for c in patient_ctx.cookies()}
    session = cookies["hv_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/"
    violations["records"] = axe(patient)
    assert fits(patient), "records is wider than a 375 px screen"
    run.shot(patient, "patient-records-empty")

    # A state change without the CSRF token: refused, nothing stored.
    refused = patient.request.post(base + "/consents", form={"item": "ocr", "give": "no"})
    assert refused.status == 403
    refused = patient.request.post(base + "/records", multipart={
        "category": "other", "file": {"name": "x.jpg", "mimeType": "image/jpeg", "buffer": first_photo}})
    assert refused.status == 403

    first_url = _upload(patient, run, data=first_photo, name=FILE_PAYLOAD + ".jpg", title=TITLE,
                        shot="patient-record-1")
    table = patient.locator("#lab-table")
    assert table.locator("tr.high").count() >= 3 and table.locator("tr.low").count() >= 2
    assert "11.32" in table.inner_text() and "↑" in table.inner_text()
    assert PAYLOAD in patient.locator("h1").inner_text()  # shown as text: no script ran (a dialog would fail)
    assert FILE_PAYLOAD + ".jpg" in patient.locator("dl.facts").inner_text()
    violations["record"] = axe(patient)
    assert fits(patient), "record is wider than a 375 px screen"
    second_url = _upload(patient, run, data=second_photo, name="report-2.jpg", title="复查", shot="patient-record-2")
    wbc = patient.locator("#lab-table tr[data-code='WBC'] a.trend-link")
    wbc.click()
    patient.locator("#trend svg.trend").wait_for()
    assert patient.locator("#trend svg.trend circle").count() == 2
    assert patient.locator("#trend svg.trend rect.band").count() == 1
    run.shot(patient, "patient-trend")

    patient.goto(base + "/sharing")
    patient.get_by_label("对方用户名", exact=True).fill("dr.li")
    patient.locator("input[name=record_ids]").first.check()
    patient.locator("input[name=record_ids]").nth(1).check()
    patient.get_by_label("查看原件/下载", exact=True).check()
    patient.get_by_label("用途", exact=True).fill("门诊复诊 " + PAYLOAD)
    violations["sharing"] = axe(patient)
    assert fits(patient), "sharing is wider than a 375 px screen"
    run.shot(patient, "patient-share-form")

    # ---- journey 2, first part: the doctor signs in (TOTP) and reads the shared record ------------------------
    # The grant goes to a doctor that exists: set the doctor up first, then share.
    doctor_ctx, doctor = new_context(browser, run, mobile=False)
    first_sign_in(doctor, run, "dr.li", "doctor")
    doctor.wait_for_url("**/shared")
    assert doctor.locator("#shared-none").count() == 1
    patient.get_by_role("button", name="确认共享").click()
    patient.wait_for_url(re.compile(r".*/sharing/[0-9a-f-]{36}$"))
    grant_url = patient.url
    assert PAYLOAD in patient.locator("dd.purpose").inner_text()
    assert "grant_id" in patient.locator("#receipt-json").inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", patient.locator("#receipt-salt").inner_text().strip())
    run.shot(patient, "patient-grant-receipt")

    doctor.goto(base + "/shared")
    assert doctor.locator("#shared-list a.record-link").count() == 2
    violations["shared"] = axe(doctor)
    run.shot(doctor, "doctor-shared")
    doctor.goto(first_url)
    doctor.locator("#lab-table").wait_for()
    assert "11.32" in doctor.locator("#lab-table").inner_text()
    # A grantee's inline original is the watermarked copy: the photo comes as a marked PDF in a frame.
    assert doctor.locator("img.original").count() == 0
    shown = doctor.request.get(base + doctor.locator("iframe.original").get_attribute("src"))
    assert shown.ok and shown.headers["content-type"] == "application/pdf" and shown.body().startswith(b"%PDF")
    assert doctor.locator("#trend svg.trend circle").count() >= 1
    violations["doctor-record"] = axe(doctor)
    run.shot(doctor, "doctor-record")
    doctor.locator("#lab-table tr[data-code='WBC'] a.trend-link").click()
    doctor.wait_for_function("document.querySelectorAll('#trend svg.trend circle').length === 2")
    run.shot(doctor, "doctor-trend")
    _doctor_downloads(doctor, run)

    # ---- journey 1, end: the access log shows the doctor's read; revoke in one click -----------------------------
    patient.goto(base + "/access-log")
    log_text = patient.locator("#access-table").inner_text()  # the others' accesses, apart from the patient's own
    assert "dr.li" in log_text and "查看报告" in log_text and "you" not in log_text
    violations["access-log"] = axe(patient)
    assert fits(patient), "access-log is wider than a 375 px screen"
    run.shot(patient, "patient-access-log")
    patient.goto(base + "/consents")
    violations["consents"] = axe(patient)
    assert fits(patient), "consents is wider than a 375 px screen"
    run.shot(patient, "patient-consents")
    patient.goto(grant_url)
    patient.get_by_role("button", name="撤回").click()
    patient.wait_for_url(grant_url)
    assert "已撤回" in patient.locator("dd.state").inner_text()
    run.shot(patient, "patient-revoked")
    _export_my_data(patient, run, violations)

    # ---- journey 2, end: after the revoke the doctor sees nothing -------------------------------------------------
    doctor.goto(base + "/shared")
    assert doctor.locator("#shared-list a.record-link").count() == 0
    run.shot(doctor, "doctor-after-revoke")
    response = doctor.goto(second_url)
    assert response.status == 404 and "11.32" not in doctor.content() and "8.10" not in doctor.content()
    run.shot(doctor, "doctor-record-refused")

    # ---- journey 3: the auditor searches the doctor's reads, exports, verifies offline --------------------------
    auditor_ctx, auditor = new_context(browser, run, mobile=False)
    first_sign_in(auditor, run, "aud.zhao", "auditor")
    auditor.wait_for_url("**/audit")
    auditor.get_by_label("操作", exact=True).fill("record.read")
    auditor.get_by_role("button", name="检索").click()
    auditor.wait_for_url("**/audit?*")
    doctor_row = auditor.locator("#audit-table tbody tr", has=auditor.locator("td.role", has_text="doctor")).first
    doctor_row.locator("a.actor").click()
    auditor.wait_for_url(re.compile(r".*actor=.*"))
    rows = auditor.locator("#audit-table tbody tr")
    assert rows.count() >= 2
    assert set(auditor.locator("#audit-table td.role").all_inner_texts()) == {"doctor"}
    assert set(auditor.locator("#audit-table td.action").all_inner_texts()) == {"record.read"}
    violations["audit"] = axe(auditor)
    run.shot(auditor, "auditor-search")
    auditor.goto(base + "/audit/exports")
    auditor.get_by_role("button", name="开始导出").click()
    auditor.wait_for_url(re.compile(r".*/audit/exports/[0-9a-f]{16}$"))
    auditor.locator("#export-download").wait_for(timeout=120_000)
    violations["export"] = axe(auditor)
    run.shot(auditor, "auditor-export")
    vkey = auditor.locator("#vkey").inner_text().strip()
    with auditor.expect_download() as download_info:
        auditor.locator("#export-download").click()
    archive = run.artifacts / "audit-export.tar.gz"
    download_info.value.save_as(archive)
    unpacked = run.artifacts / "audit-export"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (bundle,) = list(unpacked.iterdir())
    clean = {k: v for k, v in env.items() if not k.startswith("HEALTHVAULT_")}
    verified = cli(clean, "audit", "verify", str(bundle), "--key", vkey, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    auditor.goto(base + "/keys")
    run.shot(auditor, "auditor-keys")

    # ---- English switch ------------------------------------------------------------------------------------------
    patient.goto(base + "/records")
    patient.get_by_role("link", name="English").click()
    patient.get_by_role("heading", level=1, name="My records").wait_for()
    run.shot(patient, "patient-records-english")

    # ---- across the journeys -------------------------------------------------------------------------------------
    seen = [(r.url, r.status, r.all_headers()) for r in run.responses]
    for ctx in (patient_ctx, doctor_ctx, auditor_ctx):
        ctx.close()
    assert {page: found for page, found in violations.items() if found} == {}
    assert [e for e in run.console_errors if "Content Security Policy" in e] == []
    secrets_in_urls = [REAL_NAME, ID_NUMBER, PHONE, PASSWORD, EXPORT_PASS, "passphrase", "11.32", "血常规", "门诊",
                       "script", vkey]
    for url in run.urls:
        decoded = urllib.parse.unquote(url)
        assert not any(s in decoded for s in secrets_in_urls), decoded
        assert decoded.startswith(base), decoded  # nothing leaves the vault's origin
    pages = [(url, status, headers) for url, status, headers in seen
             if "/static/" not in url and not url.endswith("/content") and "text/html" in headers.get(
                 "content-type", "")]
    assert len(pages) > 20
    for url, _status, headers in pages:
        csp = headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp, url
        assert headers.get("cache-control") == "no-store", url
    (run.artifacts / "urls.txt").write_text("\n".join(run.urls) + "\n")
    assert run.shots >= 20
