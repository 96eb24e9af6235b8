"""Traceable grantee downloads (issue 16 part 3): a doctor's or escort's copy carries the mark on every page and a
download id that its audit event stores; `audit trace` finds the event from a leaked copy; the patient's own download
is byte-identical to what was stored."""

from __future__ import annotations

import datetime as dt
import io

import pikepdf
import pypdfium2
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from audit.models import AuditEvent
from tests.helpers import login, pdf_bytes, png_bytes, real_jpeg, register, staff, stored, upload
from vault.records import watermark


def _pages_text(data: bytes) -> list[str]:
    document = pypdfium2.PdfDocument(data)
    try:
        return [page.get_textpage().get_text_range() for page in document]
    finally:
        document.close()


def _three_pages() -> bytes:
    pdf = pikepdf.new()
    sources = [pikepdf.open(io.BytesIO(pdf_bytes(f"page {n} glucose"))) for n in range(3)]
    for source in sources:
        pdf.pages.append(source.pages[0])
    pdf.add_blank_page(page_size=(842, 595))  # a landscape page too
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def _download_events(vault) -> list[AuditEvent]:
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "record.download")
                                    .order_by(AuditEvent.occurred_at, AuditEvent.id)))


@pytest.fixture
def people(client, vault, clock):
    register(client, username="wm-patient", real_name="孙美丽")
    patient = login(client, "wm-patient")
    doctor = staff(client, vault, "doctor", "wm-doctor")
    escort = staff(client, vault, "escort", "wm-escort")
    viewer = staff(client, vault, "doctor", "wm-viewer")
    for h in (doctor, escort, viewer):
        h.pop("_secret")
    records = {
        "pdf": upload(client, patient, _three_pages(), category="exam_report").json()["record_id"],
        "png": upload(client, patient, png_bytes(b"image record"), category="exam_report").json()["record_id"],
        "jpeg": upload(client, patient, real_jpeg((120, 80)), category="exam_report").json()["record_id"],
    }
    grants = {}
    for who, actions in (("wm-doctor", ["view", "download"]), ("wm-escort", ["download"]), ("wm-viewer", ["view"])):
        grants[who] = client.post("/v1/grants", headers=patient, json={
            "grantee": who, "categories": ["exam_report"], "actions": actions, "purpose": f"会诊 {who} 复查",
            "expires_at": (clock() + dt.timedelta(days=2)).isoformat()}).json()["grant_id"]
    return {"patient": patient, "doctor": doctor, "escort": escort, "viewer": viewer, "records": records,
            "grants": grants}


