"""Uploaded datasets: validation, storage and the project-scoped queries over them.

An upload is checked completely before anything is written: size, format, numeric values, no NaN or
infinity (the error names the 1-based data row and the column), a label, at least ``MIN_ROWS`` rows
and one feature. The bytes go to the artifact store under a key built from the new id only; the row
is written after the bytes, and the bytes are removed again if the row cannot be committed, so a
failure leaves nothing half-written.

``task: auto`` decides once, at upload: the labels are *classification* when every label is an
integer value and there are at most ``MAX_AUTO_CLASSES`` distinct ones, *regression* otherwise. The
worker reads the stored decision; a job may still regress class labels with ``data.task: regression``.

Image uploads (a ZIP of class folders, an MNIST-family IDX pair, CIFAR binary batches) are decoded
here once into a uint8 N×C×H×W array with class names and per-channel statistics
(``api.services.images``); their task is classification unless ``task: regression`` is asked.

A name is unique within its project (a spec may use it for ``data.dataset``): a built-in dataset's
name or one shaped like an id is a 422, a name the project already has a 409.

This module is torch-free and sklearn-free (the API never loads them); its CSV rules match
``worker.data.parse_csv`` (a header row, blank lines skipped, values read by Python's ``float``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.services import images
from models.artifacts import get_store, key_for_dataset
from models.db import session_scope
from models.errors import Conflict, Invalid, NotFound, TooLarge
from models.settings import get_settings
from models.spec import BUILTIN_DATASETS, is_dataset_id
from models.tables import Dataset, Job, Project, new_id

# The smaller of this and settings.max_request_bytes bounds an upload.
MAX_DATASET_BYTES = 50 * 1024 * 1024
# An NPZ is a zip: its arrays may expand far beyond the upload; this bounds them once decompressed.
MAX_NPZ_EXPANDED_BYTES = 512 * 1024 * 1024
MIN_ROWS = 10
MAX_AUTO_CLASSES = 50
MAX_CLASSES = 10_000
TASKS = ("auto", "classification", "regression")
FORMATS = ("auto", "csv", "npz", *images.IMAGE_FORMATS)
ACTIVE_STATUSES = ("queued", "running")
# A CSV uploaded without naming its label column uses the first of these that its header has.
DEFAULT_LABEL_COLUMNS = ("label", "target", "y")
_UTF8_BOM = b"\xef\xbb\xbf"


class DatasetError(ValueError):
    """Bad upload: the message names the field, row or column, and becomes a 422."""


@dataclass
class LabelStats:
    """What deciding the task needs of the labels, in bounded memory: the distinct values (up to
    MAX_CLASSES + 1 of them) and whether every label is an integer."""

    distinct: set[float] = field(default_factory=set)
    integral: bool = True
    many: bool = False  # more than MAX_CLASSES distinct values (the set stopped growing)

    def add(self, values: np.ndarray) -> None:
        if self.integral and values.dtype.kind == "f":
            self.integral = bool(np.all(values == np.round(values)))
        if not self.many:
            self.distinct.update(np.unique(values).tolist())
            self.many = len(self.distinct) > MAX_CLASSES

    @classmethod
    def of(cls, labels: Any) -> LabelStats:
        stats = cls()
        stats.add(np.asarray(labels, dtype=np.float64).ravel())
        return stats


@dataclass
class Parsed:
    """What validation learned about an upload; ``payload`` is what gets stored."""

    fmt: str
    payload: bytes
    n_rows: int
    n_features: int
    labels: LabelStats
    input_shape: list[int] | None
    label: str | None = None  # a CSV's label column: the one named, else the one found by name
    image_info: dict[str, Any] | None = None  # image uploads: source, classes, channel mean and std


def size_cap() -> int:
    return min(MAX_DATASET_BYTES, get_settings().max_request_bytes)


# ----- parsing and validation ------------------------------------------------------------------
# Validation streams: a CSV row at a time, an NPZ array a chunk at a time, so an upload costs its
# own bytes plus O(one row or chunk) whatever it expands to (issue 14, items 1 and 4).
CHUNK_BYTES = 4 * 2**20
MAX_NPZ_MEMBERS = 16
LABEL_ROWS_PER_BATCH = 65_536


def detect_format(payload: bytes, filename: str | None) -> str:
    """csv, npz or one of images.IMAGE_FORMATS, from the bytes (a ZIP's members, magic numbers);
    the file name only breaks ties."""
    image_format = images.detect_image_format(payload, filename)
    if image_format is not None:
        return image_format
    if payload.startswith(b"PK\x03\x04") or (filename or "").lower().endswith(".npz"):
        return "npz"
    return "csv"


def parse_upload(payload: bytes, filename: str | None, label: str | None, fmt: str = "auto") -> Parsed:
    if not payload:
        raise DatasetError("file: the upload is empty")
    if fmt not in FORMATS:
        raise DatasetError(f"format: must be one of {', '.join(FORMATS)}")
    try:
        if fmt == "auto":
            fmt = detect_format(payload, filename)
        if fmt in images.IMAGE_FORMATS:
            return parse_images(payload, fmt)
    except images.ImageError as exc:
        raise DatasetError(str(exc)) from None
    if fmt == "npz":
        return parse_npz(payload)
    return parse_csv_upload(payload, label)


def parse_images(payload: bytes, fmt: str) -> Parsed:
    decoded = images.decode(payload, fmt)
    n, channels, h, w = decoded.X.shape
    _check_counts(n, channels * h * w)
    stored, info = images.image_payload(decoded)
    labels = LabelStats.of(decoded.y)
    return Parsed("images", stored, n, channels * h * w, labels, [channels, h, w], image_info=info)


def parse_csv_upload(payload: bytes, label: str | None) -> Parsed:
    # Spreadsheet exports often start with a byte-order mark; the worker decodes plain UTF-8, so the
    # mark is dropped from the stored bytes (and the hash is of what is stored).
    payload = payload.removeprefix(_UTF8_BOM)
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(payload), encoding="utf-8", newline=""))
    try:
        header, label = _csv_header(reader, label)
        li = header.index(label)
        labels, batch, n_rows = LabelStats(), [], 0
        for n_rows, row in enumerate(_data_rows(reader), start=1):
            batch.append(_csv_row(row, reader.line_num, n_rows, header)[li])
            if len(batch) == LABEL_ROWS_PER_BATCH:
                labels.add(np.array(batch))
                batch.clear()
        labels.add(np.array(batch, dtype=np.float64))
    except UnicodeDecodeError:
        raise DatasetError(
            f"file: not UTF-8 text (near line {reader.line_num + 1}); upload CSV or NPZ"
        ) from None
    _check_counts(n_rows, len(header) - 1)
    return Parsed("csv", payload, n_rows, len(header) - 1, labels, None, label)


def _csv_header(reader: Any, label: str | None) -> tuple[list[str], str]:
    """The header row and the label column: ``label``, else the first DEFAULT_LABEL_COLUMNS present."""
    try:
        header = next(reader)  # names kept verbatim: the worker looks the label up the same way
    except StopIteration:
        raise DatasetError("file: the CSV has no header row") from None
    except csv.Error as exc:
        raise DatasetError(f"file: unreadable CSV header: {exc}") from None
    # Counted once (linear): a header of 100,000 distinct names used to cost minutes here.
    duplicates = sorted(name for name, n in Counter(header).items() if n > 1)
    if duplicates:
        raise DatasetError(f"file: duplicate column name(s) {duplicates[:20]}")
    if not label:
        label = next((name for name in DEFAULT_LABEL_COLUMNS if name in header), None)
        if label is None:
            raise DatasetError(
                f"label: no column named {', '.join(DEFAULT_LABEL_COLUMNS)} in the CSV header {header[:20]}; "
                "name the label column (label=...)"
            )
    if label not in header:
        raise DatasetError(f"label: column {label!r} is not in the CSV header {header[:20]}")
    if len(header) < 2:
        raise DatasetError("file: the CSV needs at least one feature column besides the label")
    return header, label


def _data_rows(reader: Any) -> Any:
    try:
        for row in reader:
            if row:  # blank lines are skipped, as the worker skips them
                yield row
    except csv.Error as exc:
        raise DatasetError(f"file: unreadable CSV near line {reader.line_num}: {exc}") from None


def _csv_row(row: list[str], line: int, n: int, header: list[str]) -> list[float]:
    where = f"row {n} (line {line})"
    if len(row) != len(header):
        raise DatasetError(f"file: {where} has {len(row)} fields, the header has {len(header)}")
    values = []
    for cell, column in zip(row, header, strict=True):
        try:
            value = float(cell)
        except ValueError:
            raise DatasetError(f"file: {where}, column {column!r}: {cell[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise DatasetError(f"file: {where}, column {column!r}: {cell.strip()[:40]} is not allowed")
        values.append(value)
    return values


@dataclass
class NpyMember:
    """One array of an NPZ, known from its header alone (no data read)."""

    name: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype


def parse_npz(payload: bytes) -> Parsed:
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            X, y = _npz_members(archive)
            _check_npz_shapes(X, y)
            _stream_values(archive, X)
            labels = _stream_values(archive, y)
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError):
        raise DatasetError("file: not a valid NPZ (zip) archive") from None
    except (ValueError, OSError) as exc:  # a corrupt member, a bad CRC
        raise DatasetError(f"file: unreadable NPZ: {exc}") from None
    shape = _image_shape(X.shape)
    n_features = math.prod(X.shape[1:])
    _check_counts(X.shape[0], n_features)
    return Parsed("npz", payload, X.shape[0], n_features, labels, shape)


def _npz_members(archive: zipfile.ZipFile) -> tuple[NpyMember, NpyMember]:
    infos = archive.infolist()
    if len(infos) > MAX_NPZ_MEMBERS:
        raise DatasetError(f"file: the NPZ holds {len(infos)} members; at most {MAX_NPZ_MEMBERS}")
    expanded = sum(info.file_size for info in infos)
    if expanded > MAX_NPZ_EXPANDED_BYTES:
        raise DatasetError(f"file: the NPZ expands to {expanded} bytes, over {MAX_NPZ_EXPANDED_BYTES}")
    by_name = {info.filename.removesuffix(".npy"): info for info in infos}
    missing = [k for k in ("X", "y") if k not in by_name]
    if missing:
        raise DatasetError(f"file: the NPZ lacks array(s) {missing}; it needs X and y")
    return _npy_header(archive, "X", by_name["X"]), _npy_header(archive, "y", by_name["y"])


def _npy_header(archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> NpyMember:
    """The array's shape and dtype from its .npy header; its data must be exactly what they claim
    (a 389-byte file whose header claims 72.8 TiB is refused here, before anything is allocated)."""
    with archive.open(info) as f:
        try:
            shape, fortran, dtype = _read_npy_header(f)
        except ValueError as exc:
            raise DatasetError(f"file: unreadable NPZ: array {name}: {exc}") from None
        header_bytes = f.tell()
    if dtype.hasobject:
        raise DatasetError(f"file: unreadable NPZ: array {name} holds Python objects, which need pickle")
    if dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise DatasetError(f"file: array {name} has dtype {dtype}; it must be numeric")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != info.file_size - header_bytes:
        raise DatasetError(
            f"file: array {name} claims shape {shape} of {dtype} ({claimed:,} bytes) but holds "
            f"{info.file_size - header_bytes:,} bytes"
        )
    return NpyMember(name, info, tuple(int(d) for d in shape), bool(fortran), dtype)


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of a .npy stream, leaving it at the first data byte. Format 3.0
    differs from 2.0 only in the header's text encoding."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def _check_npz_shapes(X: NpyMember, y: NpyMember) -> None:
    if len(X.shape) not in (2, 3, 4):
        raise DatasetError(f"file: X has shape {X.shape}; use (n, features), (n, H, W) or (n, C, H, W)")
    if len(y.shape) != 1 or y.shape[0] != X.shape[0]:
        raise DatasetError(f"file: y has shape {y.shape}; it must be ({X.shape[0]},), one label per row of X")


def _stream_values(archive: zipfile.ZipFile, array: NpyMember) -> LabelStats:
    """Read the array's data a chunk at a time: every value finite (the first that is not is named
    by row and column); for y, the label statistics."""
    labels = LabelStats()
    step = max(1, CHUNK_BYTES // array.dtype.itemsize) * array.dtype.itemsize
    with archive.open(array.info) as f:
        _read_npy_header(f)
        offset = 0
        while chunk := f.read(step):
            values = np.frombuffer(chunk, dtype=array.dtype)
            if array.dtype.kind == "f":
                bad = np.flatnonzero(~np.isfinite(values))
                if len(bad):
                    _non_finite(array, offset + int(bad[0]), values[bad[0]])
            if array.name == "y":
                labels.add(values.astype(np.float64))
            offset += len(values)
    return labels


def _non_finite(array: NpyMember, index: int, value: Any) -> None:
    order = "F" if array.fortran else "C"
    position = np.unravel_index(index, array.shape, order=order)
    row = int(position[0]) + 1
    features = array.shape[1:]
    column = ""
    if features and math.prod(features) > 1:
        column = f", column {int(np.ravel_multi_index(position[1:], features)) + 1}"
    raise DatasetError(f"file: {array.name} row {row}{column}: {value} is not allowed")


def _image_shape(shape: tuple[int, ...]) -> list[int] | None:
    if len(shape) == 3:
        return [1, shape[1], shape[2]]
    if len(shape) == 4:
        return list(shape[1:])
    return None


def _check_counts(n_rows: int, n_features: int) -> None:
    if n_rows < MIN_ROWS:
        raise DatasetError(f"file: {n_rows} data rows; at least {MIN_ROWS} are needed")
    if n_features < 1:
        raise DatasetError("file: no feature columns besides the label")


def resolve_task(requested: str, labels: LabelStats | Any) -> str:
    """auto: classification when labels are integers with at most MAX_AUTO_CLASSES distinct values.
    ``labels``: the upload's LabelStats, or the labels themselves."""
    if requested not in TASKS:
        raise DatasetError(f"task: must be one of {', '.join(TASKS)}")
    stats = labels if isinstance(labels, LabelStats) else LabelStats.of(labels)
    distinct = len(stats.distinct)
    if distinct < 2:
        raise DatasetError("label: every row has the same label; nothing to learn")
    if requested == "auto":
        return "classification" if stats.integral and distinct <= MAX_AUTO_CLASSES else "regression"
    if requested == "classification" and not stats.integral:
        raise DatasetError("task: classification needs integer labels; these have fractional values")
    if requested == "classification" and stats.many:
        raise DatasetError(f"task: more than {MAX_CLASSES} classes; at most {MAX_CLASSES} are supported")
    return requested


