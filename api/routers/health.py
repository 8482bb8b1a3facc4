"""Liveness and readiness; the only routes without a token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import text

from models.db import get_engine
from models.settings import get_settings
from worker.celery_app import broker_options

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database() -> str | None:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"database: {type(exc).__name__}"
    return None


def _check_broker() -> str | None:
    settings = get_settings()
    try:
        with Connection(settings.broker_url, transport_options=broker_options(settings)) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"broker: {type(exc).__name__}"
    return None


@router.get("/readyz")
def readyz() -> JSONResponse:
    problems = [p for p in (_check_database(), _check_broker()) if p]
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})
