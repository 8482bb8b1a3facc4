"""A job's data: a built-in dataset, or one of its project's uploads read from the artifact store,
prepared as the spec says (splits, scaling, noise)."""

from __future__ import annotations

from sqlalchemy import select

from models.artifacts import get_store
from models.db import session_scope, with_retries
from models.spec import BUILTIN_DATASETS, JobSpec
from models.tables import Dataset
from worker.data import Prepared, RawData, load_builtin, load_uploaded, prepare


def load_raw(spec: JobSpec, dataset: str, project_id: str) -> RawData:
    if dataset in BUILTIN_DATASETS:
        return load_builtin(dataset, spec.data.params, spec.seed)

    def lookup() -> tuple[str, str, str | None, str, str]:
        with session_scope() as session:
            row = session.scalars(
                select(Dataset).where(Dataset.id == dataset, Dataset.project_id == project_id)
            ).one_or_none()
            if row is None:
                raise ValueError(f"dataset {dataset} not found in this project")
            return row.format, row.artifact, row.label, row.task, row.name

    fmt, artifact, label, task, name = with_retries(lookup)
    raw = load_uploaded(fmt, get_store().get_bytes(artifact), label, task)
    raw.facts["dataset_name"] = name  # the spec names the upload by id (models.dataset_refs)
    return raw


def prepare_data(spec: JobSpec, project_id: str) -> Prepared:
    raw = load_raw(spec, spec.data.dataset, project_id)
    test_raw = load_raw(spec, spec.data.test_dataset, project_id) if spec.data.test_dataset else None
    return prepare(spec.data, raw, spec.seed, test_raw)
