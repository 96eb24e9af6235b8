"""Upload hygiene (issue 16 part 2): a crafted-file suite. Each dangerous feature is gone from what the vault stores
(inspected with pikepdf and Pillow) or the file is refused with a 422 problem and nothing is stored."""

from __future__ import annotations

import io
import zlib

import pikepdf
import pytest
from PIL import Image

from tests.helpers import login, pdf_bytes, png_bytes, register, stored, upload
from vault.records import hygiene, image_hygiene, pdf_hygiene

PROBLEM = "urn:healthvault:problem:"


def _save(pdf: pikepdf.Pdf, **options) -> bytes:
    out = io.BytesIO()
    pdf.save(out, **options)
    return out.getvalue()


def _base() -> pikepdf.Pdf:
    return pikepdf.open(io.BytesIO(pdf_bytes("visible page text")))


def _all_keys(pdf: pikepdf.Pdf) -> set[str]:
    """Every dictionary key anywhere in the file (indirect objects and their direct children)."""
    keys: set[str] = set()

    def walk(obj, depth=0):
        if depth > 40:
            return
        if isinstance(obj, (pikepdf.Dictionary, pikepdf.Stream)):
            for key in obj.keys():
                keys.add(str(key))
                child = obj[key]
                if isinstance(child, pikepdf.Object) and not child.is_indirect:
                    walk(child, depth + 1)
        elif isinstance(obj, pikepdf.Array):
            for child in obj:
                if isinstance(child, pikepdf.Object) and not child.is_indirect:
                    walk(child, depth + 1)

    for obj in pdf.objects:
        walk(obj)
    walk(pdf.trailer)
    return keys


def _action_types(pdf: pikepdf.Pdf) -> set[str]:
    found = set()
    for obj in pdf.objects:
        if isinstance(obj, pikepdf.Dictionary) and "/S" in obj and isinstance(obj.get("/S"), pikepdf.Name):
            found.add(str(obj["/S"]))
    for page in pdf.pages:
        for annot in page.get("/Annots", []):
            if "/A" in annot:
                found.add(str(annot["/A"].get("/S")))
    return found


def _page_text(data: bytes) -> str:
    import pypdfium2

    document = pypdfium2.PdfDocument(data)
    try:
        return "".join(page.get_textpage().get_text_range() for page in document)
    finally:
        document.close()


def javascript_pdf() -> bytes:
    pdf = _base()
    script = pdf.make_indirect(pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String("app.alert('x')")))
    pdf.Root.OpenAction = script
    pdf.Root.AA = pikepdf.Dictionary(WC=pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String("1")))
    pdf.Root.Names = pikepdf.Dictionary(JavaScript=pikepdf.Dictionary(Names=pikepdf.Array(
        [pikepdf.String("boot"), pdf.make_indirect(pikepdf.Dictionary(S=pikepdf.Name.JavaScript,
                                                                       JS=pikepdf.String("this.print()")))])))
    pdf.pages[0].obj.AA = pikepdf.Dictionary(O=pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String("2")))
    return _save(pdf)


def launch_pdf() -> bytes:
    pdf = _base()
    launch = pikepdf.Dictionary(S=pikepdf.Name.Launch, F=pikepdf.String("cmd.exe"),
                                Win=pikepdf.Dictionary(F=pikepdf.String("cmd.exe"), P=pikepdf.String("/c calc")))
    uri = pikepdf.Dictionary(S=pikepdf.Name.URI, URI=pikepdf.String("https://attacker.example/beacon"))
    annots = pikepdf.Array()
    for action in (launch, uri):
        annots.append(pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.Annot, Subtype=pikepdf.Name.Link,
                                                           Rect=[0, 0, 100, 100], A=action)))
    pdf.pages[0].obj.Annots = annots
    pdf.Root.OpenAction = pikepdf.Dictionary(S=pikepdf.Name.Launch, F=pikepdf.String("evil.exe"))
    return _save(pdf)


def attachment_pdf() -> bytes:
    pdf = _base()
    pdf.attachments["payload.exe"] = pikepdf.AttachedFileSpec(pdf, b"MZ-embedded-secret-payload",
                                                               mime_type="application/octet-stream")
    spec = pikepdf.AttachedFileSpec(pdf, b"annotation-attached-payload").obj
    pdf.pages[0].obj.Annots = pdf.make_indirect(pikepdf.Array([pdf.make_indirect(pikepdf.Dictionary(
        Type=pikepdf.Name.Annot, Subtype=pikepdf.Name.FileAttachment, Rect=[0, 0, 10, 10], FS=spec))]))
    return _save(pdf)


