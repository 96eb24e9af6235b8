"""S3-compatible blob storage on a real server (SeaweedFS started by the tests; tests/helpers/seaweed.py).

Issue 17 item 1: objects are the same streaming-AEAD ciphertext as on disk, uploads stream as multipart with bounded
memory, objects are created once (If-None-Match: *) and never overwritten, a crash mid-upload leaves no visible
object, and the sweeper aborts stale incomplete uploads (never fresh ones).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import uuid

import pytest
from fastapi.testclient import TestClient

from tests.conftest import CHEAP_KDF, PASSPHRASE, make_settings
from tests.helpers import blobs, login, pdf_bytes, register, stored, upload
from vault.blobs.s3 import BlobStoreUnavailable, MiB, S3BlobStore, parse_url
from vault.blobs.store import BlobExists
from vault.runtime import init_data_dir, open_vault
from vault.settings import Settings


@pytest.fixture
def store(seaweed) -> S3BlobStore:
    return S3BlobStore.from_url(seaweed.blob_url(), part_size=5 * MiB)


@pytest.fixture
def s3_vault(seaweed, tmp_path, monkeypatch):
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    settings = make_settings(tmp_path, "sqlite", blob_url=seaweed.blob_url())
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    instance = open_vault(settings, PASSPHRASE)
    yield instance
    instance.close()


def _blob_id() -> str:
    return str(uuid.uuid4())


def test_an_upload_is_ciphertext_in_the_bucket_and_reads_back_exactly(s3_vault):
    assert isinstance(s3_vault.blobs, S3BlobStore)
    marker = "PLAINTEXT-MARKER-glucose-5.6"
    data = pdf_bytes(marker) + (marker.encode() * 40_000)  # ~1.1 MB: several AEAD segments, one PUT
    with TestClient(__import__("api.app", fromlist=["create_app"]).create_app(s3_vault)) as client:
        register(client, username="s3user")
        headers = login(client, "s3user")
        created = upload(client, headers, data, title="血常规", content_type="application/pdf")
        assert created.status_code == 201, created.text
        record_id = created.json()["record_id"]
        kept = stored(data)  # the upload's sanitized copy is the record (issue 16)
        raw = blobs.raw(s3_vault.blobs, record_id)  # straight from the bucket, not through the vault
        assert marker.encode() not in raw and b"%PDF" not in raw and "血常规".encode() not in raw
        assert len(raw) > len(kept)  # header and tags: the same sealed stream as on disk
        assert blobs.stored(s3_vault.blobs) == [record_id]
        assert s3_vault.blobs.key_of(record_id).endswith(f"{record_id}.hvb")  # the key is an id, nothing else
        content = client.get(f"/v1/records/{record_id}/content", headers=headers)
        assert content.status_code == 200 and content.content == kept
    assert blobs.leftovers(s3_vault.blobs) == []


@pytest.mark.parametrize("size", [1000, 6 * MiB], ids=["single-put", "multipart"])
def test_an_object_is_created_once_and_never_overwritten(store, size):
    blob_id = _blob_id()
    first = os.urandom(size)
    temp = store.create_temp(blob_id)
    temp.write(first)
    temp.commit(blob_id)
    second = store.create_temp(blob_id)
    second.write(os.urandom(size))
    with pytest.raises(BlobExists):
        second.commit(blob_id)
    assert blobs.raw(store, blob_id) == first
    assert blobs.leftovers(store) == []  # the refused multipart upload was aborted, not left behind


def test_a_discarded_upload_leaves_nothing(store):
    blob_id = _blob_id()
    temp = store.create_temp(blob_id)
    temp.write(os.urandom(6 * MiB))  # one part already sent
    assert len(blobs.leftovers(store)) == 1
    temp.discard()
    assert blobs.leftovers(store) == [] and not store.exists(blob_id)


def test_a_commit_under_another_id_or_without_an_id_is_refused(store):
    with pytest.raises(ValueError, match="id up front"):
        store.create_temp()
    temp = store.create_temp(_blob_id())
    temp.write(b"x")
    with pytest.raises(ValueError, match="id it was created for"):
        temp.commit(_blob_id())
    with pytest.raises(ValueError, match="invalid blob id"):
        store.create_temp("../escape")


@pytest.mark.slow
def test_a_200_mb_upload_and_download_stream_with_bounded_memory(store):
    blob_id = _blob_id()
    piece = os.urandom(MiB)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        temp = store.create_temp(blob_id)
        for i in range(200):
            chunk = piece[i:] + piece[:i]
            digest.update(chunk)
            temp.write(chunk)
        temp.commit(blob_id)
        _current, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        back = hashlib.sha256()
        total = 0
        with store.open(blob_id) as source:
            while chunk := source.read(MiB):
                back.update(chunk)
                total += len(chunk)
        _current, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 200 * MiB and back.digest() == digest.digest()
    # One 5 MiB part in flight (plus its copy for sending), never the 200 MB.
    assert upload_peak < 32 * MiB, upload_peak
    assert download_peak < 16 * MiB, download_peak


CRASHING_UPLOAD = textwrap.dedent("""
    import os, sys, time
    from vault.blobs.s3 import MiB, S3BlobStore
    store = S3BlobStore.from_url(sys.argv[1], part_size=5 * MiB)
    temp = store.create_temp(sys.argv[2])
    temp.write(os.urandom(12 * MiB))  # two parts sent, the rest buffered
    print("sent", flush=True)
    time.sleep(120)
""")


def test_a_crash_mid_upload_leaves_no_object_and_the_sweeper_aborts_it(seaweed, tmp_path):
    url = seaweed.blob_url()
    store = S3BlobStore.from_url(url)
    blob_id = _blob_id()
    env = {**os.environ, **seaweed.env(), "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, "-c", CRASHING_UPLOAD, url, blob_id], stdout=subprocess.PIPE,
                             env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "sent"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert not store.exists(blob_id) and blobs.stored(store) == []
    with pytest.raises(FileNotFoundError):
        store.open(blob_id)
    assert blobs.leftovers(store) == [store.key_of(blob_id)]
    assert store.sweep_temp() == 0  # fresh: another process might still be sending it
    assert blobs.leftovers(store) == [store.key_of(blob_id)]
    assert store.sweep_temp(older_than=0) == 1
    assert blobs.leftovers(store) == []


def test_missing_objects_and_bad_configuration_are_clear(store, seaweed, tmp_path, monkeypatch):
    blob_id = _blob_id()
    assert not store.exists(blob_id)
    with pytest.raises(FileNotFoundError):
        store.open(blob_id)
    store.delete(blob_id)  # deleting what is gone is not an error (erasure may run twice)
    for bad in ("s3://", "http://bucket/x", "s3://key:secret@bucket/x", "s3://bucket/x?endpoint=y"):
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            parse_url(bad)
    with pytest.raises(ValueError, match="blob_url"):
        Settings.load(tmp_path / "v", blob_url="file:///tmp/x")
    with pytest.raises(BlobStoreUnavailable, match="does not answer") as caught:
        S3BlobStore.from_url("s3://no-such-bucket-hv/x")
    assert "secret" not in str(caught.value).lower()
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    monkeypatch.setenv("HEALTHVAULT_BLOB_URL", "s3://no-such-bucket-hv/x")
    settings = Settings.load(tmp_path / "var", password_time_cost=1, password_memory_kib=1024,
                             password_parallelism=1)
    assert settings.blob_url == "s3://no-such-bucket-hv/x"
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    with pytest.raises(BlobStoreUnavailable):
        open_vault(settings, PASSPHRASE)
