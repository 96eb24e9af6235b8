"""Field encryption bound to its place: table, column, row and patient.

Owns the mapping from a column value to a kms field ciphertext. The associated data makes a ciphertext copied into any
other row, column or patient fail to decrypt. A decryption failure surfaces as IntegrityFailure and never reveals why.
"""

from __future__ import annotations

from kms import CryptoError, DataKey, envelope

from vault.errors import IntegrityFailure


def seal(key: DataKey, value: str | bytes, *, table: str, column: str, row_id: str, patient_id: str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    aad = envelope.field_aad(table=table, column=column, row_id=row_id, patient_id=patient_id)
    return envelope.encrypt(key, data, aad)


def open_bytes(key: DataKey, blob: bytes, *, table: str, column: str, row_id: str, patient_id: str) -> bytes:
    aad = envelope.field_aad(table=table, column=column, row_id=row_id, patient_id=patient_id)
    try:
        return envelope.decrypt(key, blob, aad)
    except CryptoError as exc:
        raise IntegrityFailure() from exc


def open_text(key: DataKey, blob: bytes, **where: str) -> str:
    return open_bytes(key, blob, **where).decode()
