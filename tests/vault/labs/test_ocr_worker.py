"""OCR out of the server process (issue 14 item 11): pages run in a child process under CPU, memory and wall-clock
limits; a decompression bomb, a page that exhausts a limit or a page that takes too long fails its job with a stable
code, the child is re-spawned, and the server process (this one) stays up and does not grow."""

from __future__ import annotations

import io
import time
import zlib

import pytest

from tests.helpers import login, register, upload
from vault.labs import ocr_worker
from vault.labs.ocr_worker import Limits, OcrWorker

sheetgen = pytest.importorskip("tests.ocr.sheetgen")


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def _bomb_pdf() -> bytes:
    import pikepdf

    deflater = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    bomb = b"".join(deflater.compress(chunk) for _ in range(2048)) + deflater.flush()  # 2 GiB of zeros, ~2 MB
    pdf = pikepdf.new()
    page = pdf.add_blank_page(page_size=(595, 842))
    page.obj.Contents = pdf.make_stream(bomb, Filter=pikepdf.Name.FlateDecode)
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def _big_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (6000, 6000), 255).save(buf, "PNG")  # 36 MP: under the pixel limit, over a small memory limit
    return buf.getvalue()


@pytest.fixture
def patient(client):
    register(client, username="ocr-iso")
    return login(client, "ocr-iso")


def _run(client, headers, monkeypatch, worker: OcrWorker, data: bytes, **kwargs) -> dict:
    monkeypatch.setattr(ocr_worker, "shared", lambda: worker)
    record = upload(client, headers, data, category="lab_report", **kwargs).json()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = client.get(f"/v1/records/{record['record_id']}", headers=headers).json()
        if body["ocr_status"] not in ("pending", None):
            return body
        time.sleep(0.2)
    raise AssertionError("extraction did not finish")


def test_pages_over_the_limits_fail_their_jobs_and_the_server_never_notices(client, patient, monkeypatch):
    tight = OcrWorker(Limits(memory_bytes=150 << 20, cpu_seconds=20, wall_seconds=60))
    hog = OcrWorker(Limits(cpu_seconds=1, wall_seconds=120))
    slow = OcrWorker(Limits(wall_seconds=0.3))
    try:
        baseline = _rss()
        # Two layers: the upload's hygiene pass refuses the bomb before anything is stored (issue 16), and the
        # worker refuses it on its own too, should one ever reach it.
        refused = upload(client, patient, _bomb_pdf(), category="lab_report", content_type="application/pdf")
        assert refused.status_code == 422 and refused.json()["type"].endswith(":file-too-complex")
        bomb = tight.extract(_bomb_pdf())
        assert (bomb.status, bomb.error) == ("failed", "too_large")
        assert tight.spawned == 1 and tight.pid() is not None  # a refused page does not cost the child
        big = _run(client, patient, monkeypatch, tight, _big_png(), content_type="image/png")
        assert (big["ocr_status"], big["ocr_error"]) == ("failed", "too_large")  # an allocation over RLIMIT_AS
        photo = sheetgen.image_sheet().data
        # The CPU limit's granularity is a second: a long screenshot (several full-resolution tiles, ~4-6 s of work
        # here) is a page sure to need more than one second of CPU, however fast the machine.
        heavy = sheetgen.long_screenshot().data
        cpu = _run(client, patient, monkeypatch, hog, heavy, content_type="image/png")
        assert (cpu["ocr_status"], cpu["ocr_error"]) == ("failed", "cpu_limit")
        assert hog.pid() is None  # SIGXCPU ended that child
        late = _run(client, patient, monkeypatch, slow, photo, content_type="image/png")
        assert (late["ocr_status"], late["ocr_error"]) == ("failed", "timeout")
        assert slow.pid() is None  # killed at the wall-clock limit
        # The server answered throughout and did not take the pages' memory.
        assert client.get("/healthz").status_code == 200
        assert _rss() - baseline < 120 << 20
        # The worker is re-spawned for the next page, which reads normally.
        good = _run(client, patient, monkeypatch, hog, sheetgen.digital_pdf().data, content_type="application/pdf")
        assert good["ocr_status"] in ("done", "needs_review"), good.get("ocr_error")
        assert hog.spawned == 2 and hog.last_load_seconds is not None
    finally:
        for worker in (tight, hog, slow):
            worker.close()


def test_a_child_that_cannot_start_fails_the_job_cleanly(monkeypatch):
    worker = OcrWorker(Limits(start_seconds=5))
    monkeypatch.setattr(ocr_worker.sys, "executable", "/nonexistent/python")
    outcome = worker.extract(b"%PDF-1.7")
    assert (outcome.status, outcome.error) == ("failed", "worker_unavailable")
    worker.close()


def test_a_child_that_dies_between_pages_is_replaced(monkeypatch):
    import os
    import signal

    worker = OcrWorker(warm=False)
    try:
        assert worker.extract(b"not a page").error == "unsupported_format"
        first = worker.pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        assert worker.extract(b"not a page").error == "unsupported_format"  # a new child answered
        assert worker.pid() not in (None, first) and worker.spawned == 2
    finally:
        worker.close()


def test_the_child_gets_no_secret_from_the_server_environment(monkeypatch):
    monkeypatch.setenv("HEALTHVAULT_PASSPHRASE", "not-for-the-child")
    monkeypatch.setenv("HEALTHVAULT_ROOT_KEY", "not-for-the-child-either")
    monkeypatch.setenv("HEALTHVAULT_OCR_THREADS", "2")
    worker = OcrWorker(warm=False)
    try:
        worker.extract(b"not a page")
        pid = worker.pid()
        assert pid is not None
        with open(f"/proc/{pid}/environ", "rb") as environ:
            names = {item.split(b"=", 1)[0] for item in environ.read().split(b"\0") if item}
        assert b"HEALTHVAULT_PASSPHRASE" not in names and b"HEALTHVAULT_ROOT_KEY" not in names
        assert b"HEALTHVAULT_OCR_THREADS" in names
    finally:
        worker.close()