# ----- storage and queries ---------------------------------------------------------------------
def create_dataset(
    *,
    project: Project,
    name: str,
    payload: bytes,
    filename: str | None,
    label: str | None,
    task: str,
    fmt: str = "auto",
) -> Dataset:
    """Validate the upload (no database connection is held meanwhile: a slow parse must not starve
    other requests of the pool), then store the bytes and write the row in a session of its own."""
    check_name(name)
    with session_scope() as session:  # fail fast on a taken name; the unique constraint decides races
        check_name_free(session, project=project, name=name)
    if len(payload) > size_cap():
        raise TooLarge(f"file: {len(payload)} bytes, over the dataset limit of {size_cap()}")
    try:
        parsed = parse_upload(payload, filename, label, fmt)
        decided = resolve_task(_image_task(task) if parsed.fmt == "images" else task, parsed.labels)
    except DatasetError as exc:
        raise Invalid(str(exc)) from None
    row = Dataset(
        id=new_id(),
        project_id=project.id,
        name=name,
        format=parsed.fmt,
        sha256=hashlib.sha256(parsed.payload).hexdigest(),
        n_rows=parsed.n_rows,
        n_features=parsed.n_features,
        label=parsed.label,
        task=decided,
        input_shape=parsed.input_shape,
        size_bytes=len(parsed.payload),
        image_info=parsed.image_info,
    )
    row.artifact = key_for_dataset(row.id, parsed.fmt)
    try:
        with session_scope() as session:
            _store_then_commit(session, row=row, payload=parsed.payload)
    except IntegrityError:  # another upload took the name meanwhile (its bytes were removed)
        raise Conflict(_taken(name)) from None
    return row


