"""What the service offers its operators besides the contract: /health, /metrics, /docs,
request ids and the audit trail, installed on an app in one call."""

from __future__ import annotations

from connexion.exceptions import OAuthProblem
from connexion.middleware import MiddlewarePosition
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agentos_sessions import docs_ui
from agentos_sessions.health import HealthCheck, unhealthy_detail
from agentos_sessions.observability import Metrics, OperatorMiddleware, RoutingObserver
from agentos_sessions.security import presents_key
from agentos_sessions.settings import Settings
from handlers.errors import ApiError
from storage import Storage

# What /health tells a caller without the key: database ids and what is wrong with them
# say which databases exist, so only that something is.
UNHEALTHY = "A database cannot take an erase now"


def holds_key(request: Request, key: str) -> bool:
    """Like ``presents_key``, but a malformed Authorization header is only not the key:
    a load balancer's probe gets the status either way, never a 401."""
    try:
        return presents_key(request.headers, key)
    except OAuthProblem:
        return False


def install(app, settings: Settings, storage: Storage) -> Metrics:
    metrics = Metrics()
    health = HealthCheck(storage.databases.values(), settings.health_timeout_ms / 1000)

    async def health_endpoint(request: Request) -> Response:
        results = await health.check()
        detailed = settings.health_details_public or holds_key(request, settings.security_key)
        detail = unhealthy_detail(results, health.timeout)
        if detail is not None:
            # The renderer's body, without its error log: an unavailable database is
            # reported by the probe that found it, not once more per poll.
            body = ApiError(503, detail if detailed else UNHEALTHY).body()
            return Response(body, status_code=503, media_type="application/json")
        return JSONResponse({"status": "ok", "databases": results} if detailed else {"status": "ok"})

    def metrics_endpoint(request: Request) -> Response:
        if not settings.metrics_public and not presents_key(request.headers, settings.security_key):
            raise ApiError(401, "A valid bearer token is required for /metrics")
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    # Outside the exception middleware, so error responses get request ids and are counted.
    app.add_middleware(
        OperatorMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        metrics=metrics,
        security_key=settings.security_key,
    )
    app.add_middleware(RoutingObserver, position=MiddlewarePosition.BEFORE_SECURITY)
    app.add_url_rule("/health", "health", health_endpoint, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", metrics_endpoint, methods=["GET"])
    docs_ui.install(app)
    return metrics
