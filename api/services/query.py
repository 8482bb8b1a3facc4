"""The job query language of GET /v1/jobs, turned into one SQL statement scoped to the project.

    status=running  verdict=overfitting  finding=oscillation  sweep=<id>  tag=team:vision  tag=baseline
    spec.batch_size=32   spec.optimizer.lr__lt=0.01   summary.best_val_loss__lte=0.2
    spec.data.dataset__in=digits,wine   created_after=2026-11-01T00:00:00Z
    sort=-summary.best_val_loss   (default: newest first)   cursor=<opaque>   limit=50

Dotted paths read the JSON columns with the database's own JSON operators (JSONB on Postgres),
numbers compare as numbers and anything else as text.

On Postgres, a tag filter and a text equality on a path become a JSON containment test
(``tags @> {"team": "vision"}``, ``spec @> {"optimizer": {"name": "adam"}}``) that the GIN indexes
of the jobs table answer and the planner can estimate (see ``containment``). Every sort pages with
a keyset cursor (sort value, id).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from models.codes import FINDINGS, VERDICTS
from models.errors import Invalid
from models.tables import JOB_STATUSES, Diagnosis, Job

OPERATORS = ("lt", "lte", "gt", "gte", "ne", "in")
PLANNER_SETTINGS = text(
    "SELECT set_config('jit', 'off', true), set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('random_page_cost', '1.1', true)"
)
PATH = re.compile(r"^(spec|summary|progress)(\.[A-Za-z0-9_]+){1,6}$")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# Paths the worker always writes as numbers: compared with a plain cast, the expression that
# ix_jobs_project_best_val_loss indexes. Any other path may hold text (spec.name, a tag), which a cast
# to float would turn into an error; it compares as a number only where its text is one (see number_at).
INDEXED_NUMBERS = {"summary.best_val_loss"}
# Decimal text that float8 takes without overflow: at most 40 characters, a two-digit exponent.
NUMERIC_TEXT = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,2})?\s*$"
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
    """Query-string pairs → JobQuery; ``Invalid`` naming the parameter for anything it does not understand."""
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
                raise Invalid(
                    f"{key}: unknown filter; use {sorted(RESERVED)} or a dotted spec./summary./progress. "
                    f"path with an optional __{'|__'.join(OPERATORS)} suffix",
                )
            q.paths.append((path, op or "eq", value))
    if q.status and q.status not in JOB_STATUSES:
        raise Invalid(f"status: must be one of {', '.join(JOB_STATUSES)}")
    if q.verdict and q.verdict not in VERDICTS:
        raise Invalid(f"verdict: unknown verdict {q.verdict!r}; one of {', '.join(VERDICTS)}")
    unknown = [code for code in q.finding if code not in FINDINGS]
    if unknown:
        raise Invalid(f"finding: unknown code(s) {unknown}; one of {', '.join(FINDINGS)}")
    if q.sort and not (q.sort.lstrip("-") == "created_at" or PATH.match(q.sort.lstrip("-"))):
        raise Invalid("sort: created_at or a dotted spec./summary./progress. path, '-' for descending")
    return q


def _datetime(key: str, value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"{key}: not an ISO 8601 date-time") from None


def json_element(path: str):  # noqa: ANN201
    column, *keys = path.split(".")
    return getattr(Job, column)[tuple(keys)]


def number_at(path: str, dialect: str = "postgresql"):  # noqa: ANN201
    """The value at ``path`` as a float where it is a number (or numeric text), else NULL: a cast
    of any other text would fail the whole statement. SQLite's cast never fails."""
    element = json_element(path)
    if path in INDEXED_NUMBERS or dialect != "postgresql":
        return element.as_float()
    as_text = element.as_string()
    short = func.length(as_text) <= 40
    # A JSON number skips the pattern (as fast as the plain cast); text is a number if it reads as one.
    return case(
        (and_(func.jsonb_typeof(element) == "number", short), element.as_float()),
        (and_(short, as_text.regexp_match(NUMERIC_TEXT)), element.as_float()),
    )


def _number(value: str) -> float | None:
    """A finite number, else None (``nan`` and ``inf`` compare as text)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def path_condition(path: str, op: str, raw: str, dialect: str = "postgresql"):  # noqa: ANN201
    """Numbers compare as numbers, ``true``/``false`` and any other text as the value's text form."""
    element = json_element(path)
    if op == "in":
        values = raw.split(",")
        numbers = [_number(v) for v in values]
        if all(n is not None for n in numbers):
            return number_at(path, dialect).in_(numbers)
        return element.as_string().in_(values)
    number = _number(raw)
    if op in ("lt", "lte", "gt", "gte"):
        if number is None:
            raise Invalid(f"{path}__{op}: needs a finite number, got {raw!r}")
        target = number_at(path, dialect)
        return {
            "lt": target < number,
            "lte": target <= number,
            "gt": target > number,
            "gte": target >= number,
        }[op]
    if number is not None and raw not in ("true", "false"):
        target, value = number_at(path, dialect), number
    else:  # a JSON true/false reads as the text 'true'/'false', like any text
        target, value = element.as_string(), raw
    return target == value if op == "eq" else target != value


