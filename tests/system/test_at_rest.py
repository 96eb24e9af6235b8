"""CONF-1: nothing readable at rest, and every ciphertext is bound to its place, on both crypto suites."""

import logging
import os
import random
import shutil
import subprocess

import pytest
from sqlalchemy import create_engine, inspect, select, text, update

from tests.conftest import make_settings
from tests.helpers import login, make_id_number, pdf_bytes, png_bytes, register, stored, upload
from tests.helpers.scan import encodings, find_in_bytes, scan_tree
from vault.db.models import Patient, Record


@pytest.fixture(params=["aes", "sm"])
def settings(tmp_path, backend, request):
    """Every vault here runs on the default AES suite and on the SM suite (SM4-GCM fields and blobs, HMAC-SM3
    blind indexes): the conftest `vault` and `client` fixtures build on this one."""
    return make_settings(tmp_path, backend, request, crypto_suite=request.param)


_HANZI = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张孔曹严华金魏陶姜"


def _unique_name() -> str:
    return "".join(random.choice(_HANZI) for _ in range(4)) + "测试"


def test_scanner_finds_what_it_should(tmp_path):
    secret = "130503670401001"
    for name, pattern in encodings(secret).items():
        (tmp_path / f"{name}.bin").write_bytes(b"xx" + pattern + b"yy")
    assert len(scan_tree(tmp_path, [secret])) >= len(encodings(secret))


def _pg_dump_everything(vault) -> bytes:
    """Every row of every table in the data and key schemas, plus pg_dump's view of them when available."""
    chunks = []
    for url, schema in ((vault.settings.database_url, None), (vault.settings.keystore_url,
                                                              vault.settings.keystore_schema)):
        engine = create_engine(url)
        with engine.connect() as conn:
            schema = schema or conn.execute(text("SELECT current_schema()")).scalar()
            for table in inspect(conn).get_table_names(schema=schema):
                for row in conn.execute(text(f'SELECT * FROM "{schema}"."{table}"')):
                    for value in row:
                        chunks.append(bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode())
            if shutil.which("pg_dump"):
                dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-n", schema],
                                      capture_output=True, check=True)
                chunks.append(dump.stdout)
        engine.dispose()
    return b"\n".join(chunks)


def test_no_plaintext_anywhere_at_rest(client, vault, backend, caplog):
    log_file = vault.settings.data_dir / "test-run.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        name = _unique_name()
        id_number = make_id_number(region="130503", birth="19670401")
        phone = "139" + f"{random.randint(0, 99_999_999):08d}"
        title = "机密化验单" + os.urandom(3).hex()
        file_marker = "PHI-MARKER-" + os.urandom(6).hex()
        filename = f"secret-{os.urandom(3).hex()}.pdf"
        register(client, username="scanme", real_name=name, id_number=id_number, phone=phone)
        headers = login(client, "scanme")
        content = pdf_bytes(file_marker) + b"\n% " + file_marker.encode() * 20
        record = upload(client, headers, content, title=title, filename=filename)
        assert record.status_code == 201
        record_id = record.json()["record_id"]
        assert client.get(f"/v1/records/{record_id}/content", headers=headers).content == stored(content)
        assert client.get("/v1/patients/me", headers=headers).json()["real_name"] == name
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    secrets = [name, id_number, phone, title, file_marker, filename, id_number[6:14] + id_number[14:17]]
    log_file.write_text(log_file.read_text() + "\n".join(r.getMessage() for r in caplog.records))
    # Scan while the WAL is live, then again after the last connection checkpointed it into the main file.
    if backend == "sqlite":
        assert any(vault.settings.data_dir.rglob("*-wal"))
    assert scan_tree(vault.settings.data_dir, secrets) == []
    vault.engine.dispose()
    assert scan_tree(vault.settings.data_dir, secrets) == []
    if backend == "postgres":
        assert find_in_bytes(_pg_dump_everything(vault), secrets) == []


def _two_patients_with_records(client):
    a = register(client, username="patient-a", real_name="甲某某")
    b = register(client, username="patient-b", real_name="乙某某")
    ha, hb = login(client, "patient-a"), login(client, "patient-b")
    ra = upload(client, ha, png_bytes(b"a"), title="title-a").json()["record_id"]
    rb = upload(client, hb, png_bytes(b"b"), title="title-b").json()["record_id"]
    return a, b, ha, hb, ra, rb


