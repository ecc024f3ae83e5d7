"""Sessions: a login starts a family of opaque rotating refresh tokens plus short-lived
access tokens bound to it (claim ``sid``).

Refresh tokens are random strings; only their SHA-256 is stored. Refreshing rotates: the
presented token is marked rotated and a new one of the same family is issued. Presenting a
token that was already rotated means it leaked (or a client replayed it), so the whole family
is revoked. No Flask here: routes, CLI and other services call these functions.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from kalpla_core.audit.service import record
from kalpla_core.db import new_id, utcnow
from kalpla_core.http.problems import APIError
from kalpla_core.identity.models import RefreshToken, User

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

REFRESH_TTL = timedelta(days=30)


def token_hash(token: str) -> str:
    """The stored form of an opaque token (refresh, e-mail): hex SHA-256. Such tokens carry
    256 bits of randomness, so a fast unsalted hash is enough to make the table useless."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Client:
    """Who is calling, for session metadata and the audit log."""

    ip: str = ""
    user_agent: str = ""
    request_id: str = ""


@dataclass
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 (the OAuth 2 token type, not a secret)


def _invalid_refresh() -> APIError:
    return APIError(401, "The refresh token is invalid, expired or revoked.",
                    "invalid-refresh-token",
                    headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})


def _issue(session: Session, kalpla: Kalpla, user: User, family_id: str, user_agent: str,
           ip: str) -> TokenPair:
    refresh = secrets.token_urlsafe(32)
    session.add(RefreshToken(user_id=user.id, family_id=family_id, token_hash=token_hash(refresh),
                             expires_at=utcnow() + REFRESH_TTL, user_agent=user_agent[:300],
                             ip=ip[:64]))
    access = kalpla.keys.issue(session, user.id, {
        "typ": "access", "gen": user.token_generation, "sid": family_id})
    return TokenPair(access_token=access, refresh_token=refresh,
                     expires_in=kalpla.settings.access_token_ttl)


def can_authenticate(user: User | None) -> bool:
    return user is not None and user.is_active and user.deleted_at is None


def start_session(session: Session, kalpla: Kalpla, user: User, *, method: str = "password",
                  user_agent: str = "", ip: str = "", request_id: str = "") -> TokenPair:
    """Start a new session (refresh-token family) for an authenticated ``user`` and record
    ``login.succeeded``. ``method`` says how the user proved who they are (``password``,
    ``password+totp``, ``oidc:google`` …)."""
    if not can_authenticate(user):
        raise APIError(401, "The account is disabled or no longer exists.", "unauthorized")
    family_id = new_id()
    pair = _issue(session, kalpla, user, family_id, user_agent, ip)
    record(session, "login.succeeded", actor_id=user.id, target_type="user", target_id=user.id,
           ip=ip, request_id=request_id, method=method, session_id=family_id)
    session.flush()
    return pair


def refresh_session(session: Session, kalpla: Kalpla, refresh_token: str, *,
                    user_agent: str = "", ip: str = "", request_id: str = "",
                    gate: Callable[[User], None] | None = None) -> TokenPair:
    """Rotate ``refresh_token``: a new pair of the same session. Reuse of a rotated token
    revokes the whole session; that revocation is committed before the 401 is raised (the
    request's unit of work rolls back on errors). ``gate`` may refuse the user (by raising)
    before anything changes."""
    row = session.scalar(select(RefreshToken).where(
        RefreshToken.token_hash == token_hash(refresh_token)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise _invalid_refresh()
    user = session.get(User, row.user_id)
    if row.expires_at <= now or not can_authenticate(user):
        raise _invalid_refresh()
    assert user is not None
    if gate is not None:
        gate(user)
    # Mark rotated only if nobody else did: of two concurrent refreshes with one token,
    # exactly one wins and the other counts as reuse.
    won = session.execute(update(RefreshToken)
                          .where(RefreshToken.id == row.id, RefreshToken.rotated_at.is_(None))
                          .values(rotated_at=now)).rowcount  # type: ignore[attr-defined]
    if not won:
        revoke_family(session, row.family_id, now)
        record(session, "session.refresh_reused", actor_id=row.user_id, target_type="session",
               target_id=row.family_id, ip=ip, request_id=request_id)
        session.commit()
        raise _invalid_refresh()
    pair = _issue(session, kalpla, user, row.family_id, user_agent or row.user_agent,
                  ip or row.ip)
    session.flush()
    return pair


def revoke_family(session: Session, family_id: str, when: datetime | None = None) -> int:
    """Revoke every live token of one session; the number of tokens revoked."""
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=when or utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def end_session(session: Session, user: User, family_id: str, *, ip: str = "",
                request_id: str = "") -> None:
    """Revoke one of ``user``'s sessions (logout, or revoking a session from the list).
    Another user's session is answered exactly like an unknown one: 404."""
    owned = session.scalar(select(RefreshToken.id).where(
        RefreshToken.family_id == family_id, RefreshToken.user_id == user.id).limit(1))
    if owned is None:
        raise APIError(404, "There is no such session.", "not-found")
    revoke_family(session, family_id)
    record(session, "session.revoked", actor_id=user.id, target_type="session",
           target_id=family_id, ip=ip, request_id=request_id)


def revoke_all_sessions(session: Session, user: User) -> None:
    """Revoke every refresh token of ``user`` and, by bumping the token generation, every
    access token already issued (password reset, account disabled or deleted)."""
    session.execute(update(RefreshToken)
                    .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
    user.token_generation = (user.token_generation or 0) + 1
    session.flush()


def live_sessions(user_id: str) -> Select[tuple[RefreshToken]]:
    """The current refresh token of each live session of a user: one row per session."""
    return select(RefreshToken).where(
        RefreshToken.user_id == user_id, RefreshToken.rotated_at.is_(None),
        RefreshToken.revoked_at.is_(None), RefreshToken.expires_at > utcnow())