def _json_candidates(raw: str) -> list[Any]:
    """JSON values whose text form (``->>``/``#>>``) can equal ``raw``: the string itself, and the
    value ``raw`` spells when it is JSON (``5`` for "5", ``true`` for "true")."""
    parsed = _json(raw)
    return [raw] if parsed is None or isinstance(parsed, str) else [raw, parsed]


def _strict_json(raw: str) -> Any:
    """json.loads without NaN, Infinity or overflowing numbers, which JSONB cannot hold."""

    def refuse(text: str) -> Any:
        raise ValueError(f"{text} is not a finite number")

    def finite(text: str) -> float:
        value = float(text)
        return value if math.isfinite(value) else refuse(text)

    return json.loads(raw, parse_constant=refuse, parse_float=finite)


def _json(raw: str) -> Any:
    try:
        return _strict_json(raw)
    except ValueError:
        return None


def _plain(raw: str) -> bool:
    """Text that is not JSON itself: only a JSON string has it as its text form."""
    try:
        _strict_json(raw)
    except ValueError:
        return True
    return False


def _contains(column: Any, keys: list[str], values: list[Any]) -> ColumnElement[bool]:
    """``column @> {k1: {k2: value}}`` for any of ``values``: what a GIN index on the column answers."""
    tests = []
    for value in values:
        doc: Any = value
        for key in reversed(keys):
            doc = {key: doc}
        tests.append(column.op("@>")(cast(doc, JSONB)))
    return or_(*tests) if len(tests) > 1 else tests[0]


def containment(path: str, op: str, raw: str) -> tuple[ColumnElement[bool] | None, bool]:
    """A containment test for a text comparison of a dotted path: (test, whether it is the same
    condition) or (None, False).

    Along a path of object keys, ``#>> path = 'adam'`` holds exactly when the value there is the
    JSON string "adam" (``@>`` does not look into arrays below the top level), so for text that is
    not JSON itself the test replaces the comparison, and the planner estimates it from the
    column's statistics instead of a fixed guess. Text that is JSON (``5``, ``true``, ``[64]``) can
    also be the text form of that value: the test then only narrows, next to the comparison.
    Numbers and booleans compare after a cast (``"32"`` and ``32`` both equal 32) and get none; nor
    does a path with an array index in it (``spec.model.hidden.0``)."""
    column, *keys = path.split(".")
    if op not in ("eq", "in") or any(k.isdigit() for k in keys):
        return None, False
    raws = raw.split(",") if op == "in" else [raw]
    if op == "in" and all(_number(v) is not None for v in raws):
        return None, False
    if op == "eq" and (_number(raw) is not None or raw in ("true", "false")):
        return None, False
    test = _contains(getattr(Job, column), keys, [c for r in raws for c in _json_candidates(r)])
    return test, all(_plain(r) for r in raws)


def apply(stmt: Select, q: JobQuery, dialect: str = "postgresql") -> Select:
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
    postgres = dialect == "postgresql"
    for tag in q.tags:
        key, sep, value = tag.partition(":")
        element = Job.tags[key].as_string()
        if not postgres:
            stmt = stmt.where(element == value if sep else element.is_not(None))
        elif not sep:  # the key with a value that is not null; ix_jobs_tags finds the key
            stmt = stmt.where(element.is_not(None), Job.tags.op("?")(literal(key, String)))
        elif _plain(value):  # exactly the tag's condition, through ix_jobs_tags
            stmt = stmt.where(_contains(Job.tags, [key], [value]))
        else:
            stmt = stmt.where(element == value, _contains(Job.tags, [key], _json_candidates(value)))
    if q.created_after:
        stmt = stmt.where(Job.created_at >= q.created_after)
    if q.created_before:
        stmt = stmt.where(Job.created_at < q.created_before)
    for path, op, raw in q.paths:
        test, same = containment(path, op, raw) if postgres else (None, False)
        if not same:
            stmt = stmt.where(path_condition(path, op, raw, dialect))
        if test is not None:  # spec paths through ix_jobs_spec
            stmt = stmt.where(test)
    return stmt


