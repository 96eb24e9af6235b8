"""Encrypted file blobs in S3-compatible object storage (SeaweedFS in tests; Ceph, COS, OSS, AWS S3 in production).

Owns placing ciphertext objects under `s3://bucket/prefix/<blob id>` and removing them. Like the local store it only
ever receives ciphertext (the records service encrypts before a byte reaches it): it never sees keys or plaintext, and
object keys are blob ids only (never a name, a title or a patient identifier).

How the promises of a blob store are kept on S3:
- Streaming with bounded memory: bytes are buffered up to one part (`part_size`, 8 MiB) and sent as a multipart upload
  part by part; a blob smaller than one part is sent with one PUT. Memory per upload is about one part.
- Invisible until committed: a multipart upload has no visible object until it is completed, so a process that dies
  mid-upload leaves no object, only an incomplete upload, which `sweep_temp` aborts once it is older than
  `stale_after` seconds (never a younger one: another process may still be sending it).
- Created once, never overwritten: the final PUT and CompleteMultipartUpload carry `If-None-Match: *`; when an object
  already holds the id the server answers 412 and `BlobExists` is raised (the incomplete upload is aborted).
- Endpoint and credentials come from the standard AWS configuration (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config and credentials); they are never settings of the vault and never
  logged. The URL carries only the bucket and the prefix.

It never reads plaintext, never lists or deletes outside its prefix, and never overwrites an object.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any, BinaryIO

from vault.blobs.store import BlobExists, _check_id

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
DEFAULT_STALE_AFTER = 6 * 3600.0


class BlobStoreUnavailable(RuntimeError):
    """The object store cannot be reached or the bucket is missing (a deployment error, shown at start-up)."""


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; the prefix may be empty. Nothing else may be in the URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("blob_url must look like s3://bucket/prefix (credentials come from the AWS configuration)")
    prefix = parts.path.strip("/")
    return parts.netloc, prefix


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _precondition_failed(exc: Exception) -> bool:
    return _error_code(exc) in ("PreconditionFailed", "412") or _status(exc) == 412


class _S3TempBlob:
    """One upload in flight: parts are sent as they fill; nothing is visible until `commit`."""

    def __init__(self, store: S3BlobStore, blob_id: str) -> None:
        self._store = store
        self._blob_id = _check_id(blob_id)
        self._key = store.key_of(blob_id)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError("this upload is already finished")
        self._buffer += data
        size = self._store.part_size
        while len(self._buffer) >= size:
            self._send_part(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _send_part(self, body: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        answer = client.upload_part(Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number,
                                    Body=body)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self, blob_id: str) -> None:
        """Make the object visible under its id, unless one already exists (then BlobExists, nothing changed)."""
        if _check_id(blob_id) != self._blob_id:
            raise ValueError("a blob is committed under the id it was created for")
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer), IfNoneMatch="*")
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                client.complete_multipart_upload(Bucket=bucket, Key=self._key, UploadId=self._upload_id,
                                                 MultipartUpload={"Parts": self._parts}, IfNoneMatch="*")
        except Exception as exc:
            self.discard()
            if _precondition_failed(exc):
                raise BlobExists("a blob with this id already exists") from None
            raise
        self._buffer = bytearray()
        self._done = True

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self._upload_id is not None:
            self._store.abort(self._key, self._upload_id)


class S3BlobStore:
    """Blobs as objects `<prefix>/<blob id>.hvb` in one bucket."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, part_size: int = DEFAULT_PART_SIZE,
                 stale_after: float = DEFAULT_STALE_AFTER) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.stale_after = stale_after

    @classmethod
    def from_url(cls, url: str, *, check: bool = True, **options: Any) -> S3BlobStore:
        """A store for `s3://bucket/prefix` with a boto3 client configured the standard AWS way; with `check`, the
        bucket must answer now (a clear start-up error instead of a failure at the first upload)."""
        import boto3
        from botocore.config import Config

        bucket, prefix = parse_url(url)
        config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)
        client = boto3.session.Session().client("s3", config=config)
        store = cls(client, bucket, prefix, **options)
        if check:
            store.check()
        return store

    def check(self) -> None:
        """Raise BlobStoreUnavailable unless the bucket answers (used at start-up and by readiness checks)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - whatever the cause (network, 403, 404), the store is unusable
            raise BlobStoreUnavailable(
                f"the blob store bucket {self.bucket!r} does not answer ({_error_code(exc) or type(exc).__name__}): "
                "check AWS_ENDPOINT_URL and the AWS credentials") from None

    def key_of(self, blob_id: str) -> str:
        name = f"{_check_id(blob_id)}.hvb"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def create_temp(self, blob_id: str | None = None) -> _S3TempBlob:
        if blob_id is None:
            raise ValueError("an S3 upload needs its blob id up front (the multipart upload is made under it)")
        return _S3TempBlob(self, blob_id)

    def open(self, blob_id: str) -> BinaryIO:
        """A streaming reader of the object (read in pieces, close when done); FileNotFoundError if absent."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key_of(blob_id))
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                raise FileNotFoundError("no such blob") from None
            raise
        return answer["Body"]

    def delete(self, blob_id: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key_of(blob_id))

    def exists(self, blob_id: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_of(blob_id))
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound") or _status(exc) == 404:
                return False
            raise
        return True

    def _committed(self) -> list[tuple[str, dt.datetime]]:
        """(id, last modified) of every committed blob under the prefix (pages through all)."""
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._list_prefix()):
            for item in page.get("Contents", []):
                name = item["Key"][len(self._list_prefix()):]
                if name.endswith(".hvb") and "/" not in name:
                    found.append((name[: -len(".hvb")], item["LastModified"]))
        return found

    def iter_ids(self) -> list[str]:
        """The ids of every committed blob under the prefix (for reconciliation and tests)."""
        return [blob_id for blob_id, _ in self._committed()]

    def committed_before(self, cutoff: float) -> list[str]:
        """Ids of the committed blobs last written before `cutoff` (a time.time() value): the orphan sweep's view."""
        limit = dt.datetime.fromtimestamp(cutoff, dt.UTC)
        return [blob_id for blob_id, modified in self._committed() if modified < limit]

    def incomplete_uploads(self) -> list[tuple[str, str, dt.datetime]]:
        """(key, upload id, initiated) of every multipart upload under the prefix that was never completed."""
        found = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._list_prefix()):
            for upload in page.get("Uploads", []) or []:
                found.append((upload["Key"], upload["UploadId"], upload["Initiated"]))
        return found

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if _error_code(exc) != "NoSuchUpload":
                raise

    def sweep_temp(self, older_than: float | None = None) -> int:
        """Abort incomplete uploads older than `older_than` seconds (default `stale_after`): the parts a crashed
        upload left behind. Younger ones are left alone, since another process may still be sending them."""
        age = self.stale_after if older_than is None else older_than
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
        count = 0
        for key, upload_id, initiated in self.incomplete_uploads():
            if initiated <= cutoff:
                self.abort(key, upload_id)
                count += 1
        return count
