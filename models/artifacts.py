"""Artifact storage (checkpoints, eigenvectors, uploaded datasets) behind one small interface.

Keys are built by ``key_for_*`` from database ids and fixed words only, never from request text, and
every key is checked again before it touches a path, so a traversal attempt cannot leave the root.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from models.settings import get_settings

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


def key_for_dataset(dataset_id: str, fmt: str) -> str:
    if fmt not in ("csv", "npz"):
        raise ArtifactKeyError(f"unknown dataset format {fmt!r}")
    return f"datasets/{_hex_id(dataset_id)}/data.{fmt}"


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


def get_store() -> LocalArtifactStore:
    return LocalArtifactStore(get_settings().artifacts)
