"""``GET /v1/architectures``: the ``model.arch`` names a job may use now (built-ins and the plug-ins
that live workers report, models/arch_reports.py), and which worker offers what."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ProjectDep, SessionDep
from models.arch_reports import available, reported

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


class ArchitecturesOut(BaseModel):
    available: list[str]
    workers: dict[str, list[str]]


@router.get("", response_model=ArchitecturesOut)
def list_architectures(session: SessionDep, project: ProjectDep) -> ArchitecturesOut:
    return ArchitecturesOut(available=available(session), workers=reported(session))
