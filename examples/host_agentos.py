"""Host AgentOS 3.1.10's full OpenAPI 3.1 document with Connexion, stub handlers behind it.

Every request is routed, its bearer key checked and its parameters and body validated by
the document's own 3.1 schemas; then the stub answers 501 Not Implemented. The original
document is served at /openapi.json and /openapi.yaml, and Swagger UI over it at /docs.

    pip install -e .
    OS_SECURITY_KEY=secret python examples/host_agentos.py --port 7778
    curl -H 'Authorization: Bearer secret' 'http://127.0.0.1:7778/sessions?type=agent'

``agentos-3.1.10-openapi.json`` beside this file is AgentOS's document as
``AgentOS(...).get_app().openapi()`` returns it (``tests/test_examples.py`` regenerates it).
"""

from __future__ import annotations

import argparse
import os
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from connexion import AsyncApp
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver
from starlette.responses import JSONResponse

from agentos_sessions import docs_ui
from agentos_sessions.contract import Contract
from agentos_sessions.errors import register_error_renderer
from agentos_sessions.security import BEARER_INFO_FUNC, STATE_KEY, generate_key

DOCUMENT = Path(__file__).resolve().with_name("agentos-3.1.10-openapi.json")
KEY_ENV = "OS_SECURITY_KEY"


def create_app(stub_status: int = 501) -> AsyncApp:
    key = os.environ.get(KEY_ENV) or generate_key()

    @asynccontextmanager
    async def lifespan(_app):
        yield {STATE_KEY: key}  # where the service's own bearer check finds the key

    def stub(**_arguments):
        # Reached only by a request that passed security and validation; an explicit
        # response, as Connexion cannot pick among an operation's several media types.
        return JSONResponse({"detail": "Not implemented by this stub", "error_code": "NOT_IMPLEMENTED"}, stub_status)

    contract = Contract.load(DOCUMENT)
    app = AsyncApp(__name__, lifespan=lifespan, swagger_ui_options=SwaggerUIOptions(serve_spec=False, swagger_ui=False))
    # Every operationId resolves to the stub, so nothing is skipped on the way to it (with
    # Connexion's resolver_error=501 alone, unresolved operations skip security and validation).
    contract.add_api(app, resolver=Resolver(lambda _operation_id: stub), bearer_info_func=BEARER_INFO_FUNC,
                     strict_validation=True)  # fmt: skip
    contract.add_document_routes(app)
    docs_ui.install(app)
    register_error_renderer(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7778)
    arguments = parser.parse_args()
    if not os.environ.get(KEY_ENV):
        os.environ[KEY_ENV] = generate_key()
        print(f"{KEY_ENV}={os.environ[KEY_ENV]}", flush=True)
    uvicorn.run(create_app(), host=arguments.host, port=arguments.port)


if __name__ == "__main__":
    main()
