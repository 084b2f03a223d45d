"""GET /metrics: Prometheus text, protected by the bearer key unless opened by a setting,
counting requests, latency, erasures by kind and errors by error_code; and logs that
never carry a secret sent in a query string."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentos_sessions.contract import Contract
from agentos_sessions.observability import (
    REQUEST_ID_HEADER,
    QueryRedactor,
    declared_query_parameters,
)
from tests.support import AUTH, AgnoData, assert_spec_error

pytestmark = pytest.mark.usefixtures("backend")


def samples(response) -> dict[tuple[str, frozenset], float]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def seeded(client) -> tuple[AgnoData, str]:
    database = next(iter(client.storage.databases.values()))
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    return data, data.add_session(runs=3)


def test_metrics_need_the_bearer_key(make_client):
    client = make_client()
    assert_spec_error(client.get("/metrics"), 401, "UNAUTHENTICATED")
    assert_spec_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "UNAUTHENTICATED")
    assert_spec_error(client.get("/metrics", headers={"Authorization": "Basic abc"}), 401, "UNAUTHENTICATED")
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_metrics_public_setting_opens_them(make_client):
    client = make_client(metrics_public=True)
    assert client.get("/metrics").status_code == 200


def test_counts_requests_erasures_and_errors(make_client):
    client = make_client()
    data, session_id = seeded(client)
    expected_rows = {kind: n for kind, n in data.counts(session_id).items() if kind not in ("sessions", "traces", "spans")}

    assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 204
    assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 404
    assert client.delete(f"/sessions/{session_id}").status_code == 401
    assert client.delete(f"/sessions/{session_id}?db_id=nope", headers=AUTH).status_code == 404
    assert client.delete(f"/sessions/{session_id}?table=agno_sessions", headers=AUTH).status_code == 400

    metrics = samples(client.get("/metrics", headers=AUTH))
    requests = "agentos_sessions_http_requests_total"
    assert value(metrics, requests, operation="delete_session", status="204") == 1
    assert value(metrics, requests, operation="delete_session", status="404") == 2
    assert value(metrics, requests, operation="delete_session", status="401") == 1
    assert value(metrics, requests, operation="delete_session", status="400") == 1
    assert value(metrics, "agentos_sessions_http_request_duration_seconds_count", operation="delete_session") == 5
    assert value(metrics, "agentos_sessions_sessions_erased_total", db_id="default") == 1
    assert expected_rows["runs"] == 3
    for kind, count in expected_rows.items():
        assert value(metrics, "agentos_sessions_dependent_rows_erased_total", db_id="default", kind=kind) == count, kind
    errors = "agentos_sessions_errors_total"
    assert value(metrics, errors, error_code="NOT_FOUND") == 2
    assert value(metrics, errors, error_code="UNAUTHENTICATED") == 1
    assert value(metrics, errors, error_code="BAD_REQUEST") == 1


def test_labels_never_carry_raw_paths(make_client):
    client = make_client(metrics_public=True)
    client.get("/no/such/place-1")
    client.get("/no/such/place-2")
    client.get("/health")

    text = client.get("/metrics").text
    assert "place-1" not in text and "place-2" not in text
    metrics = samples(client.get("/metrics"))
    assert value(metrics, "agentos_sessions_http_requests_total", operation="unmatched", status="404") == 2
    assert value(metrics, "agentos_sessions_http_requests_total", operation="health", status="200") == 1


def test_every_response_carries_a_request_id(make_client):
    client = make_client()
    responses = [
        client.delete("/sessions/x", headers=AUTH),  # 404
        client.delete("/sessions/x"),  # 401
        client.get("/sessions/x"),  # 405
        client.get("/nowhere"),  # 404 from routing
        client.get("/health"),
        client.get("/openapi.yaml"),
    ]
    ids = [r.headers.get(REQUEST_ID_HEADER) for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)


def test_a_plain_incoming_request_id_is_kept_and_anything_else_replaced(make_client):
    client = make_client()
    kept = client.delete("/sessions/x", headers={**AUTH, REQUEST_ID_HEADER: "trace-42.a:b"})
    assert kept.headers[REQUEST_ID_HEADER] == "trace-42.a:b"
    for hostile in ("has space", "x" * 200, "line\tbreak", ""):
        replaced = client.delete("/sessions/x", headers={**AUTH, REQUEST_ID_HEADER: hostile})
        assert replaced.headers[REQUEST_ID_HEADER] not in (hostile, "")


@pytest.mark.live
def test_two_workers_report_the_same_totals_and_log_every_attempt(tmp_path, make_database_settings):
    """Under `serve --workers 2`, any worker's /metrics counts the requests of both."""
    import httpx

    from tests.support import KEY, LiveServer, database_toml

    with LiveServer(tmp_path, database_toml(make_database_settings()), workers=2) as server:
        ids = server.seed(12, runs=2)
        for session_id in ids:
            # A connection per request, so the kernel may hand each to either worker.
            with httpx.Client(base_url=server.url, headers=AUTH) as http:
                assert http.delete(f"/sessions/{session_id}").status_code == 204
        scrapes = []
        for _ in range(6):
            with httpx.Client(base_url=server.url, headers=AUTH) as http:
                scrapes.append(samples(http.get("/metrics")))
    log = server.log.read_text()

    for metrics in scrapes:
        assert value(metrics, "agentos_sessions_http_requests_total", operation="delete_session", status="204") == 12
        assert value(metrics, "agentos_sessions_sessions_erased_total", db_id="default") == 12
        assert value(metrics, "agentos_sessions_dependent_rows_erased_total", db_id="default", kind="runs") == 24
    audit = [line for line in log.splitlines() if '"event": "session.delete"' in line]
    assert len(audit) == 12 and all('"outcome": "erased"' in line for line in audit)
    assert KEY not in log


