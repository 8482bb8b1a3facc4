"""/v1/datasets: thin handlers over api.services.datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from pydantic import BaseModel, ConfigDict

from api.deps import ProjectDep, SessionDep
from api.services import datasets as svc
from models.settings import get_settings

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format: str
    sha256: str
    n_rows: int
    n_features: int
    label: str | None
    task: str
    input_shape: list[int] | None
    size_bytes: int
    created_at: datetime


@router.post("", status_code=201, response_model=DatasetOut)
def upload_dataset(
    session: SessionDep,
    project: ProjectDep,
    file: Annotated[UploadFile, File(description="CSV with a header row, or NPZ with arrays X and y")],
    name: Annotated[str, Form(min_length=1, max_length=200)],
    label: Annotated[
        str | None,
        Form(
            max_length=200, description="the CSV's label column (default: a column named label, target or y)"
        ),
    ] = None,
    task: Annotated[str, Form(pattern="^(auto|classification|regression)$")] = "auto",
) -> DatasetOut:
    # A plain def: the service works on a synchronous session, so this runs in the thread pool.
    # One byte past the cap is enough to know the upload is too large without reading all of it.
    payload = file.file.read(svc.size_cap() + 1)
    row = svc.create_dataset(session, project, name, payload, file.filename, label, task)
    return DatasetOut.model_validate(row)


@router.get("", response_model=list[DatasetOut])
def list_datasets(
    session: SessionDep, project: ProjectDep, limit: Annotated[int, Query(ge=1)] = 100
) -> list[DatasetOut]:
    rows = svc.list_datasets(session, project, min(limit, get_settings().max_page_size))
    return [DatasetOut.model_validate(r) for r in rows]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep, project: ProjectDep) -> DatasetOut:
    return DatasetOut.model_validate(svc.get_dataset(session, project, dataset_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, session: SessionDep, project: ProjectDep) -> Response:
    svc.delete_dataset(session, project, dataset_id)
    return Response(status_code=204)