def test_a_doctors_download_is_marked_on_every_page_and_traceable(client, vault, people, tmp_path):
    record_id = people["records"]["pdf"]
    response = client.get(f"/v1/records/{record_id}/content", headers=people["doctor"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert "no-store" in response.headers["cache-control"]
    data = response.content
    with pikepdf.open(io.BytesIO(data)) as pdf:
        download_id = str(pdf.docinfo[watermark.INFO_KEY])
    assert watermark.DOWNLOAD_ID.match(download_id)
    pages = _pages_text(data)
    assert len(pages) == 4
    grant_id = people["grants"]["wm-doctor"]
    for n, text in enumerate(pages):
        for expected in ("仅供诊疗使用", "wm-doctor", grant_id, "会诊 wm-doctor 复查", download_id):
            assert expected in text, (n, expected)
        if n < 3:
            assert f"page {n} glucose" in text  # the page itself is still there
    assert "孙美丽" not in "".join(pages)  # the mark names the grantee, never the patient

    event = _download_events(vault)[-1]
    assert event.outcome == "allow" and event.grant_id == grant_id and event.resource_id == record_id
    assert event.reason == f"grant {watermark.REASON_PREFIX}{download_id}"

    second = client.get(f"/v1/records/{record_id}/content", headers=people["doctor"]).content
    assert watermark.read_download_id(second) not in (None, download_id)  # one id per download

    leaked = tmp_path / "leaked.pdf"
    leaked.write_bytes(data)
    from vault.cli.trace import find_download

    with vault.session() as session:
        found = find_download(session, vault, download_id)
    assert found["who"] == "wm-doctor (doctor)" and found["grant"] == grant_id and found["record"] == record_id
    assert found["when"] == event.occurred_at.isoformat()

    # metadata stripped by whoever leaked it: the visible mark still names the download
    stripped = pikepdf.open(io.BytesIO(data))
    del stripped.trailer["/Info"]
    out = io.BytesIO()
    stripped.save(out)
    assert watermark.read_download_id(out.getvalue()) == download_id


def test_audit_trace_cli(client, vault, people, tmp_path, monkeypatch, backend):
    if backend != "sqlite" or vault.settings.kms_provider != "local":
        pytest.skip("the CLI reopens the vault from its data directory: the SQLite, local-key setup")
    from tests.conftest import PASSPHRASE
    from vault.cli import main

    data = client.get(f"/v1/records/{people['records']['png']}/content", headers=people["escort"]).content
    leaked = tmp_path / "leaked.pdf"
    leaked.write_bytes(data)
    env = {"HEALTHVAULT_DATA_DIR": str(vault.settings.data_dir), "HEALTHVAULT_PASSPHRASE": PASSPHRASE.decode()}
    result = CliRunner().invoke(main, ["audit", "trace", str(leaked)], env=env)
    assert result.exit_code == 0, result.output
    assert "wm-escort (escort)" in result.output and people["grants"]["wm-escort"] in result.output
    assert watermark.read_download_id(data) in result.output
    plain = tmp_path / "plain.pdf"
    plain.write_bytes(pdf_bytes("not marked"))
    refused = CliRunner().invoke(main, ["audit", "trace", str(plain)], env=env)
    assert refused.exit_code != 0 and "no download id" in refused.output
    with vault.session() as session:  # the trace itself is on record
        assert session.scalars(select(AuditEvent).where(AuditEvent.action == "audit.read",
                                                        AuditEvent.reason == "trace")).first() is not None


def test_images_become_marked_pdfs_for_grantees(client, people):
    for kind in ("png", "jpeg"):
        response = client.get(f"/v1/records/{people['records'][kind]}/content", headers=people["escort"])
        assert response.status_code == 200 and response.content.startswith(b"%PDF-")
        (text,) = _pages_text(response.content)
        assert "仅供诊疗使用" in text and "wm-escort" in text and people["grants"]["wm-escort"] in text
        with pikepdf.open(io.BytesIO(response.content)) as pdf:
            images = list(pdf.pages[0].get_images().values())
            assert len(images) == 1  # the picture is on the page under the mark


def test_the_patients_own_download_is_byte_identical(client, people):
    sent = _three_pages()
    record_id = upload(client, people["patient"], sent, category="exam_report").json()["record_id"]
    content = client.get(f"/v1/records/{record_id}/content", headers=people["patient"]).content
    assert content == stored(sent)
    assert watermark.read_download_id(content) is None
    png = client.get(f"/v1/records/{people['records']['png']}/content", headers=people["patient"]).content
    assert png == png_bytes(b"image record")


def test_no_unmarked_copy_leaves_to_a_grantee(client, vault, people):
    before = len(_download_events(vault))
    # a view-only grant does not cover downloads; a stranger gets nothing; both denials are on record
    assert client.get(f"/v1/records/{people['records']['pdf']}/content", headers=people["viewer"]).status_code == 404
    assert [e.outcome for e in _download_events(vault)[before:]] == ["deny"]


def test_mark_functions_directly():
    mark = watermark.Mark(grantee="dr.x", at=dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC), grant_id="g-1",
                          purpose="x" * 100, download_id="0" * 32)
    out = watermark.mark_pdf(pdf_bytes("a"), mark)
    (text,) = _pages_text(out)
    assert "2026-12-07 10:00:00 (UTC+8)" in text and "x" * 40 + "…" in text and "x" * 41 not in text
    with pytest.raises(watermark.CannotMark):
        watermark.mark_pdf(b"%PDF-1.4 garbage", mark)
    assert watermark.read_download_id(b"not a pdf") is None


def test_heic_and_png_images_are_placed_on_a_marked_page():
    pillow_heif = pytest.importorskip("pillow_heif")
    from PIL import Image

    pillow_heif.register_heif_opener()
    heic = io.BytesIO()
    Image.new("RGB", (80, 40), (0, 120, 200)).save(heic, "HEIF")
    mark = watermark.Mark(grantee="dr.y", at=dt.datetime(2026, 12, 7, tzinfo=dt.UTC), grant_id="g-2", purpose="p",
                          download_id="1" * 32)
    for data, kind in ((heic.getvalue(), "image/heic"), (png_bytes(b"grey row"), "image/png")):
        out = watermark.mark(data, kind, mark)
        (text,) = _pages_text(out)
        assert "仅供诊疗使用" in text and "1" * 32 in text
        with pikepdf.open(io.BytesIO(out)) as pdf:
            (image,) = pdf.pages[0].get_images().values()
            assert int(image.Width) in (80, 8) and watermark.read_download_id(out) == "1" * 32