def _image_task(requested: str) -> str:
    # Image labels are classes: auto means classification, whatever their number.
    return "classification" if requested == "auto" else requested


def check_name(name: str) -> None:
    """A name a spec can use for data.dataset: not a built-in's, not shaped like an id."""
    if name in BUILTIN_DATASETS:
        raise Invalid(f"name: {name!r} is a built-in dataset's name; choose another name")
    if is_dataset_id(name):
        raise Invalid(f"name: {name!r} reads as a dataset id (32 hex digits); choose another name")
    if not name.strip():
        raise Invalid("name: cannot be blank")


def check_name_free(session: Session, *, project: Project, name: str) -> None:
    stmt = select(Dataset.id).where(Dataset.project_id == project.id, Dataset.name == name)
    if session.scalar(stmt) is not None:
        raise Conflict(_taken(name))


def _taken(name: str) -> str:
    return f"name: {name!r} is already taken by another dataset of this project; choose another name"


def _store_then_commit(session: Session, *, row: Dataset, payload: bytes) -> None:
    store = get_store()
    store.put_bytes(row.artifact, payload)
    try:
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete(row.artifact)
        raise


def list_datasets(session: Session, *, project: Project, limit: int) -> list[Dataset]:
    stmt = select(Dataset).where(Dataset.project_id == project.id)
    return list(session.scalars(stmt.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)))


def get_dataset(session: Session, *, project: Project, dataset_id: str, for_update: bool = False) -> Dataset:
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.project_id == project.id)
    row = session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return row


def jobs_using(session: Session, *, project: Project, dataset_id: str) -> list[str]:
    """Queued or running jobs of the project whose spec reads the dataset (as data or test set)."""
    data = Job.spec["data"]
    stmt = select(Job.id).where(
        Job.project_id == project.id,
        Job.status.in_(ACTIVE_STATUSES),
        or_(data["dataset"].as_string() == dataset_id, data["test_dataset"].as_string() == dataset_id),
    )
    return list(session.scalars(stmt.limit(10)))


def delete_dataset(session: Session, *, project: Project, dataset_id: str) -> None:
    # Lock the row so two deletes (or a delete and a re-check) do not interleave.
    row = get_dataset(session, project=project, dataset_id=dataset_id, for_update=True)
    users = jobs_using(session, project=project, dataset_id=dataset_id)
    if users:
        raise Conflict(f"dataset {dataset_id} is used by queued or running job(s) {users}")
    artifact = row.artifact
    session.delete(row)
    session.commit()
    # The bytes go after the row: a crash in between leaves an orphan file, never a row without data.
    get_store().delete(artifact)
