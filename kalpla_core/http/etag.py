"""ETags for editable resources: reads carry one (304 on ``If-None-Match``), writes must send
it back in ``If-Match`` (428 when missing, 412 when the resource changed meanwhile)."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import after_this_request, request

from kalpla_core.http.problems import APIError


def etag_of(kind: str, ident: Any, version: Any) -> str:
    digest = hashlib.sha256(f"{kind}:{ident}:{version}".encode()).hexdigest()[:27]
    return f'"{digest}"'


def set_etag(etag: str) -> None:
    @after_this_request
    def _add(response: Any) -> Any:
        if response.status_code < 300:
            response.headers["ETag"] = etag
        return response


class NotModified(Exception):
    """Raised by :func:`conditional_get`; the app answers it with an empty 304."""

    def __init__(self, etag: str) -> None:
        self.etag = etag


def _tags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def conditional_get(etag: str) -> None:
    """Answer 304 when the client already has this version; else tag the response."""
    header = request.headers.get("If-None-Match")
    if header and (header.strip() == "*" or etag in _tags(header)):
        raise NotModified(etag)
    set_etag(etag)


def require_if_match(etag: str) -> None:
    header = request.headers.get("If-Match")
    if not header:
        raise APIError(428, "This write needs an If-Match header with the resource's ETag.",
                       "precondition-required")
    if header.strip() != "*" and etag not in _tags(header):
        raise APIError(412, "The resource changed since it was read; read it again.",
                       "precondition-failed", etag=etag)
