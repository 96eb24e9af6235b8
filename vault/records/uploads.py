"""One upload's path from plaintext chunks to an encrypted temp blob.

Owns the checks made while bytes stream in: the size limit (enforced per chunk, never after the fact), the kind sniffed
from the first bytes and compared with the declared type, the hygiene pass (vault/records/hygiene.py: the sanitized
copy is what is stored, and what `size`/`sha256` describe), and the streaming encryption. The received bytes are
encrypted as they arrive into a spool (an anonymous temporary file, unlinked at once: nothing survives a crash); the
hygiene pass reads the spool back through kms.stream_reader.RandomAccessReader and its output is encrypted into the temp
blob, so memory stays bounded whatever the size. No plaintext byte is ever written anywhere; on any failure the spool
and temp blobs are discarded, so nothing is left behind. The original upload is kept (the spool's ciphertext, under
the record's DEK with its own associated data) only when the deployment sets `keep_original_uploads`.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from typing import TYPE_CHECKING

from kms import envelope
from kms.stream import StreamEncryptor
from kms.stream_reader import RandomAccessReader
from vault.errors import ContentMismatch, EmptyUpload, PayloadTooLarge, UnsupportedMediaType
from vault.records import hygiene, sniff

if TYPE_CHECKING:
    from vault.runtime import Vault


def blob_aad(*, record_id: str, patient_id: str) -> bytes:
    """A blob is bound to its record and patient like a field is to its row."""
    return envelope.field_aad(table="records", column="blob", row_id=record_id, patient_id=patient_id)


def original_aad(*, record_id: str, patient_id: str) -> bytes:
    return envelope.field_aad(table="records", column="original_blob", row_id=record_id, patient_id=patient_id)


def original_blob_id(record_id: str) -> str:
    """Where the untouched upload is kept when `keep_original_uploads` is set (hex and dashes, like a record id)."""
    return f"{record_id}-0"


class UploadSink:
    def __init__(self, vault: Vault, *, record_id: str, patient_id: str, declared_type: str | None, max_bytes: int,
                 keep_original: bool = False) -> None:
        self.record_id = record_id
        self.patient_id = patient_id
        self.declared_type = declared_type
        self.max_bytes = max_bytes
        self.size = 0
        self.content_type: str | None = None
        self.dek, self.wrapped_dek = vault.keys.new_data_key(patient_id)
        self._sha = hashlib.sha256()
        self._head = b""
        self._encryptor = StreamEncryptor(self.dek, blob_aad(record_id=record_id, patient_id=patient_id))
        self._temp = vault.blobs.create_temp(record_id)
        self._spool = tempfile.TemporaryFile(dir=getattr(vault.blobs, "tmp_dir", None))
        self._spool_encryptor = StreamEncryptor(self.dek, original_aad(record_id=record_id, patient_id=patient_id))
        self._blobs = vault.blobs
        self._original = vault.blobs.create_temp(original_blob_id(record_id)) if keep_original else None
        self._sealed = False
        self._closed = False

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"Files may be at most {self.max_bytes} bytes")
        if self.content_type is None and len(self._head) < sniff.SNIFF_BYTES:
            self._head += chunk[: sniff.SNIFF_BYTES - len(self._head)]
            if len(self._head) >= sniff.SNIFF_BYTES:
                self._classify()
        self._spool.write(self._spool_encryptor.update(chunk))

    def _classify(self) -> None:
        kind = sniff.sniff(self._head)
        if kind is None:
            raise UnsupportedMediaType("Only PDF, JPEG, PNG and HEIC files are accepted")
        if not sniff.declared_matches(self.declared_type, kind):
            raise ContentMismatch("The file's bytes are not of the declared type")
        self.content_type = kind

    def finish(self) -> None:
        """All bytes received: final checks and the last segment."""
        if self.size == 0:
            raise EmptyUpload()
        if self.content_type is None:
            self._classify()
        self._spool.write(self._spool_encryptor.finalize())
        self._spool.flush()

    def seal(self) -> None:
        """The hygiene pass and the encryption of the stored copy: CPU work, run off the event loop (by the service,
        in the request's worker thread). Raises a hygiene.UnsafeFile (422) and leaves nothing behind on refusal."""
        if self._sealed:
            return
        self._sealed = True
        if self.content_type is None:  # finish() classifies every upload
            raise UnsupportedMediaType("Only PDF, JPEG, PNG and HEIC files are accepted")
        self._spool.seek(0)
        reader = io.BufferedReader(RandomAccessReader(
            self.dek, self._spool, original_aad(record_id=self.record_id, patient_id=self.patient_id)), 256 * 1024)
        self.size = 0

        def emit(piece: bytes) -> None:
            self.size += len(piece)
            self._sha.update(piece)
            self._temp.write(self._encryptor.update(piece))

        hygiene.clean_stream(reader, emit, kind=self.content_type)
        self._temp.write(self._encryptor.finalize())
        if self._original is not None:
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, self._original, 1024 * 1024)
        self._spool.close()

    @property
    def sha256(self) -> bytes:
        return self._sha.digest()

    def commit(self) -> None:
        self.seal()
        if self._original is not None:
            self._original.commit(original_blob_id(self.record_id))
        self._temp.commit(self.record_id)
        self._closed = True

    def discard_committed(self) -> None:
        """Undo `commit` when the row could not be written."""
        self._blobs.delete(self.record_id)
        if self._original is not None:
            self._blobs.delete(original_blob_id(self.record_id))

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._temp.discard()
            if self._original is not None:
                self._original.discard()
            self._spool.close()
            self.dek.wipe()
