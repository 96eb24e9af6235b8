"""One upload's path from plaintext chunks to an encrypted temp blob.

Owns the checks made while bytes stream in: the size limit (enforced per chunk, never after the fact), the kind sniffed
from the first bytes and compared with the declared type, the plaintext SHA-256, and the streaming encryption. No
plaintext byte is ever written anywhere; on any failure the temp blob is discarded, so nothing is left behind.
"""

from __future__ import annotations

import hashlib

from kms import envelope
from kms.stream import StreamEncryptor
from vault.errors import ContentMismatch, EmptyUpload, PayloadTooLarge, UnsupportedMediaType
from vault.records import sniff


def blob_aad(*, record_id: str, patient_id: str) -> bytes:
    """A blob is bound to its record and patient like a field is to its row."""
    return envelope.field_aad(table="records", column="blob", row_id=record_id, patient_id=patient_id)


class UploadSink:
    def __init__(self, vault, *, record_id: str, patient_id: str, declared_type: str | None, max_bytes: int) -> None:
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
        self._sha.update(chunk)
        self._temp.write(self._encryptor.update(chunk))

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
        self._temp.write(self._encryptor.finalize())

    @property
    def sha256(self) -> bytes:
        return self._sha.digest()

    def commit(self) -> None:
        self._temp.commit(self.record_id)
        self._closed = True

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._temp.discard()
            self.dek.wipe()
