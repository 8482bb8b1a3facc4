"""The web dashboard: an HTML shell at ``/`` and its scripts, styles and vendored chart library.

These routes are public because they carry no data: the page asks for a token once, keeps it in
the browser's localStorage, and reads everything from the authorized REST API with it. They are
left out of the OpenAPI schema (they are not part of the API contract). A strict
Content-Security-Policy allows scripts from this origin only, so data rendered on the page (job
names, evidence) can never run as script and reach the stored token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)
_files = StaticFiles(directory=STATIC)

SECURITY_HEADERS = {
    # Styles: uPlot positions its legend and cursor with inline style attributes.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time (a cheap 304 with the ETag), so an upgraded server serves fresh modules.
    "Cache-Control": "no-cache",
}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    # StaticFiles refuses paths that leave the folder (404) and answers conditional requests (ETag).
    response = await _files.get_response(path, request.scope)
    response.headers.update(SECURITY_HEADERS)
    return response
