"""RFC 9457 problem details: every error the API returns has this shape."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from flask import Response, current_app, g, json, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger("kalpla.http")

PROBLEM_JSON = "application/problem+json"


class APIError(Exception):
    """An error with an HTTP status, raised by services or routes and rendered as a problem.

    ``code`` becomes the problem ``type`` (``urn:kalpla:problem:<code>``) so clients can branch
    on it; extra keyword arguments become extension members of the problem.
    """

    def __init__(self, status: int, detail: str, code: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.headers = headers or {}
        self.extra = extra


def abort(status: int, detail: str, code: str | None = None, **extra: Any) -> NoReturn:
    raise APIError(status, detail, code, **extra)


def problem(status: int, detail: str | None = None, code: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "type": f"urn:kalpla:problem:{code}" if code else "about:blank",
        "title": HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extra.items() if v is not None})
    rid = g.get("request_id")
    if rid:
        body["request_id"] = rid
    resp = current_app.response_class(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _validation_errors(exc: HTTPException) -> dict[str, Any] | None:
    """Field errors that webargs/flask-smorest attach to a 422, keyed by field (the request
    location, ``json`` or ``query``, is folded away when there is only one)."""
    data = getattr(exc, "data", None) or {}
    messages = data.get("messages")
    if not messages:
        return None
    if isinstance(messages, dict) and len(messages) == 1:
        (only,) = messages.values()
        if isinstance(only, dict):
            return only
    return messages


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers: dict[str, str] = {}
    if status == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    errors = _validation_errors(exc) if status in (400, 422) else None
    detail = _default_detail(status, exc)
    if errors:
        detail = "The request has invalid fields; see errors."
        return problem(status, detail, "validation", headers, errors=errors)
    return problem(status, detail, None, headers)


def _default_detail(status: int, exc: HTTPException) -> str:
    if status == 404:
        return f"Nothing is found at {request.path}."
    if status == 405:
        return f"{request.method} is not allowed on {request.path}."
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return f"The request body is larger than the limit of {limit} bytes."
    return exc.description or HTTP_STATUS_CODES.get(status, "Error")


def handle_api_error(exc: APIError) -> Response:
    return problem(exc.status, exc.detail, exc.code, exc.headers, **exc.extra)


def handle_unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    log.exception("unhandled error", extra={"path": request.path, "method": request.method})
    return problem(500, "An internal error occurred; it has been logged.", "internal")
