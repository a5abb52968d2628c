"""ArtifactStore: where uploads and job artifacts live (a local directory or an S3-compatible bucket).

Keys are ``/``-separated relative paths: ``uploads/models/<sha256>``, ``uploads/calibrations/<sha256>``,
``jobs/<job id>/<artifact name>``. Uploads are streamed into a local staging file while their sha256
is computed (``UploadWriter``), checked, and only then committed under their content address, so the
same bytes are stored once and a rejected upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from worker.core.settings import Settings
from worker.errors import PayloadTooLargeError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class UploadWriter:
    """A staging file that hashes and counts what is written and refuses more than ``limit`` bytes."""

    def __init__(self, staging_dir: Path, limit: int, what: str = "upload") -> None:
        staging_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=staging_dir)
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.what = what

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.discard()
            raise PayloadTooLargeError(
                f"{self.what} is larger than the limit of {self.limit} bytes", limit=self.limit
            )
        self._hash.update(data)
        self._fh.write(data)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class ArtifactStore(ABC):
    """Blob storage with a staging area for uploads."""

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir

    def new_upload(self, limit: int, what: str = "upload") -> UploadWriter:
        return UploadWriter(self.staging_dir, limit, what)

    def commit_upload(self, writer: UploadWriter, key: str) -> None:
        """Store a finished upload under ``key`` (a no-op beyond cleanup if it is already there)."""
        writer.close()
        try:
            if not self.exists(key):
                self._commit_file(writer.path, key)
        finally:
            writer.discard()

    def _commit_file(self, path: Path, key: str) -> None:
        self.put_file(key, path)

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def fetch(self, key: str, dest: Path) -> None:
        """Copy ``key`` to the local file ``dest``; raises ``KeyError`` when missing."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int | None: ...

    @abstractmethod
    def iter_bytes(self, key: str) -> Iterator[bytes]:
        """Stream a blob in chunks; raises ``KeyError`` when missing."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""

    def local_path(self, key: str) -> Path | None:
        """A local file holding ``key``, when the store is a directory."""
        return None

    def ping(self) -> None:
        """Raise if the store cannot be reached (the staging area must be writable)."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class LocalStore(ArtifactStore):
    """A directory on a local or shared file system."""

    def __init__(self, root: Path, staging_dir: Path | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # Staging inside the root keeps the final rename atomic (same file system).
        super().__init__(staging_dir or self.root / ".staging")

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def _commit_file(self, path: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
        except OSError:  # staging on another file system
            self.put_file(key, path)

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def fetch(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise KeyError(key)
        shutil.copyfile(src, dest)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        p = self._path(key)
        return p.stat().st_size if p.is_file() else None

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        p = self._path(key)
        if not p.is_file():
            raise KeyError(key)

        def gen() -> Iterator[bytes]:
            with p.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

        return gen()

    def delete_prefix(self, prefix: str) -> int:
        p = self._path(prefix.rstrip("/"))
        if p.is_file():
            p.unlink()
            return 1
        if not p.is_dir():
            return 0
        n = sum(1 for f in p.rglob("*") if f.is_file())
        shutil.rmtree(p, ignore_errors=True)
        return n

    def local_path(self, key: str) -> Path | None:
        p = self._path(key)
        return p if p.is_file() else None

    def ping(self) -> None:
        super().ping()
        if not self.root.is_dir():
            raise OSError(f"artifact directory {self.root} is missing")


class S3Store(ArtifactStore):
    """An S3-compatible bucket (AWS, MinIO, ...). Credentials come from the usual AWS variables."""

    def __init__(
        self, bucket: str, prefix: str, *, endpoint_url: str | None, region: str, staging_dir: Path
    ) -> None:
        import boto3  # lazy: only S3 deployments pay for it

        super().__init__(staging_dir)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def _key(self, key: str) -> str:
        return self.prefix + _safe_key(key)

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def fetch(self, key: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._key(key), str(dest))
        except ClientError as e:
            if _is_missing(e):
                raise KeyError(key) from e
            raise

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if _is_missing(e):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return int(head["ContentLength"]) if head else None

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if _is_missing(e):
                raise KeyError(key) from e
            raise
        return iter(obj["Body"].iter_chunks(CHUNK))

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objs, "Quiet": True})
                n += len(objs)
        return n

    def ping(self) -> None:
        super().ping()
        self.client.head_bucket(Bucket=self.bucket)


def _is_missing(e: Any) -> bool:
    code = str(e.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def store_from_settings(settings: Settings) -> ArtifactStore:
    """Build the store that ``settings.storage_url`` names."""
    url = settings.storage_url
    parsed = urlparse(url)
    staging = settings.tmp_dir or Path(tempfile.gettempdir()) / "gancompress-staging"
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage_url {url!r} names no bucket")
        return S3Store(
            parsed.netloc,
            parsed.path,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            staging_dir=staging,
        )
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path), settings.tmp_dir)
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # a path (or a Windows drive)
        return LocalStore(Path(url), settings.tmp_dir)
    raise ValueError(f"unsupported storage_url scheme {parsed.scheme!r}; use a path, file:// or s3://")
