"""/v1/datasets: thin handlers over api.services.datasets."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from api.deps import ProjectDep, ProjectOnlyDep, SessionDep
from api.limits import text_problem
from api.schemas import ErrorOut
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
    # Image uploads: source format, layout, class names, per-channel mean and std (pixels 0-255).
    image_info: dict[str, Any] | None = None


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={409: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
async def upload_dataset(
    project: ProjectOnlyDep,
    file: Annotated[
        UploadFile,
        File(
            description="CSV with a header row; NPZ with arrays X and y; a ZIP of class_name/*.png|jpg; "
            "a ZIP of an MNIST-family IDX pair; CIFAR-10/100 binary batches (.bin, or a ZIP of them)"
        ),
    ],
    name: Annotated[
        str,
        Form(
            min_length=1,
            max_length=200,
            description="unique in the project; specs may use it as data.dataset (built-in names are reserved)",
        ),
    ],
    label: Annotated[
        str | None,
        Form(
            max_length=200, description="the CSV's label column (default: a column named label, target or y)"
        ),
    ] = None,
    task: Annotated[str, Form(pattern="^(auto|classification|regression)$")] = "auto",
    format: Annotated[
        str,
        Form(
            pattern="^(auto|csv|npz|image_folder|idx|cifar10|cifar100)$",
            description="auto: told from the bytes (a ZIP's members, magic numbers)",
        ),
    ] = "auto",
) -> DatasetOut:
    """The body was spooled to disk as it arrived (at most SADDLE_MAX_REQUEST_BYTES). Validation
    runs in at most SADDLE_UPLOAD_SLOTS threads at once: the others wait here, on the event loop,
    holding neither a worker thread nor a database connection, so other requests still answer."""
    for field, value in (("name", name), ("label", label or "")):
        problem = text_problem(value)
        if problem:
            raise HTTPException(422, f"{field}: {problem}")
    async with upload_slot():
        row = await run_in_threadpool(_validate_and_store, project, file, name, label, task, format)
    return DatasetOut.model_validate(row)


def _validate_and_store(project, file: UploadFile, name: str, label: str | None, task: str, fmt: str):  # noqa: ANN001, ANN202
    # One byte past the cap is enough to know the upload is too large without reading all of it.
    payload = file.file.read(svc.size_cap() + 1)
    return svc.create_dataset(
        project=project, name=name, payload=payload, filename=file.filename, label=label, task=task, fmt=fmt
    )


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def upload_slot() -> AsyncIterator[None]:
    """One of SADDLE_UPLOAD_SLOTS per process (per event loop); 503 after SADDLE_UPLOAD_WAIT_SECONDS."""
    settings = get_settings()
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, asyncio.Semaphore(settings.upload_slots))
    try:
        async with asyncio.timeout(settings.upload_wait_seconds):
            await slots.acquire()
    except TimeoutError:
        raise HTTPException(
            503, "uploads: every validation slot is busy; retry shortly", headers={"Retry-After": "5"}
        ) from None
    try:
        yield
    finally:
        slots.release()


@router.get("", response_model=list[DatasetOut])
def list_datasets(
    session: SessionDep, project: ProjectDep, limit: Annotated[int, Query(ge=1)] = 100
) -> list[DatasetOut]:
    rows = svc.list_datasets(session, project=project, limit=min(limit, get_settings().max_page_size))
    return [DatasetOut.model_validate(r) for r in rows]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep, project: ProjectDep) -> DatasetOut:
    return DatasetOut.model_validate(svc.get_dataset(session, project=project, dataset_id=dataset_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, session: SessionDep, project: ProjectDep) -> Response:
    svc.delete_dataset(session, project=project, dataset_id=dataset_id)
    return Response(status_code=204)
