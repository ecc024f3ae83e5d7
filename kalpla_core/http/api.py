"""The project's flask-smorest ``Api`` and ``Blueprint``: cross-cutting behaviour lives here
once, so every core and plugin route gets the same errors, docs and conventions."""

from __future__ import annotations

from typing import Any

import flask_smorest
from werkzeug.exceptions import HTTPException

from kalpla_core.http.problems import PROBLEM_JSON, handle_http_exception


class Api(flask_smorest.Api):
    def handle_http_exception(self, error: HTTPException) -> Any:  # type: ignore[override]
        return handle_http_exception(error)

    def _register_responses(self) -> None:
        super()._register_responses()
        # Error responses are documented as problem+json, not flask-smorest's own shape.
        self.spec.components.schema("Problem", {
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
                "errors": {"type": "object"}, "request_id": {"type": "string"},
            },
        })
        for name, response in list(self.spec.components.responses.items()):
            content = response.get("content")
            if content and "application/json" in content:
                response["content"] = {PROBLEM_JSON: {"schema": {"$ref":
                                                                  "#/components/schemas/Problem"}}}
            self.spec.components.responses[name] = response


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, documented error responses in problem+json."""
