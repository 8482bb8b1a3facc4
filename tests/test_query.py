"""The job query API: filters on status, verdict, findings, tags, dotted spec/summary paths with
operators, dates; sorting by a summary metric; cursors in both orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from models.db import session_scope
from models.tables import Diagnosis, Job, Project
from tests.conftest import RUN_ID, tiny_spec


def _make(
    client: TestClient, label: str, lr: float, batch: int, val: float, finding: str | None = None
) -> str:
    """A finished job row written directly (never enqueued, so no worker can overwrite it)."""
    spec = tiny_spec(
        name=f"q-{label}",
        tags={"suite": "query", "arm": label},
        batch_size=batch,
        optimizer={"name": "adam", "lr": lr},
    )
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        job = Job(
            project_id=project.id,
            name=spec["name"],
            spec=spec,
            tags=spec["tags"],
            status="succeeded",
            summary={"best_val_loss": val},
            verdict="overfitting" if finding else "good_fit",
        )
        session.add(job)
        session.flush()
        if finding:
            session.add(
                Diagnosis(job_id=job.id, code=finding, kind="finding", severity="warning", confidence=0.9)
            )
        return job.id


def test_filters_sorting_and_cursors(client: TestClient) -> None:
    a = _make(client, "a", 0.001, 16, 0.30)
    b = _make(client, "b", 0.01, 32, 0.10, finding="oscillation")
    c = _make(client, "c", 0.1, 32, 0.20)

    def ids(**params) -> list[str]:
        r = client.get("/v1/jobs", params={"tag": "suite:query", **params})
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    assert set(ids()) == {a, b, c}
    assert set(ids(**{"spec.optimizer.lr__lt": 0.05})) == {a, b}
    assert set(ids(**{"spec.batch_size": 32})) == {b, c}
    assert set(ids(**{"spec.batch_size__in": "16,32"})) == {a, b, c}
    assert set(ids(**{"summary.best_val_loss__gte": 0.2})) == {a, c}
    assert ids(finding="oscillation") == [b]
    assert ids(verdict="overfitting") == [b]
    assert set(ids(tag=["suite:query", "arm:c"])) == {c}
    assert ids(sort="summary.best_val_loss") == [b, c, a]
    assert ids(sort="-summary.best_val_loss") == [a, c, b]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ids(created_after=later) == []

    seen, cursor = [], None
    while True:
        params = {"tag": "suite:query", "sort": "-summary.best_val_loss", "limit": 1}
        page = client.get("/v1/jobs", params=params | ({"cursor": cursor} if cursor else {})).json()
        seen += [j["id"] for j in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == [a, c, b]


def test_bad_filters_are_422_naming_the_parameter(client: TestClient) -> None:
    for params, name in [
        ({"spec.optimizer.lr__between": 1}, "spec.optimizer.lr__between"),
        ({"secret": 1}, "secret"),
        ({"spec.batch_size__lt": "big"}, "spec.batch_size__lt"),
        ({"sort": "password"}, "sort"),
        ({"created_after": "yesterday"}, "created_after"),
    ]:
        r = client.get("/v1/jobs", params=params)
        assert r.status_code == 422 and name in r.json()["detail"], (params, r.text)


def test_empty_values_filter_nothing(client: TestClient) -> None:
    # Found by schemathesis: an empty sort used to reach the JSON path lookup.
    for params in ({"sort": ""}, {"status": ""}, {"verdict": ""}):
        assert client.get("/v1/jobs", params=params).status_code == 200, params


def test_tag_and_spec_filters_keep_their_meaning_through_the_index_prefilters(client: TestClient) -> None:
    """Tag and spec text filters add a JSON containment test on Postgres (answered by GIN indexes);
    it must never drop a row the filter itself keeps: numbers, booleans and key-only tags too."""
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        rows = [
            ({"suite": "prefilter", "run": 5}, {"name": "adam", "beta": "0.9"}),  # a number tag
            (
                {"suite": "prefilter", "run": "5", "flag": None},
                {"name": "sgd", "beta": 0.9},
            ),  # text; null tag
            ({"suite": "prefilter", "baseline": True}, {"name": "adam", "note": [1, 2]}),
        ]
        ids = []
        for tags, optimizer in rows:
            spec = tiny_spec(name="prefilter", tags=tags, optimizer=optimizer)
            job = Job(project_id=project.id, name="prefilter", spec=spec, tags=tags, status="succeeded")
            session.add(job)
            session.flush()
            ids.append(job.id)
    a, b, c = ids

    def found(*params: tuple[str, str]) -> set[str]:
        r = client.get("/v1/jobs", params=[("tag", "suite:prefilter"), *params, ("limit", "50")])
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["items"]}

    assert found(("tag", "run:5")) == {a, b}  # 5 and "5" both read as "5"
    assert found(("tag", "baseline:true")) == {c}
    assert found(("tag", "baseline")) == {c}  # key-only: the tag is there
    assert found(("tag", "flag")) == set()  # a null value counts as absent, as ->> says
    assert found(("spec.optimizer.name", "adam")) == {a, c}
    assert found(("spec.optimizer.name__in", "sgd,rmsprop")) == {b}
    assert found(("spec.optimizer.beta", "0.9")) == {a, b}  # compared as a number: "0.9" and 0.9
    assert found(("spec.optimizer.note", "[1, 2]")) == {c}  # the text form of what was stored


def test_every_sort_pages_by_keyset_with_nulls_last(client: TestClient) -> None:
    labels = ["k1", "k2", "k3", "k4", "k5"]
    losses = [0.5, None, 0.2, 0.5, None]  # a tie and two jobs without the key
    made = {}
    with session_scope() as session:
        project = session.scalars(select(Project).where(Project.name == f"test-{RUN_ID}")).one()
        for label, loss in zip(labels, losses, strict=True):
            job = Job(
                project_id=project.id,
                name=label,
                spec=tiny_spec(name=label),
                tags={"suite": "keyset"},
                status="succeeded",
                summary={} if loss is None else {"best_val_loss": loss},
            )
            session.add(job)
            session.flush()
            made[job.id] = loss

    def walk(sort: str, limit: int) -> list[str]:
        seen, cursor = [], None
        while True:
            params = {"tag": "suite:keyset", "sort": sort, "limit": limit} | (
                {"cursor": cursor} if cursor else {}
            )
            page = client.get("/v1/jobs", params=params)
            assert page.status_code == 200, page.text
            seen += [j["id"] for j in page.json()["items"]]
            if not (cursor := page.json()["next_cursor"]):
                return seen

    by_id = sorted(made)
    with_loss = [i for i in by_id if made[i] is not None]
    without = [i for i in by_id if made[i] is None]
    ascending = sorted(with_loss, key=lambda i: (made[i], i)) + without
    descending = sorted(with_loss, key=lambda i: (-made[i], [-ord(ch) for ch in i])) + without[::-1]
    for limit in (1, 2, 50):
        assert walk("summary.best_val_loss", limit) == ascending
        assert walk("-summary.best_val_loss", limit) == descending
        assert walk("created_at", limit) == walk("-created_at", limit)[::-1]
    # A cursor from one sort is refused by another.
    first = client.get("/v1/jobs", params={"tag": "suite:keyset", "sort": "created_at", "limit": 1}).json()
    other = client.get("/v1/jobs", params={"sort": "summary.best_val_loss", "cursor": first["next_cursor"]})
    assert other.status_code == 422 and "cursor" in other.json()["detail"]
