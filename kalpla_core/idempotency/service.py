"""Idempotency keys: a request sent again with the same ``Idempotency-Key`` gets the first
answer again instead of doing the work twice. No Flask here (see
:mod:`kalpla_core.idempotency.http` for the route decorator).

A key belongs to one caller and one route (method and path). The first request with it claims
the key by inserting its row inside the request's own transaction, and records its response
there, so the key, the work and the stored answer commit together or not at all:

- the same key with the same body is answered with the stored response;
- the same key with another body is refused (422, ``idempotency-key-reused``);
- a second request arriving while the first is still running waits on the row's unique index
  (PostgreSQL) or the database write lock (SQLite) and then replays the stored answer; were it
  to find the key claimed but unanswered, it is told to retry (409,
  ``idempotency-key-in-use``);
- a request that fails (an error status) rolls back, and the key with it: the client may
  retry with the same key.

Keys are kept for :data:`KEY_TTL`; an older key is forgotten when it is used again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kalpla_core.http.problems import APIError
from kalpla_core.idempotency.models import IdempotencyKey

HEADER = "Idempotency-Key"
KEY_TTL = timedelta(hours=24)
KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII, as in the IETF draft's examples
# Response headers kept with the stored answer (others are set anew on every response).
REPLAYED_HEADERS = ("Content-Type", "Location", "ETag")


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    headers: dict[str, str]


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise APIError(400, f"The {HEADER} header must be 1 to 200 visible ASCII characters.",
                       "invalid-idempotency-key")
    return key


def fingerprint(method: str, path: str, content_type: str, body: bytes) -> str:
    """A digest of what the request asks for. JSON bodies are compared by content, so the
    same object sent with other spacing or key order is the same request."""
    payload: Any = body.decode("utf-8", "replace")
    if "json" in content_type.lower() and body.strip():
        with contextlib.suppress(ValueError):  # not JSON after all: compared as text
            payload = json.loads(body)
    canonical = json.dumps([method.upper(), path, content_type.split(";")[0].strip().lower(),
                            payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _find(session: Session, owner: str, scope: str, key: str) -> IdempotencyKey | None:
    return session.scalar(select(IdempotencyKey).where(
        IdempotencyKey.owner == owner, IdempotencyKey.scope == scope, IdempotencyKey.key == key))


def claim(session: Session, owner: str, scope: str, key: str, request_hash: str,
          now: datetime) -> IdempotencyKey | StoredResponse:
    """Claim ``key`` for this request (the row to :func:`record` the response in), or the
    stored response of the request that claimed it first.

    Call it first thing in the request's transaction: losing a race rolls ``session`` back."""
    found = _find(session, owner, scope, key)
    if found is not None and found.created_at <= now - KEY_TTL:
        session.delete(found)  # forgotten: the key starts over
        session.flush()
        found = None
    if found is None:
        row = IdempotencyKey(owner=owner, scope=scope, key=key, request_hash=request_hash,
                             created_at=now)
        session.add(row)
        try:
            session.flush()
            return row
        except IntegrityError:
            # Another request claimed it and has committed; what it stored is read below.
            session.rollback()
            found = _find(session, owner, scope, key)
            if found is None:
                raise _in_use() from None
    if found.request_hash != request_hash:
        raise APIError(422, f"This {HEADER} was used with another request; use a new key "
                       "for a new request.", "idempotency-key-reused")
    if found.status_code is None or found.response_body is None:
        raise _in_use()
    stored = json.loads(found.response_body)
    return StoredResponse(found.status_code, stored["body"], stored["headers"])


def _in_use() -> APIError:
    return APIError(409, f"A request with this {HEADER} is still being processed; retry "
                    "shortly.", "idempotency-key-in-use", headers={"Retry-After": "1"})


def record(row: IdempotencyKey, status: int, body: str, headers: dict[str, str]) -> None:
    """Store the response of the request that claimed ``row`` (committed with its work)."""
    row.status_code = status
    row.response_body = json.dumps({"body": body, "headers": {
        k: v for k, v in headers.items() if k in REPLAYED_HEADERS}})


def purge_expired(session: Session, now: datetime) -> int:
    """Delete the keys older than :data:`KEY_TTL`; returns how many."""
    result: Any = session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.created_at <= now - KEY_TTL))
    return int(result.rowcount or 0)
