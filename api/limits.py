"""What every request must respect before a handler sees it (OWASP API4, unrestricted resource use).

``RequestLimits`` is plain ASGI middleware, so it sees the body as it streams in:

- a body is counted chunk by chunk, whatever its framing (``Content-Length`` or chunked), and
  refused with a 413 the moment it passes its limit: uploads (multipart ``POST /v1/datasets``) up
  to ``SADDLE_MAX_REQUEST_BYTES``, every other body up to ``SADDLE_MAX_JSON_BYTES``; an upload goes on
  streaming to the parser's spool file, any other body is held (it is small) and checked as JSON;
- text that Postgres cannot store or compare is a 422 naming where it is: a NUL character in the
  path, the query string or a JSON string (or key), an unpaired UTF-16 surrogate in JSON;
- a JSON number must be finite (Python reads ``NaN``, ``Infinity`` and ``1e999`` as floats; JSONB
  refuses them) and a document may nest at most ``MAX_DEPTH`` levels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_ROUTES = {("POST", "/v1/datasets")}
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUL_IN_QUERY = re.compile(rb"%00|\x00", re.IGNORECASE)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` while a handler reads the body; FastAPI passes HTTPExceptions through
    its body parsing, so the client gets this 413 and nothing past the limit is read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NonFinite(text)
    return value


def text_problem(value: str) -> str | None:
    """Why Postgres could not hold this text, or None."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    if _SURROGATE.search(value):
        return "contains an unpaired UTF-16 surrogate"
    return None


def json_problem(body: bytes) -> tuple[str, str] | None:
    """(where, what) for the first value of a JSON body that must be refused, or None. A body that
    is not JSON passes: the handler's own parsing says what is wrong with it."""
    try:
        doc = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        return "body", f"number {exc} is not finite; JSON numbers must be finite"
    except RecursionError:
        return "body", f"nested deeper than {MAX_DEPTH} levels"
    except ValueError:
        return None
    return _walk(doc)


def _walk(doc: Any) -> tuple[str, str] | None:
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return where or "body", f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                return where or "body", problem
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                problem = text_problem(key)
                if problem:
                    return path, f"key {problem}"
                stack.append((item, path, depth + 1))
        elif isinstance(value, list):
            stack.extend(
                (item, f"{where}.{i}" if where else str(i), depth + 1) for i, item in enumerate(value)
            )
    return None


def url_problem(scope: Scope) -> tuple[str, str] | None:
    if "\x00" in scope.get("path", ""):
        return "path", "contains a NUL character (\\u0000)"
    if _NUL_IN_QUERY.search(scope.get("query_string", b"")):
        return "query", "contains a NUL character (%00)"
    return None


async def _refuse(send: Send, status: int, field: str, message: str) -> None:
    body = {"detail": f"{field}: {message}"}
    if status == 422:
        body["errors"] = [{"field": field, "message": message, "type": "value_error"}]
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class RequestLimits:
    def __init__(self, app: ASGIApp, upload_bytes: int, json_bytes: int) -> None:
        self.app, self.upload_bytes, self.json_bytes = app, upload_bytes, json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = url_problem(scope)
        if problem:
            await _refuse(send, 422, *problem)
            return
        upload = (scope["method"], scope["path"].rstrip("/")) in UPLOAD_ROUTES
        limit = self.upload_bytes if upload else self.json_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte of it is read
            await _refuse(send, 413, "body", f"request body over {limit} bytes")
            return
        if upload or headers.get(b"content-type", b"").startswith(b"multipart/"):
            await self.app(scope, _counted(receive, limit), send)
            return
        body = await _read_small(receive, limit)
        if body is None:
            await _refuse(send, 413, "body", f"request body over {limit} bytes")
            return
        problem = json_problem(body) if body else None
        if problem:
            await _refuse(send, 422, *problem)
            return
        await self.app(scope, _replay(body, receive), send)


def _counted(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


async def _read_small(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # a disconnect, if the client goes away

    return replay
