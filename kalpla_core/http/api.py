"""The project's flask-smorest ``Api`` and ``Blueprint``: cross-cutting behaviour lives here
once, so every core and plugin route gets the same errors, docs and conventions."""

from __future__ import annotations

import http
import re
from typing import Any

import flask_smorest
from flask_smorest.utils import prepare_response
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

from kalpla_core.http.problems import PROBLEM_JSON, handle_http_exception


class ProblemSchema(Schema):
    """RFC 9457 problem details, as every error response carries them."""

    type = fields.String(required=True, metadata={"description": "URI of the problem type"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    errors = fields.Dict(metadata={"description": "Field errors of a validation problem"})
    request_id = fields.String()


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Any:  # type: ignore[override]
        return handle_http_exception(error)

    def _register_responses(self) -> None:
        """Document every error status as problem+json (flask-smorest's own says JSON)."""
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
                prepare_response(response, self.spec, PROBLEM_JSON)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_JSON)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)


_RST_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)


def markdown_literals(text: str) -> str:
    """reST literals of docstrings (double backquotes) as Markdown code spans (single ones),
    which is what OpenAPI summaries and descriptions are rendered as."""
    return _RST_LITERAL.sub(r"`\1`", text)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint; error responses documented as problem+json by the Api, and
    route docstrings (written in reST, like the rest of the code) shown as Markdown."""

    def _store_endpoint_docs(self, endpoint: str, obj: Any, parameters: Any, tags: Any,
                             **options: Any) -> None:
        super()._store_endpoint_docs(endpoint, obj, parameters, tags, **options)
        for key, doc in self._docs[endpoint].items():
            if key == "parameters":
                continue
            info = doc.get("docstring", {})
            for part in ("summary", "description"):
                if info.get(part):
                    info[part] = markdown_literals(info[part])
