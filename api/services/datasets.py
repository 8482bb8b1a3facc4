"""Uploaded datasets: validation, storage and the project-scoped queries over them.

An upload is checked completely before anything is written: size, format, numeric values, no NaN or
infinity (the error names the 1-based data row and the column), a label, at least ``MIN_ROWS`` rows
and one feature. The bytes go to the artifact store under a key built from the new id only; the row
is written after the bytes, and the bytes are removed again if the row cannot be committed, so a
failure leaves nothing half-written.

``task: auto`` decides once, at upload: the labels are *classification* when every label is an
integer value and there are at most ``MAX_AUTO_CLASSES`` distinct ones, *regression* otherwise. The
worker reads the stored decision; a job may still regress class labels with ``data.task: regression``.

This module is torch-free and sklearn-free (the API never loads them); its CSV rules match
``worker.data.parse_csv`` (a header row, blank lines skipped, values read by Python's ``float``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models.artifacts import get_store, key_for_dataset
from models.settings import get_settings
from models.tables import Dataset, Job, Project, new_id

# The smaller of this and settings.max_request_bytes bounds an upload.
MAX_DATASET_BYTES = 50 * 1024 * 1024
# An NPZ is a zip: its arrays may expand far beyond the upload; this bounds them once decompressed.
MAX_NPZ_EXPANDED_BYTES = 512 * 1024 * 1024
MIN_ROWS = 10
MAX_AUTO_CLASSES = 50
MAX_CLASSES = 10_000
TASKS = ("auto", "classification", "regression")
ACTIVE_STATUSES = ("queued", "running")
# A CSV uploaded without naming its label column uses the first of these that its header has.
DEFAULT_LABEL_COLUMNS = ("label", "target", "y")
_UTF8_BOM = b"\xef\xbb\xbf"


class DatasetError(ValueError):
    """Bad upload: the message names the field, row or column, and becomes a 422."""


@dataclass
class Parsed:
    """What validation learned about an upload; ``payload`` is what gets stored."""

    fmt: str
    payload: bytes
    n_rows: int
    n_features: int
    labels: np.ndarray
    input_shape: list[int] | None
    label: str | None = None  # a CSV's label column: the one named, else the one found by name


def size_cap() -> int:
    return min(MAX_DATASET_BYTES, get_settings().max_request_bytes)


# ----- parsing and validation ------------------------------------------------------------------
def detect_format(payload: bytes, filename: str | None) -> str:
    # An NPZ is a zip archive; its magic number decides, the file name only breaks ties.
    if payload.startswith(b"PK\x03\x04") or (filename or "").lower().endswith(".npz"):
        return "npz"
    return "csv"


def parse_upload(payload: bytes, filename: str | None, label: str | None) -> Parsed:
    if not payload:
        raise DatasetError("file: the upload is empty")
    if detect_format(payload, filename) == "npz":
        return parse_npz(payload)
    return parse_csv_upload(payload, label)


def parse_csv_upload(payload: bytes, label: str | None) -> Parsed:
    # Spreadsheet exports often start with a byte-order mark; the worker decodes plain UTF-8, so the
    # mark is dropped from the stored bytes (and the hash is of what is stored).
    payload = payload.removeprefix(_UTF8_BOM)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"file: not UTF-8 text (byte {exc.start}); upload CSV or NPZ") from None
    reader = csv.reader(io.StringIO(text))
    header, label = _csv_header(reader, label)
    li = header.index(label)
    rows = [_csv_row(r, reader.line_num, n, header) for n, r in enumerate(_data_rows(reader), start=1)]
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    _check_counts(len(rows), len(header) - 1)
    return Parsed("csv", payload, len(rows), len(header) - 1, table[:, li], None, label)


def _csv_header(reader: Any, label: str | None) -> tuple[list[str], str]:
    """The header row and the label column: ``label``, else the first DEFAULT_LABEL_COLUMNS present."""
    try:
        header = next(reader)  # names kept verbatim: the worker looks the label up the same way
    except StopIteration:
        raise DatasetError("file: the CSV has no header row") from None
    except csv.Error as exc:
        raise DatasetError(f"file: unreadable CSV header: {exc}") from None
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise DatasetError(f"file: duplicate column name(s) {duplicates}")
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
            raise DatasetError(f"file: {where}, column {column!r}: {cell.strip()} is not allowed")
        values.append(value)
    return values


def parse_npz(payload: bytes) -> Parsed:
    _check_npz_archive(payload)
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            missing = [k for k in ("X", "y") if k not in npz.files]
            if missing:
                raise DatasetError(f"file: the NPZ lacks array(s) {missing}; it needs X and y")
            X, y = np.asarray(npz["X"]), np.asarray(npz["y"])
    except DatasetError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:  # object arrays refuse to load unpickled
        raise DatasetError(f"file: unreadable NPZ: {exc}") from None
    _check_npz_arrays(X, y)
    shape = _image_shape(X)
    n_features = int(np.prod(X.shape[1:]))
    _check_counts(len(X), n_features)
    return Parsed("npz", payload, len(X), n_features, y.astype(np.float64), shape)


def _check_npz_archive(payload: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        raise DatasetError("file: not a valid NPZ (zip) archive") from None
    if expanded > MAX_NPZ_EXPANDED_BYTES:
        raise DatasetError(f"file: the NPZ expands to {expanded} bytes, over {MAX_NPZ_EXPANDED_BYTES}")


def _check_npz_arrays(X: np.ndarray, y: np.ndarray) -> None:
    for name, array in (("X", X), ("y", y)):
        if array.dtype.kind not in "biuf":
            raise DatasetError(f"file: array {name} has dtype {array.dtype}; it must be numeric")
    if X.ndim not in (2, 3, 4):
        raise DatasetError(f"file: X has shape {X.shape}; use (n, features), (n, H, W) or (n, C, H, W)")
    if y.ndim != 1 or len(y) != len(X):
        raise DatasetError(f"file: y has shape {y.shape}; it must be ({len(X)},), one label per row of X")
    _first_non_finite(X.reshape(len(X), -1), "X")
    _first_non_finite(y.reshape(-1, 1), "y")


def _first_non_finite(table: np.ndarray, name: str) -> None:
    if table.dtype.kind != "f":
        return
    bad = np.argwhere(~np.isfinite(table))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        column = f", column {col + 1}" if table.shape[1] > 1 else ""
        raise DatasetError(f"file: {name} row {row + 1}{column}: {table[row, col]} is not allowed")


def _image_shape(X: np.ndarray) -> list[int] | None:
    if X.ndim == 3:
        return [1, int(X.shape[1]), int(X.shape[2])]
    if X.ndim == 4:
        return [int(s) for s in X.shape[1:]]
    return None


def _check_counts(n_rows: int, n_features: int) -> None:
    if n_rows < MIN_ROWS:
        raise DatasetError(f"file: {n_rows} data rows; at least {MIN_ROWS} are needed")
    if n_features < 1:
        raise DatasetError("file: no feature columns besides the label")


def resolve_task(requested: str, labels: np.ndarray) -> str:
    """auto: classification when labels are integers with at most MAX_AUTO_CLASSES distinct values."""
    if requested not in TASKS:
        raise DatasetError(f"task: must be one of {', '.join(TASKS)}")
    distinct = np.unique(labels)
    if len(distinct) < 2:
        raise DatasetError("label: every row has the same label; nothing to learn")
    integral = bool(np.all(distinct == np.round(distinct)))
    if requested == "auto":
        return "classification" if integral and len(distinct) <= MAX_AUTO_CLASSES else "regression"
    if requested == "classification" and not integral:
        raise DatasetError("task: classification needs integer labels; these have fractional values")
    if requested == "classification" and len(distinct) > MAX_CLASSES:
        raise DatasetError(f"task: {len(distinct)} classes; at most {MAX_CLASSES} are supported")
    return requested


# ----- storage and queries ---------------------------------------------------------------------
def create_dataset(
    session: Session,
    project: Project,
    name: str,
    payload: bytes,
    filename: str | None,
    label: str | None,
    task: str,
) -> Dataset:
    if len(payload) > size_cap():
        raise HTTPException(413, f"file: {len(payload)} bytes, over the dataset limit of {size_cap()}")
    try:
        parsed = parse_upload(payload, filename, label)
        decided = resolve_task(task, parsed.labels)
    except DatasetError as exc:
        raise HTTPException(422, str(exc)) from None
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
    )
    row.artifact = key_for_dataset(row.id, parsed.fmt)
    _store_then_commit(session, row, parsed.payload)
    return row


def _store_then_commit(session: Session, row: Dataset, payload: bytes) -> None:
    store = get_store()
    store.put_bytes(row.artifact, payload)
    try:
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete(row.artifact)
        raise


def list_datasets(session: Session, project: Project, limit: int) -> list[Dataset]:
    stmt = select(Dataset).where(Dataset.project_id == project.id)
    return list(session.scalars(stmt.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)))


def get_dataset(session: Session, project: Project, dataset_id: str) -> Dataset:
    row = session.scalars(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.project_id == project.id)
    ).one_or_none()
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id} not found")
    return row


def jobs_using(session: Session, project: Project, dataset_id: str) -> list[str]:
    """Queued or running jobs of the project whose spec reads the dataset (as data or test set)."""
    data = Job.spec["data"]
    stmt = select(Job.id).where(
        Job.project_id == project.id,
        Job.status.in_(ACTIVE_STATUSES),
        or_(data["dataset"].as_string() == dataset_id, data["test_dataset"].as_string() == dataset_id),
    )
    return list(session.scalars(stmt.limit(10)))


def delete_dataset(session: Session, project: Project, dataset_id: str) -> None:
    # Lock the row so two deletes (or a delete and a re-check) do not interleave.
    row = session.scalars(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.project_id == project.id).with_for_update()
    ).one_or_none()
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id} not found")
    users = jobs_using(session, project, dataset_id)
    if users:
        raise HTTPException(409, f"dataset {dataset_id} is used by queued or running job(s) {users}")
    artifact = row.artifact
    session.delete(row)
    session.commit()
    # The bytes go after the row: a crash in between leaves an orphan file, never a row without data.
    get_store().delete(artifact)
