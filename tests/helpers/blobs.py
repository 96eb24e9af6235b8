"""Test helper: what a vault's blob store holds, whichever store it is (local directory or S3), read from the
storage itself rather than through the vault (pass `vault.blobs`), plus a backup and restore of the blobs as an
operator would take them."""

from __future__ import annotations

import shutil
from pathlib import Path

from vault.blobs.store import LocalBlobStore


def stored(store) -> list[str]:
    """Every committed blob (ids for S3, file paths for a local directory), sorted."""
    if isinstance(store, LocalBlobStore):
        return sorted(str(p) for p in store.root.rglob("*.hvb"))
    return sorted(store.iter_ids())


def leftovers(store) -> list[str]:
    """Everything an unfinished upload left: temp files, or incomplete multipart uploads."""
    if isinstance(store, LocalBlobStore):
        return sorted(str(p) for p in store.root.rglob("*") if p.is_file() and p.suffix != ".hvb")
    return sorted(key for key, _upload, _at in store.incomplete_uploads())


def raw(store, blob_id: str) -> bytes:
    """The stored bytes of one blob, straight from the storage (no decryption)."""
    if isinstance(store, LocalBlobStore):
        return store.path_of(blob_id).read_bytes()
    return store.client.get_object(Bucket=store.bucket, Key=store.key_of(blob_id))["Body"].read()


def backup(store, dest: Path) -> None:
    """Copy every blob into `dest` (a directory that does not exist yet)."""
    if isinstance(store, LocalBlobStore):
        shutil.copytree(store.root, dest)
        return
    dest.mkdir()
    for blob_id in store.iter_ids():
        (dest / blob_id).write_bytes(raw(store, blob_id))


def restore(store, source: Path) -> None:
    """Replace every blob of the store by the backup in `source` (every vault using it must be closed)."""
    if isinstance(store, LocalBlobStore):
        shutil.rmtree(store.root)
        shutil.copytree(source, store.root)
        return
    for blob_id in store.iter_ids():
        store.delete(blob_id)
    for path in source.iterdir():
        store.client.put_object(Bucket=store.bucket, Key=store.key_of(path.name), Body=path.read_bytes())
