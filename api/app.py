"""The FastAPI application: routers, error shapes and request limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from api.limits import RequestLimits
from api.routers import architectures, dashboard, datasets, health, jobs, observability, studies, sweeps
from api.schemas import ERROR_RESPONSES
from dispatch.reaper import Reaper
from models.errors import Conflict, DomainError, Invalid, NotFound, QuotaExceeded, TooLarge
from models.settings import get_settings

log = logging.getLogger("saddle.api")


def _field_path(loc: tuple | list) -> str:
    # Drop the "body"/"query" prefix: users think in spec paths such as data.split.val.
    parts = (
        [str(p) for p in loc[1:]]
        if loc and loc[0] in ("body", "query", "path", "header")
        else list(map(str, loc))
    )
    return ".".join(parts) or "body"


def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": _field_path(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"detail": summary, "errors": jsonable_encoder(errors)}, status_code=422)


STATUS_OF: dict[type[DomainError], int] = {
    NotFound: 404,
    Invalid: 422,
    Conflict: 409,
    TooLarge: 413,
    QuotaExceeded: 429,
}


def domain_error(request: Request, exc: DomainError) -> JSONResponse:
    """The one place a service's error becomes an HTTP answer: ``{"detail": message}`` with its
    status; an ``Invalid`` that names its field reads like a schema error."""
    if isinstance(exc, Invalid) and exc.loc is not None:
        return validation_error(
            request,
            RequestValidationError([{"loc": ("body", *exc.loc), "msg": exc.message, "type": "value_error"}]),
        )
    status = next(code for kind, code in STATUS_OF.items() if isinstance(exc, kind))
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QuotaExceeded) else None
    return JSONResponse({"detail": exc.message}, status_code=status, headers=headers)


def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    if (
        isinstance(exc, DBAPIError)
        and not isinstance(exc, OperationalError)
        and not exc.connection_invalidated
    ):
        raise exc
    log.warning("database unavailable: %s", type(exc).__name__)
    return JSONResponse(
        {"detail": "database unavailable, retry shortly"}, status_code=503, headers={"Retry-After": "2"}
    )


def value_not_storable(_: Request, exc: DataError) -> JSONResponse:
    """A value the database cannot hold or compare (out of a column's range, bad text): the
    request's fault, so a 422. Known cases are refused earlier with the field named; this is the
    net under them."""
    log.warning("refused a value the database could not take: %s", str(exc.orig or exc).splitlines()[0])
    return JSONResponse(
        {"detail": "a value in the request is out of range or cannot be stored (check numbers and text)"},
        status_code=422,
    )


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Each API process runs a reaper thread that re-queues jobs whose worker or broker was lost."""
    reaper = Reaper() if get_settings().reaper_seconds > 0 else None
    if reaper:
        reaper.start()
    yield
    if reaper:
        reaper.stop()


def create_app() -> FastAPI:
    # /docs and /redoc are off: FastAPI's pages load their scripts from a CDN without integrity, on
    # the dashboard's origin where the token lives. The schema stays at /openapi.json.
    app = FastAPI(
        lifespan=lifespan,
        title="Saddle",
        version="1.0",
        description="Training-job orchestration that diagnoses why a run went wrong.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(DBAPIError, database_unavailable)
    app.add_exception_handler(DataError, value_not_storable)
    settings = get_settings()
    app.add_middleware(
        RequestLimits, upload_bytes=settings.max_request_bytes, json_bytes=settings.max_json_bytes
    )

    app.include_router(health.router)
    app.include_router(jobs.router, responses=ERROR_RESPONSES)
    app.include_router(datasets.router, responses=ERROR_RESPONSES)
    app.include_router(studies.router, responses=ERROR_RESPONSES)
    app.include_router(observability.router, responses=ERROR_RESPONSES)
    # The dashboard's page and scripts hold no data (it reads the API with the user's token): public.
    app.include_router(dashboard.router)
    app.include_router(sweeps.router, responses=ERROR_RESPONSES)
    app.include_router(architectures.router, responses=ERROR_RESPONSES)
    return app


app = create_app()