def access_record(target: str) -> logging.LogRecord:
    """An access log record as uvicorn makes one: the request target among its arguments."""
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", "DELETE", target, "1.1", 422), None)  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite"])  # no database involved
def test_the_access_log_keeps_the_contracts_query_parameters_and_redacts_the_rest():
    redactor = QueryRedactor(declared_query_parameters(Contract.load().document))
    assert redactor.keep == {"db_id", "table"}
    cases = {
        "/sessions/x": "/sessions/x",
        "/sessions/x?db_id=archive&table=t": "/sessions/x?db_id=archive&table=t",
        "/sessions/x?access_token=s3cret": "/sessions/x?[redacted]",
        "/sessions/x?s3cret": "/sessions/x?[redacted]",
        "/sessions/x?db_id=a&token=s3cret&db%5Fid=b&=s3cret": "/sessions/x?db_id=a&[redacted]&db%5Fid=b&[redacted]",
    }
    for target, logged in cases.items():
        record = access_record(target)
        assert redactor.filter(record) is True
        assert record.getMessage() == f'127.0.0.1:5000 - "DELETE {logged} HTTP/1.1" 422', target


@pytest.mark.live
@pytest.mark.parametrize("backend", ["sqlite"])  # the log lines are the same on either
def test_a_key_sent_in_a_query_string_reaches_no_log(tmp_path, make_database_settings):
    """With serve's access log on, a key sent as a query parameter (as some clients do)
    is in neither the access line, nor the audit line, nor any other line."""
    import httpx

    from tests.support import KEY, LiveServer, database_toml

    with LiveServer(tmp_path, database_toml(make_database_settings()), access_log=True) as server:
        [session_id] = server.seed(1)
        with httpx.Client(base_url=server.url) as http:
            answers = [
                http.delete(f"/sessions/{session_id}?access_token={KEY}"),
                http.delete(f"/sessions/{session_id}?db_id=default&{KEY}"),
                http.get(f"/health?token={KEY}"),
                http.get(f"/metrics?access_token={KEY}"),
                http.delete(f"/sessions/{session_id}?db_id=default", headers=AUTH),
            ]
    assert [a.status_code for a in answers] == [401, 401, 200, 401, 204]
    log = server.log.read_text()
    assert f'"DELETE /sessions/{session_id}?db_id=default&[redacted] HTTP/1.1" 401' in log, log
    assert '"GET /health?[redacted] HTTP/1.1" 200' in log
    assert len([line for line in log.splitlines() if '"event": "session.delete"' in line]) == 3
    assert KEY not in log
