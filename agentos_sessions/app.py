"""The app factory: the contract, its handlers, storage and the error renderer, wired once."""

from __future__ import annotations

import asyncio
import sys
from contextlib import asynccontextmanager
from dataclasses import replace

from connexion import AsyncApp
from connexion.middleware import MiddlewarePosition
from connexion.options import SwaggerUIOptions
from connexion.resolver import RelativeResolver

from agentos_sessions import fast_lane, operators
from agentos_sessions.contract import Contract
from agentos_sessions.errors import register_error_renderer
from agentos_sessions.http import RequestGuard
from agentos_sessions.security import BEARER_INFO_FUNC, STATE_KEY, generate_key
from agentos_sessions.settings import ENV_SECURITY_KEY, Settings, load_settings, open_storage
from handlers.sessions import DELETE_OPERATION, erase_and_answer


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
    storage = open_storage(settings)

    @asynccontextmanager
    async def lifespan(_app):
        await asyncio.to_thread(storage.start)
        try:
            yield {"storage": storage, STATE_KEY: settings.security_key}
        finally:
            await asyncio.to_thread(storage.close)

    # Connexion would serve its converted 3.0 view; clients get the original below.
    app = AsyncApp(__name__, lifespan=lifespan, swagger_ui_options=SwaggerUIOptions(serve_spec=False, swagger_ui=False))
    contract.add_api(app, bearer_info_func=BEARER_INFO_FUNC, resolver=RelativeResolver("handlers"),
                     validate_responses=settings.validate_responses, strict_validation=True)  # fmt: skip
    contract.add_document_routes(app)
    register_error_renderer(app)
    app.metrics = operators.install(app, settings, storage)
    # Inside the exception middleware, so what they raise is rendered like any error.
    app.add_middleware(
        RequestGuard, position=MiddlewarePosition.BEFORE_SWAGGER, request_timeout_s=settings.request_timeout_ms / 1000
    )
    if settings.fast_lane:
        fast_lane.install(
            app, contract.document, operation_id=DELETE_OPERATION, answer=erase_and_answer, storage=storage,
            security_key=settings.security_key,
        )  # fmt: skip
    app.storage = storage
    return app


def create_app_from_environment() -> AsyncApp:
    """Entry point for ``uvicorn --factory``: settings from the environment and config file."""
    return create_app(load_settings())
