"""A blob committed without its row (a process killed between the two commits of `records.create`) is swept once old
enough; a record's blob and a young orphan (maybe another process's upload between its commits) are never touched."""

from __future__ import annotations

import os
import time
import uuid

from tests.helpers import login, pdf_bytes, register, upload
from vault.records import service as records


def _plant(vault, *, age_seconds: float) -> str:
    blob_id = str(uuid.uuid4())
    path = vault.blobs.path_of(blob_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(256))
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return blob_id


def test_only_old_blobs_without_a_row_are_swept(client, vault):
    person = register(client, username="orphans")
    made = upload(client, login(client, person["username"]), pdf_bytes("KEEP"), category="exam_report",
                  content_type="application/pdf")
    assert made.status_code == 201, made.text
    record_id = made.json()["record_id"]
    old = time.time() - 2 * records.ORPHAN_MIN_AGE_SECONDS
    os.utime(vault.blobs.path_of(record_id), (old, old))  # an old record keeps its blob
    stale = _plant(vault, age_seconds=2 * records.ORPHAN_MIN_AGE_SECONDS)
    young = _plant(vault, age_seconds=5)
    assert records.sweep_orphan_blobs(vault) == 1
    assert not vault.blobs.exists(stale)
    assert vault.blobs.exists(record_id) and vault.blobs.exists(young)
    assert records.sweep_orphan_blobs(vault) == 0
    assert records.sweep_orphan_blobs(vault, min_age_seconds=0) == 1 and not vault.blobs.exists(young)
    assert vault.blobs.exists(record_id)
