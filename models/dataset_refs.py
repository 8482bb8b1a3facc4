"""Which upload a spec's ``data.dataset`` and ``data.test_dataset`` mean.

A spec may name an upload by its 32-hex id or by its name (unique in the project; built-in names and
id-shaped names are refused at upload, so the three never overlap). Every way a job comes to exist
resolves the names to ids here before the row is written, so a stored job names its uploads by id
only: the worker, the deletion check (``jobs_using``) and the budget all read ids.

Torch-free: the API and the sweep scheduler both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import Invalid
from models.spec import BUILTIN_DATASETS, IMAGE_BUILTINS, JobSpec, is_dataset_id
from models.tables import Dataset

FIELDS = ("dataset", "test_dataset")


@dataclass(frozen=True)
class Upload:
    """What admission needs of an uploaded dataset."""

    id: str
    name: str
    n_rows: int
    n_features: int
    input_shape: tuple[int, ...] | None


def find_upload(session: Session, *, project_id: str, ref: str) -> Upload | None:
    """The project's upload with this id or name; None for a built-in name or no such upload."""
    if ref in BUILTIN_DATASETS:
        return None
    column = Dataset.id if is_dataset_id(ref) else Dataset.name
    row = session.execute(
        select(Dataset.id, Dataset.name, Dataset.n_rows, Dataset.n_features, Dataset.input_shape).where(
            column == ref, Dataset.project_id == project_id
        )
    ).first()
    if row is None:
        return None
    return Upload(row.id, row.name, row.n_rows, row.n_features, tuple(row.input_shape or ()) or None)


def resolve_uploads(session: Session, *, project_id: str, spec: JobSpec) -> tuple[JobSpec, Upload | None]:
    """The spec with upload names replaced by ids, and data.dataset's upload (None for a built-in).
    ``Invalid`` naming the field for a name or id the project does not have, or for data.augment on
    data that are not images."""
    resolved: dict[str, str] = {}
    uploads: dict[str, Upload | None] = {}
    for field in FIELDS:
        ref = getattr(spec.data, field)
        if ref is None or ref in BUILTIN_DATASETS:
            uploads[field] = None
            continue
        upload = find_upload(session, project_id=project_id, ref=ref)
        if upload is None:
            raise Invalid(_not_found(ref), loc=("data", field))
        uploads[field], resolved[field] = upload, upload.id
    if resolved:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update=resolved)})
    check_augment(spec, uploads["dataset"])
    return spec, uploads["dataset"]


def _not_found(ref: str) -> str:
    kind = "" if is_dataset_id(ref) else "named "
    return (
        f"no uploaded dataset {kind}{ref!r} in this project "
        f"(built-in datasets: {', '.join(BUILTIN_DATASETS)})"
    )


def image_shape(spec: JobSpec, upload: Upload | None) -> tuple[int, ...] | None:
    """(C, H, W) of data.dataset when it is images, else None."""
    if upload is not None:
        return upload.input_shape
    return IMAGE_BUILTINS.get(spec.data.dataset)


def check_augment(spec: JobSpec, upload: Upload | None) -> None:
    augment = spec.data.augment
    if augment is None:
        return
    shape = image_shape(spec, upload)
    if shape is None:
        raise Invalid(
            f"dataset {spec.data.dataset} is not an image dataset; augment needs images",
            loc=("data", "augment"),
        )
    smallest = min(shape[1:])
    if augment.random_crop >= smallest:
        raise Invalid(
            f"{augment.random_crop} pixels of padding on {shape[1]}×{shape[2]} images; it must be below {smallest}",
            loc=("data", "augment", "random_crop"),
        )
