"""What operators see of every request: its id, its metrics and, for deletes, its audit line.

One middleware outside Connexion's exception handling sees every response, errors too.
Inner layers get a copy of the scope, so what routing and the handler found reaches it
through the request's ``RequestRecord``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote, unquote_plus

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentos_sessions.security import key_fingerprint
from handlers.errors import error_code_for
from handlers.sessions import DELETE_OPERATION, RequestRecord, current_record
from storage import AuditEntry, ErasedRows

REQUEST_ID_HEADER = "X-Request-ID"
AUDIT_LOGGER = "agentos_sessions.audit"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

audit_logger = logging.getLogger(AUDIT_LOGGER)

# A caller's id is echoed into logs and headers, so only a plain token is accepted;
# anything else is replaced rather than sanitised.
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Caller-supplied values end up in log lines; they are logged, but never unbounded.
_LOGGED_VALUE_LIMIT = 512


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _ACCEPTABLE_REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def multiprocess_metrics() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


class Metrics:
    """Prometheus metrics for one app, in a registry of its own so apps in one process
    (tests) never collide. With several workers (``PROMETHEUS_MULTIPROC_DIR`` set before
    they start) values go to per-process files and any worker's exposition merges them."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self._children: dict[tuple, object] = {}
        target = None if multiprocess_metrics() else self.registry
        self.requests = Counter("agentos_sessions_http_requests", "HTTP requests answered, by operation and status.",
                                ["operation", "status"], registry=target)  # fmt: skip
        self.latency = Histogram("agentos_sessions_http_request_duration_seconds",
                                 "Time from request to the end of the response, by operation.",
                                 ["operation"], registry=target)  # fmt: skip
        self.sessions_erased = Counter("agentos_sessions_sessions_erased", "Sessions erased, by database id.",
                                       ["db_id"], registry=target)  # fmt: skip
        self.rows_erased = Counter("agentos_sessions_dependent_rows_erased",
                                   "Rows erased along with their session (runs, transcripts, ...), by database id "
                                   "and kind.", ["db_id", "kind"], registry=target)  # fmt: skip
        self.errors = Counter("agentos_sessions_errors", "Error responses, by the error_code their body carries.",
                              ["error_code"], registry=target)  # fmt: skip

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        if multiprocess_metrics():
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _child(self, metric, *labels: str):
        # prometheus_client validates and locks on every labels() call; every label here is
        # bounded (operations, statuses, configured database ids, kinds), so children are kept.
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: RequestRecord, status: int, seconds: float) -> None:
        self._child(self.requests, record.operation, str(status)).inc()
        self._child(self.latency, record.operation).observe(seconds)
        if status >= 400:
            # The renderer derives every body's error_code from the status the same way.
            self._child(self.errors, error_code_for(status)).inc()
        if record.erased is not None:
            self._child(self.sessions_erased, record.db_id or "").inc()
            for kind, count in record.erased.counts.items():
                if kind != "sessions":
                    self._child(self.rows_erased, record.db_id or "", kind).inc(count)


def prepare_multiprocess_dir() -> str | None:
    """The shared metrics directory, emptied before workers start (stale files would double
    count); returned when made here, for the caller to remove, None when the operator named it."""
    import tempfile

    named = os.environ.get(MULTIPROCESS_ENV)
    if named:
        path = Path(named)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    made = tempfile.mkdtemp(prefix="agentos-sessions-metrics-")
    os.environ[MULTIPROCESS_ENV] = made
    return made


def operation_of(scope: Scope) -> str | None:
    """A bounded label: the spec's operationId, else the route's name, never the raw path."""
    operation_id = scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id")
    if operation_id:
        # The resolver qualifies it ("handlers.delete_session"); the spec's name is the last part.
        return operation_id.rsplit(".", 1)[-1]
    return getattr(scope.get("route"), "name", None)


class RoutingObserver:
    """Just after Connexion's routing: tells the current record which operation this is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = current_record.get()
        if record is not None and scope["type"] == "http":
            # Taken before security may refuse the request below; the id, routed as sent, is
            # only named in the audit line here (the handler decodes it strictly).
            record.operation = operation_of(scope) or record.operation
            session_id = scope.get("path_params", {}).get("session_id")
            record.session_id = unquote(session_id) if session_id is not None else None
        try:
            await self.app(scope, receive, send)
        finally:
            if record is not None and scope["type"] == "http":
                # Routes outside the spec are only matched further in, on this same scope.
                record.operation = operation_of(scope) or record.operation


def _clip(value: str | None) -> str | None:
    if value is None or len(value) <= _LOGGED_VALUE_LIMIT:
        return value
    return value[:_LOGGED_VALUE_LIMIT] + "...(truncated)"


def _first_query_value(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get(name)
    return values[0] if values else None


def audit_record(scope: Scope, record: RequestRecord, status: int, seconds: float) -> dict:
    """The audit line's fields: identifiers and counts only, never conversation content or the key."""
    if record.storage_answered:
        outcome = "erased" if record.erased is not None else "not_found"
    else:
        outcome = error_code_for(status)
    return {
        "event": "session.delete",
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": record.request_id,
        # Only a request that passed security is known to come from the key's holder.
        "caller": record.caller if status != 401 else None,
        # What the handler resolved, else what the caller asked for.
        "db_id": _clip(record.db_id if record.db_id is not None else _first_query_value(scope, "db_id")),
        "table": _clip(record.table if record.table is not None else _first_query_value(scope, "table")),
        "session_id": _clip(record.session_id),
        "outcome": outcome,
        "status": status,
        "rows_erased": dict(record.erased.counts) if record.erased is not None else {},
        "duration_ms": round(seconds * 1000, 3),
    }