def metadata_pdf() -> bytes:
    pdf = _base()
    with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
        meta["dc:creator"] = ["Dr. Metadata Leak"]
        meta["xmp:CreatorTool"] = "LeakyScanner 3000"
    pdf.docinfo["/Author"] = "Author Leak"
    pdf.docinfo["/Producer"] = "Producer Leak"
    return _save(pdf)


def bomb_pdf(inflated: int, streams: int = 1) -> bytes:
    """`streams` Flate streams of `inflated` zero bytes each (~1/1000 of that on disk)."""
    compressor = zlib.compressobj(9)
    block = bytes(1024 * 1024)
    raw = b"".join(compressor.compress(block) for _ in range(inflated // len(block))) + compressor.flush()
    pdf = _base()
    bombs = pikepdf.Array()
    for _ in range(streams):
        stream = pikepdf.Stream(pdf, raw)
        stream.Filter = pikepdf.Name.FlateDecode
        bombs.append(pdf.make_indirect(stream))
    pdf.Root.Bombs = bombs
    return _save(pdf, compress_streams=False, stream_decode_level=pikepdf.StreamDecodeLevel.none)


def gps_photo(orientation: int = 6) -> bytes:
    image = Image.new("RGB", (40, 20), (10, 200, 10))
    image.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone Model X"  # Model
    exif[0x0131] = "Camera App 1.0"  # Software
    exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: (39.0, 54.0, 27.0), 3: "E", 4: (116.0, 23.0, 17.0)}  # GPS IFD: Beijing
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, comment=b"shot at home", quality=95)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------------- the PDF features
def test_javascript_and_open_actions_are_gone():
    cleaned = pikepdf.open(io.BytesIO(pdf_hygiene.clean_pdf(javascript_pdf())))
    keys = _all_keys(cleaned)
    assert not keys & {"/OpenAction", "/AA", "/JS", "/JavaScript"}
    assert "/JavaScript" not in _action_types(cleaned)
    assert b"app.alert" not in pdf_hygiene.clean_pdf(javascript_pdf())
    assert "visible page text" in _page_text(pdf_hygiene.clean_pdf(javascript_pdf()))  # the page itself survives


def test_launch_and_uri_actions_are_gone():
    data = pdf_hygiene.clean_pdf(launch_pdf())
    cleaned = pikepdf.open(io.BytesIO(data))
    assert not _action_types(cleaned) & {"/Launch", "/URI"}
    assert "/OpenAction" not in cleaned.Root
    assert b"cmd.exe" not in data and b"attacker.example" not in data and b"evil.exe" not in data


def test_embedded_files_are_gone():
    data = pdf_hygiene.clean_pdf(attachment_pdf())
    cleaned = pikepdf.open(io.BytesIO(data))
    assert len(cleaned.attachments) == 0
    assert not _all_keys(cleaned) & {"/EmbeddedFiles", "/EF"}
    assert b"embedded-secret-payload" not in data and b"annotation-attached-payload" not in data
    assert not any(isinstance(o, pikepdf.Stream) and o.get("/Type") == pikepdf.Name.EmbeddedFile
                   for o in cleaned.objects)


def test_xmp_and_document_info_are_gone():
    source = metadata_pdf()
    assert b"Dr. Metadata Leak" in source and b"Author Leak" in source  # the crafted file carries them
    data = pdf_hygiene.clean_pdf(source)
    cleaned = pikepdf.open(io.BytesIO(data))
    assert "/Metadata" not in cleaned.Root and "/Info" not in cleaned.trailer
    for leak in (b"Dr. Metadata Leak", b"LeakyScanner", b"Author Leak", b"Producer Leak"):
        assert leak not in data


def test_huge_page_count_is_refused():
    import tests.ocr.sheetgen as sheetgen

    limits = hygiene.Limits(max_pages=50)
    assert len(pikepdf.open(io.BytesIO(pdf_hygiene.clean_pdf(sheetgen.many_page_pdf(50), limits))).pages) == 50
    with pytest.raises(hygiene.FileTooComplex):
        pdf_hygiene.clean_pdf(sheetgen.many_page_pdf(51), limits)
    with pytest.raises(hygiene.FileTooComplex):  # and with the default limit
        pdf_hygiene.clean_pdf(sheetgen.many_page_pdf(hygiene.DEFAULT_LIMITS.max_pages + 1))


def test_too_many_objects_is_refused():
    with pytest.raises(hygiene.FileTooComplex):
        pdf_hygiene.clean_pdf(pdf_bytes(), hygiene.Limits(max_objects=3))