def page(
    session: Session,
    *,
    stmt: Select,
    q: JobQuery,
    cursor: str | None,
    limit: int,
    dialect: str = "postgresql",
) -> tuple[list[Job], str | None]:
    """One page in the query's order with a keyset cursor: newest first by default, else by the sort
    key (nulls last) and then the id, both in the sort's direction."""
    if q.sort in (None, "-created_at"):
        if cursor:
            created, job_id = decode_keyset(cursor)
            stmt = stmt.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
        rows = session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
        next_cursor = encode_keyset(rows[limit - 1]) if len(rows) > limit else None
        return list(rows[:limit]), next_cursor
    desc = q.sort.startswith("-")
    key = q.sort.lstrip("-")
    nullable = key != "created_at"
    column = Job.created_at if not nullable else number_at(key, dialect)
    after = decode_sorted(cursor, nullable) if cursor else None
    by_id = Job.id.desc() if desc else Job.id.asc()
    rows: list[Any] = []
    if after is None or after[0] is not None:
        # The rows with a sort value: one index range when an index has the sort key.
        part = stmt.where(column.is_not(None)) if nullable else stmt
        if after is not None:
            bound = tuple_(column, Job.id)
            part = part.where(bound < tuple(after) if desc else bound > tuple(after))
        part = part.add_columns(column).order_by(column.desc() if desc else column.asc(), by_id)
        rows = list(session.execute(part.limit(limit + 1)).all())
    if nullable and len(rows) <= limit:
        # Then the rows without one (the sort key is missing or null), by id.
        part = stmt.where(column.is_(None))
        if after is not None and after[0] is None:
            part = part.where(Job.id < after[1] if desc else Job.id > after[1])
        part = part.add_columns(column).order_by(by_id)
        rows += session.execute(part.limit(limit + 1 - len(rows))).all()
    next_cursor = encode_sorted(*rows[limit - 1]) if len(rows) > limit else None
    return [job for job, _ in rows[:limit]], next_cursor


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _unb64(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except Exception:
        raise Invalid("cursor: not a cursor returned by this API") from None


def encode_keyset(row: Any) -> str:
    """Cursor after ``row`` in newest-first order (any row with created_at and id: jobs, sweeps)."""
    return _b64(f"k:{row.created_at.isoformat()}|{row.id}")


def decode_keyset(cursor: str) -> tuple[datetime, str]:
    raw = _unb64(cursor)
    try:
        kind, rest = raw.split(":", 1)
        created, job_id = rest.split("|", 1)
        assert kind == "k" and JOB_ID.match(job_id)  # ids are 32 hex digits: no text reaches SQL
        return datetime.fromisoformat(created), job_id
    except Exception:
        raise Invalid("cursor: not a cursor returned by this API") from None


def encode_sorted(job: Job, value: Any) -> str:
    """Cursor after ``job`` whose sort value is ``value`` (None: past the rows that have one)."""
    if isinstance(value, datetime):
        return _b64(f"t:{value.isoformat()}|{job.id}")
    return _b64(f"s:{'' if value is None else repr(float(value))}|{job.id}")


def decode_sorted(cursor: str, nullable: bool) -> tuple[Any, str]:
    raw = _unb64(cursor)
    try:
        kind, rest = raw.split(":", 1)
        value, job_id = rest.split("|", 1)
        assert JOB_ID.match(job_id)
        if kind == "t" and not nullable:
            return datetime.fromisoformat(value), job_id
        assert kind == "s" and nullable and (not value or math.isfinite(float(value)))
        return (float(value) if value else None), job_id
    except Exception:
        raise Invalid("cursor: not a cursor returned by this API (or from another sort)") from None


def list_jobs(
    session: Session,
    *,
    project_id: str,
    params: list[tuple[str, str]],
    cursor: str | None,
    limit: int,
) -> tuple[list[Job], str | None]:
    q = parse(params)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # For this transaction: no JIT (a filter on a JSON path over tens of thousands of rows costs
        # past jit_above_cost, yet runs in milliseconds: compiling it would take longer); a plan
        # made for these values every time (the driver prepares a statement run five times, and
        # Postgres may then keep a generic plan, blind to the JSON paths and values bound as
        # parameters, whose selectivity is what picks the index here); and page reads priced as
        # reads from memory, which the jobs table is. With the default price of a disk seek, a list
        # filtered by verdict, tag and two numeric spec ranges flipped between a 2 ms and a 60-95 ms
        # plan from one ANALYZE sample to the next; now it combines its indexes (20-35 ms) every time.
        session.execute(PLANNER_SETTINGS)
    stmt = apply(select(Job).where(Job.project_id == project_id), q, dialect)
    return page(session, stmt=stmt, q=q, cursor=cursor, limit=limit, dialect=dialect)
