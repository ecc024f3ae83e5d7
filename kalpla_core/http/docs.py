"""The API docs UI at ``/api/docs``: Swagger UI 5 served by the app itself, so it renders
with no internet (no CDN) and under a strict Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_swagger_ui
from flask import Blueprint, render_template, send_from_directory

ASSETS = Path(flask_swagger_ui.__file__).parent / "dist"
_ALLOWED = {"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css",
            "index.css", "favicon-16x16.png", "favicon-32x32.png"}

docs = Blueprint("docs", __name__, template_folder="../templates")


@docs.get("/api/docs")
def docs_page() -> Any:
    return render_template("docs.html")


@docs.get("/api/docs/init.js")
def docs_init() -> Any:
    body = ('window.onload = function () {\n'
            '  window.ui = SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#swagger-ui",\n'
            '    deepLinking: true, presets: [SwaggerUIBundle.presets.apis,\n'
            '    SwaggerUIStandalonePreset], layout: "StandaloneLayout"});\n};\n')
    return body, 200, {"Content-Type": "text/javascript; charset=utf-8",
                       "Cache-Control": "public, max-age=3600"}


@docs.get("/api/docs/assets/<name>")
def docs_asset(name: str) -> Any:
    if name not in _ALLOWED:
        from werkzeug.exceptions import NotFound

        raise NotFound()
    return send_from_directory(ASSETS, name, max_age=86400)
