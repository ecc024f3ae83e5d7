"""Institution API keys: created by an admin with scopes and a rate plan, shown once, stored
as SHA-256, revocable; and the authenticator that accepts them. No Flask here.

A key reads ``klp_<prefix>_<secret>``: the prefix (public, unique) finds the row, the hash of
the whole key proves it. Requests made with a key act for its creator, limited to its scopes
and to its institution (see :class:`kalpla_core.identity.authn.Principal`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from kalpla_core.audit.service import record
from kalpla_core.db import utcnow
from kalpla_core.http.problems import APIError
from kalpla_core.identity.authn import AuthenticationError, Principal, active_user, bearer_token
from kalpla_core.identity.models import APIKey, User
from kalpla_core.institutions.models import Institution

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

KEY_PREFIX = "klp_"
API_KEY_HEADER = "X-API-Key"


@dataclass(frozen=True)
class RatePlan:
    name: str
    limit: int  # requests per window
    window: int  # seconds
    description: str

    @property
    def policy(self) -> str:
        """The ``RateLimit-Policy`` value: ``600;w=60``."""
        return f"{self.limit};w={self.window}"


# The fixed set of plans an admin chooses from (documented in the API schema).
RATE_PLANS: dict[str, RatePlan] = {plan.name: plan for plan in (
    RatePlan("standard", 600, 60, "600 requests per minute"),
    RatePlan("bulk", 6000, 60, "6000 requests per minute, for batch integrations"),
)}


@dataclass
class CreatedKey:
    """A new key and its plaintext, which exists only in this answer."""

    api_key: APIKey
    key: str

    def __getattr__(self, name: str) -> Any:
        # Reads like the row, plus ``key``: one schema dumps both.
        return getattr(self.api_key, name)


def key_hash(key: str) -> str:
    # Keys carry 256 random bits: a fast hash suffices, as for refresh tokens.
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> tuple[str, str]:
    prefix = secrets.token_hex(6)
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def looks_like_key(value: str | None) -> bool:
    return bool(value) and value.startswith(KEY_PREFIX)  # type: ignore[union-attr]


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries (``X-API-Key``, or a Bearer credential starting with
    ``klp_``), or None: other credentials are left to other authenticators."""
    for value in (headers.get(API_KEY_HEADER), bearer_token(headers)):
        if looks_like_key(value):
            return value.strip()  # type: ignore[union-attr]
    return None


def _check_scopes(session: Session, kalpla: Kalpla, creator: User, institution: Institution,
                  scopes: Iterable[str]) -> list[str]:
    clean = sorted(set(scopes))
    unknown = [s for s in clean if s not in kalpla.permissions.permissions]
    if unknown:
        raise APIError(422, "Scopes must be registered permission names.", "validation",
                       errors={"scopes": [f"Unknown permissions: {', '.join(unknown)}"]})
    missing = [s for s in clean
               if not kalpla.has_permission(session, creator, s, institution.id)]
    if missing:
        raise APIError(403, "A key can only carry permissions you hold in this institution; "
                       f"you lack {', '.join(missing)}.", "scope-not-held")
    return clean


def create_key(session: Session, kalpla: Kalpla, institution: Institution, creator: User,
               name: str, scopes: Iterable[str], rate_plan: str = "standard", *,
               ip: str = "", request_id: str = "") -> CreatedKey:
    if rate_plan not in RATE_PLANS:
        raise APIError(422, "Unknown rate plan.", "validation",
                       errors={"rate_plan": [f"One of {', '.join(RATE_PLANS)}."]})
    clean = _check_scopes(session, kalpla, creator, institution, scopes)
    prefix, key = _new_key()
    row = APIKey(institution_id=institution.id, name=name, prefix=prefix, key_hash=key_hash(key),
                 scopes=clean, rate_plan=rate_plan, created_by=creator.id)
    session.add(row)
    session.flush()
    record(session, "apikey.created", actor_id=creator.id, institution_id=institution.id,
           target_type="api_key", target_id=row.id, ip=ip, request_id=request_id,
           name=name, prefix=prefix, scopes=clean, rate_plan=rate_plan)
    return CreatedKey(row, key)


def keys_query(institution_id: str, include_revoked: bool = False) -> Select[tuple[APIKey]]:
    stmt = select(APIKey).where(APIKey.institution_id == institution_id)
    if not include_revoked:
        stmt = stmt.where(APIKey.revoked_at.is_(None))
    return stmt


def get_key(session: Session, institution_id: str, key_id: str) -> APIKey:
    row = session.get(APIKey, key_id)
    if row is None or row.institution_id != institution_id:
        raise APIError(404, "There is no such API key in this institution.", "not-found")
    return row


def revoke_key(session: Session, institution_id: str, key_id: str, actor_id: str | None, *,
               ip: str = "", request_id: str = "") -> APIKey:
    """Revoke the key (idempotent: revoking a revoked key changes and records nothing)."""
    row = get_key(session, institution_id, key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record(session, "apikey.revoked", actor_id=actor_id, institution_id=institution_id,
               target_type="api_key", target_id=row.id, ip=ip, request_id=request_id,
               name=row.name, prefix=row.prefix)
        session.flush()
    return row


def revoke_keys_of(session: Session, user_id: str) -> int:
    """Revoke every live key a user created (their account is being deleted)."""
    result = session.execute(update(APIKey).where(APIKey.created_by == user_id,
                                                  APIKey.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def record_use(kalpla: Kalpla, session: Session, key_id: str) -> None:
    """Count one use with a single UPDATE, committed on its own so that it counts even when
    the request fails, and holds the row lock only for an instant (concurrent requests with
    one key would otherwise queue behind each other's transactions)."""
    stmt = (update(APIKey).where(APIKey.id == key_id)
            .values(usage_count=APIKey.usage_count + 1, last_used_at=utcnow()))
    engine = kalpla.db.engine
    if isinstance(engine.pool, StaticPool):
        # One shared connection (in-memory SQLite): a separate transaction is impossible.
        session.execute(stmt)
        return
    with engine.begin() as conn:
        conn.execute(stmt)


class APIKeyAuthenticator:
    """Requests carrying ``Authorization: Bearer klp_…`` or ``X-API-Key: klp_…``."""

    def __init__(self, _app: Any = None) -> None:
        pass

    def __call__(self, session: Session, kalpla: Kalpla,
                 headers: Mapping[str, str]) -> Principal | None:
        key = presented_key(headers)
        if key is None:
            return None
        invalid = AuthenticationError("The API key is invalid or has been revoked.")
        prefix = key.removeprefix(KEY_PREFIX).partition("_")[0]
        row = session.scalar(select(APIKey).where(APIKey.prefix == prefix)) if prefix else None
        if row is None or not hmac.compare_digest(row.key_hash, key_hash(key)):
            raise invalid
        if row.revoked_at is not None or row.created_by is None:
            raise invalid
        user = active_user(session, row.created_by)
        record_use(kalpla, session, row.id)
        return Principal(user=user, method="api_key", scopes=frozenset(row.scopes),
                         institution_id=row.institution_id, credential_id=row.id)
