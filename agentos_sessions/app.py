"""The app factory: the contract, its handlers, storage and the error renderer, wired once."""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from dataclasses import replace

from connexion import AsyncApp
from connexion.options import SwaggerUIOptions
from connexion.resolver import RelativeResolver
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.routing import Router
from starlette.responses import Response

from agentos_sessions import fast_lane, operators
from agentos_sessions.contract import Contract
from agentos_sessions.errors import register_error_renderer
from agentos_sessions.security import bearer_handler_for, generate_key
from agentos_sessions.settings import ENV_SECURITY_KEY, Settings, load_settings
from storage import Storage


class _AnyPathConvertor(PathConvertor):
    regex = "(?s:.*)"


# Connexion mounts the API, and Starlette's mount pattern ("path" convertor, ".*") stops
# at a newline, so a session id holding one could never be erased. Routing must match
# every id the database can hold; registered before any app compiles its routes.
register_url_convertor("path", _AnyPathConvertor())


def exact_paths_only(connexion_app) -> None:
    """Turn off Starlette's trailing-slash redirects in every router of a started app.

    ``DELETE /sessions/x/`` would be answered 307 to ``/sessions/x`` (built from the
    Host header), inviting a client to erase a session it did not name; unknown paths
    are 404 NOT_FOUND instead. Connexion builds its routers when the app first runs,
    so this is called from the lifespan.
    """
    pending = [getattr(layer, "router", None) for layer in connexion_app.middleware_stack or ()]
    while pending:
        router = pending.pop()
        if isinstance(router, Router):
            router.redirect_slashes = False
            for route in router.routes:
                inner = getattr(route, "app", None)
                pending.extend([inner, getattr(inner, "router", None)])


def announce_generated_key(settings: Settings, stream=sys.stderr) -> Settings:
    """Secure by default: without a configured key, make one and say so exactly once."""
    if settings.security_key:
        return settings
    key = generate_key()
    url = f"http://{settings.host}:{settings.port}/sessions/<session_id>"
    print(
        f"No {ENV_SECURITY_KEY} was set, so this server generated a key for this run:\n"
        f"  {ENV_SECURITY_KEY}={key}\n"
        f"Try it:\n"
        f"  curl -i -X DELETE -H 'Authorization: Bearer {key}' {url}\n"
        f"Set {ENV_SECURITY_KEY} to keep a key across restarts.",
        file=stream,
        flush=True,
    )
    return replace(settings, security_key=key)


def create_app(settings: Settings | None = None, *, contract: Contract | None = None) -> AsyncApp:
    settings = announce_generated_key(settings or load_settings())
    contract = contract or Contract.load()
    storage = Storage(settings)

    @asynccontextmanager
    async def lifespan(connexion_app):
        exact_paths_only(connexion_app)
        await run_in_threadpool(storage.start)
        try:
            yield {"storage": storage}
        finally:
            await run_in_threadpool(storage.close)

    app = AsyncApp(
        __name__,
        lifespan=lifespan,
        # Connexion would serve its converted 3.0 view; clients get the original below.
        swagger_ui_options=SwaggerUIOptions(serve_spec=False, swagger_ui=False),
        security_map={"bearer": bearer_handler_for(settings.security_key)},
    )
    app.add_api(
        contract.openapi30,
        resolver=RelativeResolver("handlers"),
        validate_responses=settings.validate_responses,
        strict_validation=True,
    )
    contract_json = json.dumps(contract.document, indent=2).encode()

    def openapi_json(_request: Request) -> Response:
        return Response(contract_json, media_type="application/json")

    def openapi_yaml(_request: Request) -> Response:
        return Response(contract.raw, media_type="application/yaml")

    app.add_url_rule("/openapi.json", "openapi_json", openapi_json, methods=["GET"])
    app.add_url_rule("/openapi.yaml", "openapi_yaml", openapi_yaml, methods=["GET"])
    register_error_renderer(app)
    app.metrics = operators.install(app, settings, storage)
    if settings.fast_lane:
        fast_lane.install(app, contract.document, storage, settings.security_key)
    app.storage = storage
    return app


def create_app_from_environment() -> AsyncApp:
    """Entry point for ``uvicorn --factory``: settings from the environment and config file."""
    return create_app(load_settings())