def sweep_audit_entry() -> AuditEntry:
    """One orphan sweep: an id of its own, shared by its lines and rows; the caller is the
    operator at the command line, who holds no key to fingerprint."""
    return AuditEntry(request_id=f"orphans-{uuid.uuid4().hex}", caller="cli")


def audit_sweep(entry: AuditEntry, db_id: str, table: str, session_id: str, rows: ErasedRows) -> None:
    """The audit line of an orphan sweep of one id, in the shape of an erase's."""
    audit_logger.info(json.dumps({
        "event": "session.orphans_erased", "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": entry.request_id, "caller": entry.caller, "db_id": db_id, "table": table,
        "session_id": _clip(session_id), "outcome": "orphans_erased", "rows_erased": dict(rows.counts),
    }, ensure_ascii=False))  # fmt: skip


def audit_lines_to(stream) -> None:
    """Outside ``serve`` (a command's own run), audit lines go to ``stream`` as bare JSON."""
    if not audit_logger.handlers:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        audit_logger.addHandler(handler)
        audit_logger.setLevel(logging.INFO)
        audit_logger.propagate = False


class OperatorMiddleware:
    """Outermost of the app's own layers: request ids, metrics and the audit line."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, security_key: str) -> None:
        self.app = app
        self.metrics = metrics
        # Any request that gets past security was made with this key: it is the only one.
        self.caller = key_fingerprint(security_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        record = RequestRecord(request_id=request_id, caller=self.caller)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        token = current_record.set(record)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_record.reset(token)
            seconds = time.perf_counter() - started
            self.metrics.observe(record, status, seconds)
            if record.operation == DELETE_OPERATION:
                audit_logger.info(json.dumps(audit_record(scope, record, status, seconds), ensure_ascii=False))


REDACTED = "[redacted]"


def declared_query_parameters(document: dict) -> frozenset[str]:
    """The query parameters the contract names, on any of its operations."""
    return frozenset(
        parameter["name"]
        for path_item in document.get("paths", {}).values()
        for operation in path_item.values()
        if isinstance(operation, dict)
        for parameter in operation.get("parameters", [])
        if parameter.get("in") == "query"
    )


class QueryRedactor(logging.Filter):
    """Access log lines keep the contract's query parameters and write every other one,
    name and value, as ``[redacted]``: a caller may send the key as ``?access_token=...``,
    and a bare ``?<key>`` is all name. Any argument of the record with a ``?`` is the
    request target (uvicorn quotes a ``?`` in the path itself)."""

    def __init__(self, keep: Iterable[str] = ()):
        super().__init__()
        self.keep = frozenset(keep)

    def redact(self, target: str) -> str:
        path, _, query = target.partition("?")
        parts = [part if unquote_plus(part.partition("=")[0]) in self.keep else REDACTED for part in query.split("&")]
        return f"{path}?{'&'.join(parts)}"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        return True


def logging_config(level: str = "info") -> dict:
    """uvicorn's logging, plus this service's loggers; audit lines go to stdout as bare JSON,
    and access lines without the query parameters the contract does not declare."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    from agentos_sessions.contract import contract_path, parse_document

    config = copy.deepcopy(LOGGING_CONFIG)
    # Only the names are needed: the document, not the compiled contract.
    keep = sorted(declared_query_parameters(parse_document(contract_path().read_bytes())))
    config.setdefault("filters", {})["redact_query"] = {"()": f"{__name__}.QueryRedactor", "keep": keep}
    config["loggers"]["uvicorn.access"]["filters"] = ["redact_query"]
    config["formatters"]["audit"] = {"format": "%(message)s"}
    config["handlers"]["audit"] = {"formatter": "audit", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    config["loggers"][AUDIT_LOGGER] = {"handlers": ["audit"], "level": "INFO", "propagate": False}
    for name in ("agentos_sessions", "storage"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
