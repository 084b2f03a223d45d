"""GET /docs: Swagger UI 5 (the ``swagger-ui-py`` package) over ``openapi.yaml`` as published,
from local assets only: no CDN, no validator badge. ``swagger-ui-bundle``'s Swagger UI 4
cannot render 3.1, and Connexion's own UI would show the converted 3.0 copy."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from handlers.errors import ApiError

ASSETS_PACKAGE = "swagger_ui"
# Only these files are served: a fixed list, so no path from the URL reaches the disk.
ASSET_TYPES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "index.css": "text/css",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

# Relative URLs throughout, so the page also works when the app is mounted under a prefix.
PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Agno AgentOS sessions API</title>
    <link rel="stylesheet" type="text/css" href="docs/assets/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="docs/assets/index.css">
    <link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png" sizes="32x32">
  </head>
  <body>
    <div id="swagger-ui" data-spec-url="openapi.yaml"></div>
    <script src="docs/assets/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="docs/assets/init.js" charset="UTF-8"></script>
  </body>
</html>
"""

INIT_SCRIPT = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No call to the public validator: this page must work without the internet.
    validatorUrl: null,
    // The bearer key stays in this tab's memory, never in localStorage.
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""


@lru_cache(maxsize=1)
def assets_dir() -> Path:
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Swagger UI assets are missing: install the swagger-ui-py package")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def docs_page(_request: Request) -> Response:
    return HTMLResponse(PAGE)


def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "init.js":
        return Response(INIT_SCRIPT, media_type="text/javascript")
    if name not in ASSET_TYPES:
        raise ApiError(404, "Not Found")
    return FileResponse(assets_dir() / name, media_type=ASSET_TYPES[name])


def install(app) -> None:
    app.add_url_rule("/docs", "docs", docs_page, methods=["GET"])
    app.add_url_rule("/docs/assets/{name}", "docs_asset", docs_asset, methods=["GET"])
