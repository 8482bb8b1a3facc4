"""Artifact storage (checkpoints, eigenvectors, uploaded datasets) behind one small interface.

Keys are built by ``key_for_*`` from database ids and fixed words only, never from request text, and
every key is checked again before it touches a path or an object name, so a traversal attempt cannot
leave the root.

Two backends: a local directory (the embedded default, or a volume shared by the machines) and an
S3-compatible bucket (AWS S3, MinIO, ...), chosen by ``SADDLE_ARTIFACTS_URL``. With S3, workers on
different machines share nothing but Postgres, Redis and the bucket: a job whose worker died resumes
on another machine from the checkpoint in the bucket. Both backends make a write atomic for readers:
a reader sees the old bytes or the new bytes of a key, never a part (rename on disk; an S3 PUT only
becomes visible once complete).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from models.settings import Settings, get_settings

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


class ArtifactKeyError(ValueError):
    pass


def check_key(key: str) -> str:
    parts = key.split("/")
    if not parts or any(not _SEGMENT.match(p) or ".." in p for p in parts):
        raise ArtifactKeyError(f"invalid artifact key {key!r}")
    return key


def _hex_id(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ArtifactKeyError(f"not an id: {value!r}")
    return value


def key_for_checkpoint(job_id: str, kind: str, epoch: int) -> str:
    if kind not in ("periodic", "best", "last"):
        raise ArtifactKeyError(f"unknown checkpoint kind {kind!r}")
    return f"jobs/{_hex_id(job_id)}/checkpoints/{kind}-{int(epoch):06d}.pt"


def key_for_escape_direction(job_id: str, spectrum_id: int) -> str:
    return f"jobs/{_hex_id(job_id)}/spectra/escape-{int(spectrum_id)}.pt"


# An upload's stored file by its format; images are stored decoded, as an NPZ of uint8 arrays.
_DATASET_FILES = {"csv": "data.csv", "npz": "data.npz", "images": "images.npz"}


def key_for_dataset(dataset_id: str, fmt: str) -> str:
    if fmt not in _DATASET_FILES:
        raise ArtifactKeyError(f"unknown dataset format {fmt!r}")
    return f"datasets/{_hex_id(dataset_id)}/{_DATASET_FILES[fmt]}"


class ArtifactStore(Protocol):
    """What every backend offers; ``get_bytes`` of a missing key raises FileNotFoundError."""

    def put_bytes(self, key: str, data: bytes) -> int: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


class LocalArtifactStore:
    """A directory on a shared or local disk. Writes are atomic: temp file in the same folder, rename."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise ArtifactKeyError(f"artifact key {key!r} leaves the store")
        return path

    def put_bytes(self, key: str, data: bytes) -> int:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(data)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


class S3ArtifactStore:
    """Objects in an S3-compatible bucket, named ``<prefix>/<key>``.

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a
    profile, an instance role); ``endpoint_url`` points at MinIO or another S3-speaking server. One PUT
    per object (up to 5 GB, far above the parameter budget's checkpoints): S3 makes it visible whole
    or not at all, so no temp-and-rename dance is needed.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = check_key(prefix) + "/" if prefix else ""
        self.client = client or _s3_client(endpoint_url, region)

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_bytes(self, key: str, data: bytes) -> int:
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        return len(data)

    def get_bytes(self, key: str) -> bytes:
        name = self.object_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"s3://{self.bucket}/{name}") from None
        with response["Body"] as body:
            return body.read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        # Deleting a missing object succeeds in S3, like unlink(missing_ok=True).
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))


def _s3_client(endpoint_url: str | None, region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=120,
        retries={"max_attempts": 8, "mode": "standard"},  # throttling, 5xx and dropped connections
        # MinIO and other self-hosted servers are addressed by path (http://minio:9000/bucket/key).
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # A session of our own: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def store_from_settings(settings: Settings) -> ArtifactStore:
    """``SADDLE_ARTIFACTS_URL``: empty (the folder ``SADDLE_ARTIFACTS``), ``file:///path`` or
    ``s3://bucket[/prefix]`` (with ``SADDLE_S3_ENDPOINT_URL`` for MinIO and the like)."""
    url = settings.artifacts_url.strip()
    if not url:
        return LocalArtifactStore(settings.artifacts)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalArtifactStore(Path(parts.path))
    if parts.scheme == "s3":
        return S3ArtifactStore(
            parts.netloc, parts.path, endpoint_url=settings.s3_endpoint_url or None, region=settings.s3_region
        )
    raise ValueError(f"SADDLE_ARTIFACTS_URL must be empty, file:///path or s3://bucket/prefix, not {url!r}")


# One store per process and configuration: a boto3 client holds a connection pool, which a forked
# Celery child must not share with its parent (the same rule as the database engines).
_stores: dict[tuple[int, str, str, str | None, str | None], ArtifactStore] = {}
_stores_lock = threading.Lock()


def get_store() -> ArtifactStore:
    settings = get_settings()
    key = (
        os.getpid(),
        settings.artifacts_url,
        str(settings.artifacts),
        settings.s3_endpoint_url,
        settings.s3_region,
    )
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = store_from_settings(settings)
    return store
