"""Cursor (keyset) pagination: ``limit`` and an opaque, signed ``cursor``; a ``Link`` header
points at the next page. A page costs one indexed query whatever the position in the list."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

from flask import after_this_request, current_app, request
from marshmallow import Schema, fields, validate
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from kalpla_core.http.problems import APIError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

SortKey = tuple[InstrumentedAttribute[Any], Literal["asc", "desc"]]


class PageArgs(Schema):
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(1, MAX_LIMIT),
                           metadata={"description": f"Items per page (1–{MAX_LIMIT})."})
    cursor = fields.String(load_default=None, validate=validate.Length(max=2000),
                           metadata={"description": "Opaque cursor from the previous page."})


# By item schema class, not by name: two plugins may both have a ``SessionSchema``.
_page_schemas: dict[type[Schema], type[Schema]] = {}


def page_of(item_schema: type[Schema]) -> type[Schema]:
    """The response schema of a page of ``item_schema`` items."""
    if item_schema not in _page_schemas:
        name = f"{item_schema.__name__.removesuffix('Schema')}PageSchema"
        _page_schemas[item_schema] = Schema.from_dict({
            "items": fields.List(fields.Nested(item_schema), required=True),
            "next_cursor": fields.String(allow_none=True,
                                         metadata={"description": "null on the last page"}),
        }, name=name)
    return _page_schemas[item_schema]


@dataclass
class Page:
    items: list[Any]
    next_cursor: str | None


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"dt"}:
        return datetime.fromisoformat(value["dt"])
    return value


def _signature(payload: bytes, secret: str) -> str:
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _sort_id(keys: Sequence[SortKey]) -> str:
    return ",".join(f"{k.class_.__tablename__}.{k.key}:{d}" for k, d in keys)


def encode_cursor(values: Sequence[Any], keys: Sequence[SortKey], secret: str) -> str:
    payload = json.dumps({"k": _sort_id(keys), "v": [_encode_value(v) for v in values]},
                         separators=(",", ":")).encode()
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{body}.{_signature(payload, secret)}"


def decode_cursor(cursor: str, keys: Sequence[SortKey], secret: str) -> list[Any]:
    invalid = APIError(400, "The cursor is invalid or belongs to another listing.",
                       "invalid-cursor")
    try:
        body, sig = cursor.split(".", 1)
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise invalid from None
    if not hmac.compare_digest(sig, _signature(payload, secret)):
        raise invalid
    data = json.loads(payload)
    if data.get("k") != _sort_id(keys) or len(data.get("v", [])) != len(keys):
        raise invalid
    return [_decode_value(v) for v in data["v"]]


def _after(keys: Sequence[SortKey], values: Sequence[Any]) -> Any:
    """Rows strictly after ``values`` in the order ``keys`` (mixed directions allowed)."""
    clauses = []
    for i, (col, direction) in enumerate(keys):
        equal = [keys[j][0] == values[j] for j in range(i)]
        beyond = col > values[i] if direction == "asc" else col < values[i]
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


def paginate(session: Session, stmt: Select[Any], keys: Sequence[SortKey], limit: int,
             cursor: str | None, secret: str | None = None) -> Page:
    """One page of ``stmt`` ordered by ``keys`` (the last key must be unique, e.g. the id)."""
    secret = secret or current_app.config["SECRET_KEY"]
    if cursor:
        stmt = stmt.where(_after(keys, decode_cursor(cursor, keys, secret)))
    stmt = stmt.order_by(*[c.asc() if d == "asc" else c.desc() for c, d in keys])
    rows = list(session.scalars(stmt.limit(limit + 1)))
    items, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more:
        last = items[-1]
        next_cursor = encode_cursor([getattr(last, c.key) for c, _ in keys], keys, secret)
    return Page(items, next_cursor)


def page_response(page: Page) -> dict[str, Any]:
    """The page as a response body, with a ``Link: <…>; rel="next"`` header when there is more."""
    if page.next_cursor:
        args = request.args.to_dict(flat=False)
        args["cursor"] = [page.next_cursor]
        url = f"{request.base_url}?{urlencode(args, doseq=True)}"

        @after_this_request
        def _link(response: Any) -> Any:
            response.headers["Link"] = f'<{url}>; rel="next"'
            return response

    return {"items": page.items, "next_cursor": page.next_cursor}