def test_broken_xref_is_rebuilt_or_refused():
    good = pdf_bytes("xref text")
    start = good.rindex(b"xref\n")
    broken = good[:start] + b"xref\n0 6\nthis is not a cross-reference table\n" + good[good.rindex(b"trailer"):]
    data = pdf_hygiene.clean_pdf(broken)  # qpdf rebuilds the table from the objects; the rewrite is consistent
    reopened = pikepdf.open(io.BytesIO(data))
    assert reopened.get_warnings() == [] and len(reopened.pages) == 1
    assert pdf_hygiene.clean_pdf(data) == data
    with pytest.raises(hygiene.MalformedFile):  # nothing left to rebuild from
        pdf_hygiene.clean_pdf(b"%PDF-1.7\n" + bytes(range(256)) * 4 + b"\n%%EOF\n")
    with pytest.raises(hygiene.MalformedFile):
        pdf_hygiene.clean_pdf(good[: len(good) // 3])


def test_decompression_bomb_stream_is_refused():
    limits = hygiene.Limits(max_stream_bytes=8 * 1024 * 1024, max_decompressed_bytes=64 * 1024 * 1024)
    assert pdf_hygiene.clean_pdf(bomb_pdf(4 * 1024 * 1024), limits)  # within the limit: fine
    bomb = bomb_pdf(64 * 1024 * 1024)
    assert len(bomb) < 200_000
    with pytest.raises(hygiene.FileTooComplex) as refused:
        pdf_hygiene.clean_pdf(bomb, limits)
    assert refused.value.extra == {"limit": "stream-size"}
    total = hygiene.Limits(max_stream_bytes=8 * 1024 * 1024, max_decompressed_bytes=6 * 1024 * 1024)
    with pytest.raises(hygiene.FileTooComplex):
        pdf_hygiene.clean_pdf(bomb_pdf(4 * 1024 * 1024, streams=2), total)


def test_encrypted_pdf_is_refused():
    import tests.ocr.sheetgen as sheetgen

    with pytest.raises(hygiene.EncryptedFile):
        pdf_hygiene.clean_pdf(sheetgen.encrypted_pdf())
    owner_only = _save(_base(), encryption=pikepdf.Encryption(owner="owner-only", user="", R=6))
    with pytest.raises(hygiene.EncryptedFile):
        pdf_hygiene.clean_pdf(owner_only)


# -------------------------------------------------------------------------------------------------------------- images
def test_exif_gps_photo_loses_its_metadata_after_turning_upright():
    photo = gps_photo(orientation=6)
    with Image.open(io.BytesIO(photo)) as before:
        assert before.getexif().get_ifd(0x8825) and before.size == (40, 20)
    data = image_hygiene.clean_jpeg(photo)
    with Image.open(io.BytesIO(data)) as after:
        assert after.size == (20, 40)  # orientation 6 (rotate 90° clockwise) applied to the pixels
        assert dict(after.getexif()) == {} and "exif" not in after.info and "comment" not in after.info
        assert after.getpixel((15, 4))[0] > 200 and after.getpixel((4, 4))[0] < 100  # red corner: now top right
    for leak in (b"PhoneMaker", b"Phone Model X", b"Camera App", b"shot at home", b"Exif\0\0"):
        assert leak not in data


def test_upright_photo_is_cleaned_losslessly():
    photo = gps_photo(orientation=1)
    data = image_hygiene.clean_jpeg(photo)
    assert b"Exif\0\0" not in data and b"PhoneMaker" not in data
    with Image.open(io.BytesIO(photo)) as a, Image.open(io.BytesIO(data)) as b:
        assert a.size == b.size and a.tobytes() == b.tobytes()  # same pixels: no re-encoding
    assert image_hygiene.clean_jpeg(data) == data  # nothing left to remove: byte for byte


def test_png_text_exif_and_trailing_data_are_dropped():
    def chunk(kind: bytes, body: bytes) -> bytes:
        import struct

        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    clean = png_bytes(b"pixels")
    ihdr_end = 8 + 25
    exif = b"MM\0*\0\0\0\x08\0\x01\x01\x0f\0\x02\0\0\0\x06\0\0\0\x1aPhone\0"
    dirty = (clean[:ihdr_end] + chunk(b"tEXt", b"Author\0Home Address") + chunk(b"eXIf", exif)
             + chunk(b"tIME", b"\x07\xea\x0c\x07\x00\x00\x00") + clean[ihdr_end:] + b"appended zip payload")
    assert image_hygiene.clean_png(dirty) == clean
    assert image_hygiene.clean_png(clean) == clean
    bad_crc = bytearray(clean)
    bad_crc[ihdr_end - 1] ^= 0xFF
    with pytest.raises(hygiene.MalformedFile):
        image_hygiene.clean_png(bytes(bad_crc))
    with pytest.raises(hygiene.MalformedFile):
        image_hygiene.clean_png(clean[:-12])  # no IEND


def test_image_pixel_bombs_and_broken_jpegs_are_refused():
    import struct

    huge = png_bytes()[:16] + struct.pack(">II", 100_000, 100_000)
    ihdr = huge[12:29] + b"\x08\x00\x00\x00\x00"
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr[:17] + struct.pack(">I", zlib.crc32(ihdr[:17]))
    with pytest.raises(hygiene.FileTooComplex):
        image_hygiene.clean_png(bomb + png_bytes()[33:])
    with pytest.raises(hygiene.MalformedFile):
        # no frame
        image_hygiene.clean_jpeg(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9")
    photo = gps_photo(orientation=1)
    with pytest.raises(hygiene.MalformedFile):
        image_hygiene.clean_jpeg(photo[: len(photo) // 2])  # truncated: no end marker


def test_heic_is_reencoded_without_metadata():
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "HEIF", exif=exif.tobytes())
    data = image_hygiene.clean_heic(out.getvalue())
    assert b"PhoneMaker" not in data
    with Image.open(io.BytesIO(data)) as after:
        assert after.size == (32, 64) and not after.info.get("exif")


# ------------------------------------------------------------------------------------------------- through the upload
def _blob_files(vault) -> list:
    return [p for p in vault.settings.blob_dir.rglob("*") if p.is_file()]


def test_refused_uploads_are_clear_problems_and_store_nothing(client, vault):
    import tests.ocr.sheetgen as sheetgen

    register(client, username="hygiene-refused")
    headers = login(client, "hygiene-refused")
    cases = [(sheetgen.encrypted_pdf(), "encrypted-file"), (bomb_pdf(300 * 1024 * 1024), "file-too-complex"),
             (sheetgen.many_page_pdf(hygiene.DEFAULT_LIMITS.max_pages + 1), "file-too-complex"),
             (b"%PDF-1.7\n" + bytes(range(256)) * 4, "malformed-file"),
             (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9", "malformed-file")]
    for data, slug in cases:
        response = upload(client, headers, data, category="other")
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == PROBLEM + slug
    assert client.get("/v1/records", headers=headers).json()["items"] == []
    assert _blob_files(vault) == []


def test_the_sanitized_copy_is_the_record(client, vault):
    register(client, username="hygiene-stored")
    headers = login(client, "hygiene-stored")
    for sent, kind in ((javascript_pdf(), "application/pdf"), (gps_photo(), "image/jpeg")):
        record = upload(client, headers, sent, category="other").json()
        content = client.get(f"/v1/records/{record['record_id']}/content", headers=headers)
        assert content.content == stored(sent) != sent and record["content_type"] == kind
        assert record["size_bytes"] == len(content.content)
    assert len(_blob_files(vault)) == 2  # no original kept by default


def test_original_kept_encrypted_only_when_the_setting_asks(client, vault):
    from kms.stream import iter_decrypt
    from tests.helpers.scan import scan_tree
    from vault.db.models import Record
    from vault.records.uploads import original_aad, original_blob_id

    object.__setattr__(vault.settings, "keep_original_uploads", True)
    register(client, username="hygiene-keep")
    headers = login(client, "hygiene-keep")
    sent = metadata_pdf()
    record_id = upload(client, headers, sent, category="other").json()["record_id"]
    assert vault.blobs.exists(original_blob_id(record_id))
    assert client.get(f"/v1/records/{record_id}/content", headers=headers).content == stored(sent)
    vault.engine.dispose()
    assert scan_tree(vault.settings.data_dir, ["Dr. Metadata Leak", "Author Leak"]) == []  # encrypted at rest
    with vault.session() as session:
        row = session.get(Record, record_id)
        dek = vault.keys.open_data_key(row.patient_id, row.wrapped_dek)
    with vault.blobs.open(original_blob_id(record_id)) as source:
        original = b"".join(iter_decrypt(dek, source, original_aad(record_id=record_id, patient_id=row.patient_id)))
    assert original == sent
    with vault.blobs.open(original_blob_id(record_id)) as source:  # bound to its own column: not the record's blob
        from vault.records.uploads import blob_aad

        with pytest.raises(Exception):  # noqa: B017
            b"".join(iter_decrypt(dek, source, blob_aad(record_id=record_id, patient_id=row.patient_id)))
