"""The job query language of GET /v1/jobs, turned into one SQL statement scoped to the project.

    status=running  verdict=overfitting  finding=oscillation  sweep=<id>  tag=team:vision  tag=baseline
    spec.batch_size=32   spec.optimizer.lr__lt=0.01   summary.best_val_loss__lte=0.2
    spec.data.dataset__in=digits,wine   created_after=2026-11-01T00:00:00Z
    sort=-summary.best_val_loss   (default: newest first)   cursor=<opaque>   limit=50

Dotted paths read the JSON columns with the database's own JSON operators (JSONB on Postgres),
numbers compare as numbers and anything else as text.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Select, and_, exists, or_, select

from models.tables import JOB_STATUSES, Diagnosis, Job

OPERATORS = ("lt", "lte", "gt", "gte", "ne", "in")
PATH = re.compile(r"^(spec|summary|progress)(\.[A-Za-z0-9_]+){1,6}$")
RESERVED = {
    "status",
    "name",
    "verdict",
    "finding",
    "sweep",
    "tag",
    "sort",
    "cursor",
    "limit",
    "created_after",
    "created_before",
    "kind",
    "parent",
}


@dataclass
class JobQuery:
    status: str | None = None
    name: str | None = None
    verdict: str | None = None
    finding: list[str] = field(default_factory=list)
    sweep: str | None = None
    kind: str | None = None
    parent: str | None = None
    tags: list[str] = field(default_factory=list)
    created_after: datetime | None = None
    created_before: datetime | None = None
    paths: list[tuple[str, str, str]] = field(default_factory=list)  # (path, operator, raw value)
    sort: str | None = None


def parse(params: list[tuple[str, str]]) -> JobQuery:
    """Query-string pairs → JobQuery; 422 naming the parameter for anything it does not understand."""
    q = JobQuery()
    for key, value in params:
        if key in ("status", "name", "verdict", "sweep", "sort", "kind", "parent"):
            setattr(q, key, value or None)  # an empty value filters nothing
        elif key == "finding":
            q.finding.append(value)
        elif key == "tag":
            q.tags.append(value)
        elif key in ("created_after", "created_before"):
            setattr(q, key, _datetime(key, value))
        elif key in ("cursor", "limit"):
            continue
        else:
            path, _, op = key.partition("__")
            if not PATH.match(path) or (op and op not in OPERATORS):
                raise HTTPException(
                    422,
                    f"{key}: unknown filter; use {sorted(RESERVED)} or a dotted spec./summary./progress. "
                    f"path with an optional __{'|__'.join(OPERATORS)} suffix",
                )
            q.paths.append((path, op or "eq", value))
    if q.status and q.status not in JOB_STATUSES:
        raise HTTPException(422, f"status: must be one of {', '.join(JOB_STATUSES)}")
    if q.sort and not (q.sort.lstrip("-") == "created_at" or PATH.match(q.sort.lstrip("-"))):
        raise HTTPException(
            422, "sort: created_at or a dotted spec./summary./progress. path, '-' for descending"
        )
    return q


def _datetime(key: str, value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"{key}: not an ISO 8601 date-time") from None


def json_element(path: str):  # noqa: ANN201
    column, *keys = path.split(".")
    return getattr(Job, column)[tuple(keys)]


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def path_condition(path: str, op: str, raw: str):  # noqa: ANN201
    element = json_element(path)
    if op == "in":
        values = raw.split(",")
        numbers = [_number(v) for v in values]
        if all(n is not None for n in numbers):
            return element.as_float().in_(numbers)
        return element.as_string().in_(values)
    number = _number(raw)
    if raw in ("true", "false"):
        target, value = element.as_boolean(), raw == "true"
    elif number is not None:
        target, value = element.as_float(), number
    else:
        target, value = element.as_string(), raw
    if op in ("lt", "lte", "gt", "gte") and number is None:
        raise HTTPException(422, f"{path}__{op}: needs a number, got {raw!r}")
    return {
        "eq": target == value,
        "ne": target != value,
        "lt": target < value,
        "lte": target <= value,
        "gt": target > value,
        "gte": target >= value,
    }[op]


def apply(stmt: Select, q: JobQuery) -> Select:
    simple = {
        "status": Job.status,
        "name": Job.name,
        "verdict": Job.verdict,
        "sweep": Job.sweep_id,
        "kind": Job.kind,
        "parent": Job.parent_id,
    }
    for attr, column in simple.items():
        if getattr(q, attr):
            stmt = stmt.where(column == getattr(q, attr))
    for code in q.finding:
        stmt = stmt.where(
            exists().where(
                Diagnosis.job_id == Job.id, Diagnosis.code == code, Diagnosis.provisional.is_(False)
            )
        )
    for tag in q.tags:
        key, sep, value = tag.partition(":")
        element = Job.tags[key].as_string()
        stmt = stmt.where(element == value if sep else element.is_not(None))
    if q.created_after:
        stmt = stmt.where(Job.created_at >= q.created_after)
    if q.created_before:
        stmt = stmt.where(Job.created_at < q.created_before)
    for path, op, raw in q.paths:
        stmt = stmt.where(path_condition(path, op, raw))
    return stmt


def page(session, stmt: Select, q: JobQuery, cursor: str | None, limit: int) -> tuple[list[Job], str | None]:  # noqa: ANN001
    """Newest first with a keyset cursor; any other sort pages by offset (the cursor is opaque)."""
    if q.sort in (None, "-created_at"):
        if cursor:
            created, job_id = decode_keyset(cursor)
            stmt = stmt.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
        rows = session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
        next_cursor = encode_keyset(rows[limit - 1]) if len(rows) > limit else None
        return list(rows[:limit]), next_cursor
    offset = decode_offset(cursor) if cursor else 0
    key = q.sort.lstrip("-")
    column = Job.created_at if key == "created_at" else json_element(key).as_float()
    order = column.desc().nulls_last() if q.sort.startswith("-") else column.asc().nulls_last()
    rows = session.scalars(stmt.order_by(order, Job.id).offset(offset).limit(limit + 1)).all()
    next_cursor = _b64(f"o:{offset + limit}") if len(rows) > limit else None
    return list(rows[:limit]), next_cursor


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _unb64(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except Exception:
        raise HTTPException(422, "cursor: not a cursor returned by this API") from None


def encode_keyset(row: Any) -> str:
    """Cursor after ``row`` in newest-first order (any row with created_at and id: jobs, sweeps)."""
    return _b64(f"k:{row.created_at.isoformat()}|{row.id}")


def decode_keyset(cursor: str) -> tuple[datetime, str]:
    raw = _unb64(cursor)
    try:
        kind, rest = raw.split(":", 1)
        created, job_id = rest.split("|", 1)
        assert kind == "k"
        return datetime.fromisoformat(created), job_id
    except Exception:
        raise HTTPException(422, "cursor: not a cursor returned by this API") from None


def decode_offset(cursor: str) -> int:
    raw = _unb64(cursor)
    if not raw.startswith("o:") or not raw[2:].isdigit():
        raise HTTPException(422, "cursor: not a cursor returned by this API (or from another sort)")
    return int(raw[2:])


def list_jobs(
    session,
    project_id: str,
    params: list[tuple[str, str]],
    cursor: str | None,  # noqa: ANN001
    limit: int,
) -> tuple[list[Job], str | None]:
    q = parse(params)
    return page(session, apply(select(Job).where(Job.project_id == project_id), q), q, cursor, limit)
