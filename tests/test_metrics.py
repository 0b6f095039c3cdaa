"""GET /metrics: what was accepted, refused, written and published, as Prometheus sees it.

Counters count for the whole test process (many apps share them), so each test compares
a scrape after with a scrape before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from support import AppClient, running_server

from app import metrics
from app.config import Settings
from app.main import create_app
from app.pubsub import GROUP_CREATED
from app.services.keys import CreatedProject, create_project

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient, **headers: str) -> Samples:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def proliferate_event(key: str, event_id: str) -> dict[str, object]:
    return {
        "api_key": key,
        "event_id": event_id,
        "timestamp": "2025-01-15T10:30:00Z",
        "type": "exception",
        "exception": {"type": "TypeError", "message": "x is undefined"},
    }


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[AppClient]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield AppClient(http=http, runtime=app.state.runtime)


async def test_accepted_and_rejected_by_dialect_and_reason(
    app_client: AppClient, app_project: CreatedProject
):
    http = app_client.http
    key = app_project.ingest_key.secret
    before = await scrape(http)

    for n in range(3):
        response = await http.post("/api/v1/errors", json=proliferate_event(key, f"ok-{n}"))
        assert response.status_code == 202
    refused = [
        http.post("/api/v1/errors", json=proliferate_event("pk_nope", "bad-key")),
        http.post("/api/v1/errors", content=b"{not json", headers={"content-type": "text/plain"}),
        http.post("/api/v1/errors", json={"api_key": key}),  # answered 422 by the dialect
        http.post(
            "/api/v1/errors", content=b"x" * (app_client.runtime.settings.max_body_bytes + 1)
        ),
        http.post("/api/1/store/?sentry_key=nope", json={"message": "hi"}),
        http.post("/v1/errors/capture", json={}, headers={"Authorization": "Bearer nope"}),
    ]
    statuses = [(await request).status_code for request in refused]
    assert statuses == [401, 400, 422, 413, 401, 401]
    # Reads are not submissions: their refusals are not rejected events.
    listed = await http.get("/v1/errors/list", headers={"Authorization": "Bearer nope"})
    assert listed.status_code == 401

    after = await scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("errorgraph_events_accepted_total", dialect="proliferate") == 3
    rejected = "errorgraph_events_rejected_total"
    assert delta(rejected, dialect="proliferate", reason="invalid_key") == 1
    assert delta(rejected, dialect="proliferate", reason="invalid_input") == 2
    assert delta(rejected, dialect="proliferate", reason="payload_too_large") == 1
    assert delta(rejected, dialect="sentry", reason="invalid_key") == 1
    assert delta(rejected, dialect="infrai", reason="invalid_key") == 1
    total = sum(v for (name, _), v in after.items() if name == rejected)
    assert total - sum(v for (name, _), v in before.items() if name == rejected) == 6

    # Every request is counted by its route's template, never by its raw path.
    requests = "errorgraph_http_requests_total"
    assert delta(requests, method="POST", route="/api/v1/errors", status="202") == 3
    assert delta(requests, method="POST", route="/api/{project_id:int}/store/", status="401") == 1
    assert not any(
        "nope" in dict(labels).get("route", "") for (name, labels) in after if name == requests
    )


async def test_batches_commit_latency_and_queue(app_client: AppClient, app_project: CreatedProject):
    http = app_client.http
    before = await scrape(http)
    response = await http.post(
        "/api/v1/errors/batch",
        json=[proliferate_event(app_project.ingest_key.secret, f"b-{n}") for n in range(4)],
    )
    assert response.status_code == 202
    after = await scrape(http)

    def delta(name: str) -> float:
        return value(after, name) - value(before, name)

    assert delta("errorgraph_writer_batch_events_count") >= 1
    assert delta("errorgraph_writer_batch_events_sum") == 4
    assert delta("errorgraph_writer_commit_seconds_count") == delta(
        "errorgraph_writer_batch_events_count"
    )
    assert delta("errorgraph_writer_commit_seconds_sum") > 0
    assert value(after, "errorgraph_writer_queue_depth") == 0


async def test_subscriptions_and_dropped_messages(settings: Settings):
    # No alert listener: this subscription is the only one that can fall behind.
    small_queues = settings.model_copy(update={"subscriber_queue_size": 2, "alerts_enabled": False})
    async with client_for(small_queues) as client:
        pubsub = client.runtime.pubsub
        before = await scrape(client.http)
        async with pubsub.subscribe(GROUP_CREATED) as subscription:
            for n in range(5):
                await pubsub.publish(GROUP_CREATED, {"group_id": n, "project_id": 1})
            for _ in range(500):  # the memory backend delivers on the loop: a few ticks
                if subscription.dropped >= 3:
                    break
                await asyncio.sleep(0.01)
            during = await scrape(client.http)
        after = await scrape(client.http)

    def delta(samples: Samples, name: str) -> float:
        return value(samples, name) - value(before, name)

    assert delta(during, "errorgraph_subscriptions_open") == 1
    assert delta(after, "errorgraph_subscriptions_open") == 0
    assert delta(during, "errorgraph_pubsub_published_total") == 5
    assert delta(during, "errorgraph_pubsub_delivered_total") >= 5
    assert delta(during, "errorgraph_pubsub_dropped_total") == 3
    assert value(during, "errorgraph_pubsub_connected") == 1
    assert value(during, "errorgraph_pubsub_reconnects_total") == 0


async def test_alert_and_retention_counters_are_exposed(app_client: AppClient):
    before = await scrape(app_client.http)
    metrics.ALERTS_SENT.labels(channel="webhook").inc()
    metrics.ALERTS_FAILED.labels(channel="email", final="false").inc()
    metrics.RETENTION_RUNS.labels(status="ok").inc()
    metrics.RETENTION_DELETED.labels(kind="events").inc(7)
    metrics.RETENTION_EXPORTED_EVENTS.inc(7)
    after = await scrape(app_client.http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("errorgraph_alerts_sent_total", channel="webhook") == 1
    assert delta("errorgraph_alerts_failed_total", channel="email", final="false") == 1
    assert delta("errorgraph_retention_runs_total", status="ok") == 1
    assert delta("errorgraph_retention_deleted_total", kind="events") == 7
    assert delta("errorgraph_retention_exported_events_total") == 7


async def test_apps_in_one_process_each_expose_their_own_runtime(
    settings: Settings, tmp_path: Path
):
    other = settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"}
    )
    async with client_for(settings) as first, client_for(other) as second:
        project = await create_project(sessions=second.runtime.database.sessions, name="two")
        async with second.runtime.pubsub.subscribe(GROUP_CREATED):
            one = await scrape(first.http)
            two = await scrape(second.http)
        assert (
            value(two, "errorgraph_subscriptions_open")
            == value(one, "errorgraph_subscriptions_open") + 1
        )
        response = await second.http.post(
            "/api/v1/errors", json=proliferate_event(project.ingest_key.secret, "two-1")
        )
        assert response.status_code == 202
        assert "process_cpu_seconds_total" in {name for name, _ in (await scrape(first.http))}


async def test_openmetrics_when_asked(app_client: AppClient):
    response = await app_client.http.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(response.text)}
    assert {"errorgraph_events_accepted", "errorgraph_writer_queue_depth"} <= names


async def test_token_protects_metrics_when_set(settings: Settings):
    guarded = Settings(
        database_url=settings.database_url,
        metrics_token="s3cret-scrape",
        _env_file=None,  # type: ignore[call-arg]
    )
    async with client_for(guarded) as client:
        anonymous = await client.http.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert "ERRORGRAPH_METRICS_TOKEN" in anonymous.json()["detail"]
        wrong = await client.http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        await scrape(client.http, Authorization="Bearer s3cret-scrape")


def test_empty_token_means_open(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ERRORGRAPH_METRICS_TOKEN", "")
    assert Settings(_env_file=None).metrics_token is None  # type: ignore[call-arg]


def test_workers_share_counters_through_the_multiprocess_directory(
    settings: Settings, tmp_path: Path
):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with running_server(settings, tmp_path, env) as server:
        answered = httpx.post(server.base_url + "/graphql", json={"query": "{ __typename }"})
        assert answered.status_code == 200
        response = httpx.get(server.base_url + "/metrics")
        assert response.status_code == 200
        samples = parse(response.text)
        pid = str(server.process.pid)
        assert value(samples, "errorgraph_writer_queue_depth", pid=pid) == 0
        assert (
            value(
                samples,
                "errorgraph_http_requests_total",
                method="POST",
                route="/graphql",
                status="200",
            )
            == 1
        )
    assert any(name.endswith(".db") for name in os.listdir(shared))
