"""Where encrypted file blobs live.

Owns placing ciphertext bytes on storage and removing them. A BlobStore only ever receives ciphertext (kms encrypts
before a byte reaches it); it never sees keys or plaintext. Writes go to a temporary name and become visible only by
`commit`, so a crash mid-upload leaves at most a temp file that `sweep_temp` removes at the next start (a crash between
a blob's commit and its row's leaves an orphan: vault.records.service.sweep_orphan_blobs).
`open_store` picks the store a deployment names: this local directory (the embedded default) or S3-compatible object
storage (`vault.blobs.s3`, for `blob_url = s3://bucket/prefix`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Protocol


class BlobExists(FileExistsError):
    """A blob with this id is already stored: blobs are created once and never overwritten."""


class TempBlob(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self, blob_id: str) -> None: ...
    def discard(self) -> None: ...


class BlobStore(Protocol):
    def create_temp(self, blob_id: str | None = None) -> TempBlob: ...
    def open(self, blob_id: str) -> BinaryIO: ...
    def delete(self, blob_id: str) -> None: ...
    def exists(self, blob_id: str) -> bool: ...
    def sweep_temp(self) -> int: ...
    def check(self) -> None: ...
    def committed_before(self, cutoff: float) -> list[str]: ...


def _check_id(blob_id: str) -> str:
    if not blob_id or not all(c in "0123456789abcdef-" for c in blob_id) or len(blob_id) > 64:
        raise ValueError("invalid blob id")
    return blob_id


class _LocalTempBlob:
    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._path = store.tmp_dir / f"{secrets.token_hex(16)}.part"
        self._file = open(self._path, "xb")
        self._done = False

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self, blob_id: str) -> None:
        """Make the blob durable and visible under its final name."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path_of(blob_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, final)
        self._done = True

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        self._path.unlink(missing_ok=True)


class LocalBlobStore:
    """Blobs as files under one directory, fanned out by id prefix."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_of(self, blob_id: str) -> Path:
        blob_id = _check_id(blob_id)
        return self.root / blob_id[:2] / f"{blob_id}.hvb"

    def create_temp(self, blob_id: str | None = None) -> _LocalTempBlob:
        """A temp file for a new blob (`blob_id`, when known up front, is checked here; the name is given at commit)."""
        if blob_id is not None:
            _check_id(blob_id)
        return _LocalTempBlob(self)

    def open(self, blob_id: str) -> BinaryIO:
        return open(self.path_of(blob_id), "rb")

    def delete(self, blob_id: str) -> None:
        self.path_of(blob_id).unlink(missing_ok=True)

    def exists(self, blob_id: str) -> bool:
        return self.path_of(blob_id).exists()

    def check(self) -> None:
        """Raise OSError unless the directory is there and writable (readiness)."""
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise OSError("the blob directory is missing or not writable")
    def committed_before(self, cutoff: float) -> list[str]:
        """Ids of the committed blobs last written before `cutoff` (a time.time() value)."""
        found = []
        for path in self.root.glob("??/*.hvb"):
            try:
                if path.stat().st_mtime < cutoff:
                    found.append(path.stem)
            except FileNotFoundError:
                continue  # deleted meanwhile
        return found

    def sweep_temp(self) -> int:
        """Remove temp files left by a crashed upload (RIP-1)."""
        count = 0
        for leftover in self.tmp_dir.glob("*.part"):
            leftover.unlink(missing_ok=True)
            count += 1
        return count


def open_store(*, url: str | None, local_dir: Path) -> BlobStore:
    """The configured store: `local_dir` when no URL is set, else the object store the URL names."""
    if not url:
        return LocalBlobStore(local_dir)
    from vault.blobs.s3 import S3BlobStore

    return S3BlobStore.from_url(url)
