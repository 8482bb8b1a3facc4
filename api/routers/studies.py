"""/v1/studies: measurements that are not training runs, stored as Job rows of their own kind.

``POST /v1/studies/batch-size-timing`` times the spec's model and data on a worker's device over a
list of batch sizes (see ``worker.timing``). The study is a Job with ``kind = "study"``: its spec is
the base spec, its summary first holds the study's parameters and, when it succeeds, the curve under
``batch_size_timing``; ``GET /v1/jobs/{id}`` shows it and ``POST /v1/jobs/{id}/cancel`` stops it.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from api.deps import IdempotencyKey, ProjectDep, SessionDep, creates
from api.schemas import JobOut
from api.services.jobs import create_job
from models.spec import JobSpec
from models.tables import Job, Project

log = logging.getLogger("saddle.api")
router = APIRouter(prefix="/v1/studies", tags=["studies"])

MAX_BATCH_SIZES = 16
MAX_STUDY_BATCH = 65_536


class BatchTimingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_STUDY_BATCH)]] = Field(
        min_length=1, max_length=MAX_BATCH_SIZES
    )
    epochs: int = Field(2, ge=1, le=5, description="timed epochs per batch size (the median is reported)")

    @field_validator("batch_sizes")
    @classmethod
    def _distinct_ascending(cls, sizes: list[int]) -> list[int]:
        return sorted(set(sizes))


def create_batch_timing(
    session: Session, *, project: Project, body: BatchTimingRequest, idempotency_key: str | None
) -> tuple[Job, bool]:
    # The worker reads the study's parameters from the summary: the database, not the message, holds them.
    study = {"kind": "batch_size_timing", "batch_sizes": body.batch_sizes, "epochs": body.epochs}
    spec = body.spec if body.spec.name else body.spec.model_copy(update={"name": "batch-size-timing"})
    return create_job(
        session,
        project=project,
        spec=spec,
        idempotency_key=idempotency_key,
        request=body.model_dump(mode="json"),
        kind="study",
        summary={"study": study},
    )


@router.post("/batch-size-timing", **creates(JobOut, exclude_unset=True))
def batch_size_timing(
    body: BatchTimingRequest,
    session: SessionDep,
    project: ProjectDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    job, created = create_batch_timing(session, project=project, body=body, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
    return JobOut.model_validate(job)