def _integrity(response):
    assert response.status_code == 500
    assert response.json()["type"].endswith(":integrity-failure")
    return response


def test_ciphertext_moved_to_another_row_column_or_patient_fails(client, vault):
    a, b, ha, hb, ra, rb = _two_patients_with_records(client)
    with vault.session() as session:
        pa, pb = session.get(Patient, a["patient_id"]), session.get(Patient, b["patient_id"])
        # Another patient's name ciphertext in B's row.
        session.execute(update(Patient).where(Patient.id == pb.id).values(real_name_enc=pa.real_name_enc))
        session.commit()
    _integrity(client.get("/v1/patients/me", headers=hb))
    with vault.session() as session:
        pb = session.get(Patient, b["patient_id"])
        # Same row, other column: the phone ciphertext where the name belongs.
        session.execute(update(Patient).where(Patient.id == pb.id).values(real_name_enc=pb.phone_enc))
        session.commit()
    _integrity(client.get("/v1/patients/me", headers=hb))
    with vault.session() as session:
        rec_a = session.get(Record, ra)
        # Another record's title (same patient's DEK is not the issue: the AAD binds the row).
        session.execute(update(Record).where(Record.id == rb).values(title_enc=rec_a.title_enc))
        session.commit()
    _integrity(client.get(f"/v1/records/{rb}", headers=hb))
    # Patient A's wrapped record DEK moved onto patient B's record.
    with vault.session() as session:
        session.execute(update(Record).where(Record.id == rb).values(
            wrapped_dek=session.get(Record, ra).wrapped_dek, title_enc=None))
        session.commit()
    _integrity(client.get(f"/v1/records/{rb}", headers=hb))
    # A's own data is untouched.
    assert client.get(f"/v1/records/{ra}", headers=ha).json()["title"] == "title-a"


def test_a_flipped_bit_in_a_stored_field_fails(client, vault):
    patient = register(client, username="flip")
    headers = login(client, "flip")
    with vault.session() as session:
        original = session.get(Patient, patient["patient_id"]).real_name_enc
    for position in (0, 5, 30, len(original) // 2, len(original) - 1):
        tampered = bytearray(original)
        tampered[position] ^= 0x01
        with vault.session() as session:
            session.execute(update(Patient).where(Patient.id == patient["patient_id"])
                            .values(real_name_enc=bytes(tampered)))
            session.commit()
        _integrity(client.get("/v1/patients/me", headers=headers))


def _blob_path(vault, record_id):
    return vault.blobs.path_of(record_id)


def test_a_tampered_or_truncated_blob_never_downloads_silently(client, vault):
    register(client, username="blobby")
    headers = login(client, "blobby")
    data = png_bytes(os.urandom(700_000))  # pixel data: stored as sent (the hygiene pass keeps pixels)
    record_id = upload(client, headers, data).json()["record_id"]
    path = _blob_path(vault, record_id)
    original = path.read_bytes()

    def attempt() -> bytes | None:
        try:
            response = client.get(f"/v1/records/{record_id}/content", headers=headers)
        except Exception:
            return None
        return response.content if response.status_code == 200 else None

    for mutate in (
        lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],               # flipped bit in the first segment
        lambda b: b[:-10] + bytes([b[-10] ^ 0x80]) + b[-9:],             # flipped bit in the last segment
        lambda b: b[: len(b) // 2],                                       # truncated
        lambda b: b + b"\0" * 16,                                         # trailing bytes
    ):
        path.write_bytes(mutate(original))
        assert attempt() != data
    path.write_bytes(original)
    assert attempt() == data


def test_blind_index_finds_a_patient_without_decrypting(client, vault, monkeypatch):
    from kms import envelope
    from vault.patients import service as patients

    target = register(client, username="findme", id_number=make_id_number(birth="19800101"),
                      phone="13712345678")
    register(client, username="other")
    calls = []
    original = envelope.decrypt

    def counting_decrypt(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(envelope, "decrypt", counting_decrypt)
    with vault.session() as session:
        assert patients.find_ids(session, vault, id_number=target["id_number"].lower()) == [target["patient_id"]]
        assert patients.find_ids(session, vault, phone="+86 137-1234-5678") == [target["patient_id"]]
        assert patients.find_ids(session, vault, id_number=make_id_number(birth="19800102")) == []
        raw = session.execute(select(Patient.id_number_bidx)).scalars().all()
    assert calls == []
    assert all(len(value) == 16 for value in raw)
