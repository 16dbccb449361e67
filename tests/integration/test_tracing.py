"""OpenTelemetry spans from the HTTP edge through the core and the database into the job, one trace
across the queue, with no identity in any span."""

from __future__ import annotations

import json
import uuid

import psycopg

from service import app as lethe
from service.workflow import steps
from service.workflow.deps import deletion_deps
from tests.integration.test_rest_api import EMAIL, api, auth, body  # noqa: F401


def test_one_trace_from_the_api_into_the_job(api, spans):  # noqa: F811
    client, keys, db, settings = api
    spans.clear()
    b = body()
    assert client.post("/v1/deletions", json=b, headers=auth(keys["writer"])).status_code == 201
    with psycopg.connect(db.url) as conn:
        (args,) = conn.execute("SELECT args FROM procrastinate_jobs WHERE task_name = 'process_deletion'").fetchone()
    assert "traceparent" in args["trace"]
    graph = lethe.Lethe(settings, db)
    deps = deletion_deps(db, graph.data_keys, settings.artifacts_dir(), ledger=graph.ledger)
    steps.process(deps, **args)  # what the worker's job runs, in-process here to read its spans

    finished = {s.name: s for s in spans.get_finished_spans()}
    for name in (
        "http POST",
        "deletions.submit",
        "db.create_deletion",
        "workflow.process_deletion",
        "workflow.claim",
        "workflow.resolve",  # nothing of the subject is held: resolve → complete (nothing_found)
        "workflow.complete",
    ):
        assert name in finished, sorted(finished)
    trace_id = finished["http POST"].context.trace_id
    # The group-commit writer's transaction serves many requests: its span is a trace of its own.
    assert "db.create_deletions_batch" in finished
    assert {s.context.trace_id for n, s in finished.items() if n != "db.create_deletions_batch"} == {trace_id}
    assert finished["deletions.submit"].parent.span_id == finished["http POST"].context.span_id
    assert finished["http POST"].attributes["http.route"] == "/v1/deletions"
    dumped = json.dumps([dict(s.attributes or {}) | {"name": s.name} for s in spans.get_finished_spans()])
    assert EMAIL not in dumped and "ada.lovelace" not in dumped
    assert str(uuid.UUID(b["subject_request_id"])) in dumped  # request ids are fine: random, not personal
