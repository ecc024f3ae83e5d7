"""Authentication: who is calling. Authenticators are providers of the ``authenticator`` port,
tried in registration order (core first); the first that recognises the request's credentials
decides. A recognised but invalid credential is a 401, never a fall-through to the next."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.identity.models import RefreshToken, User
from kalpla_core.identity.tokens import TokenError

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla


class AuthenticationError(Exception):
    """Credentials were presented and recognised, but are invalid (answered 401)."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. ``scopes`` limits the permissions the user's roles grant
    (None: no limit beyond the roles), as with API keys acting for their creator."""

    user: User
    method: str
    scopes: frozenset[str] | None = None
    institution_id: str | None = None  # set when the credential is bound to one institution
    credential_id: str | None = None


class Authenticator(Protocol):
    def __call__(self, session: Session, kalpla: Kalpla,
                 headers: Mapping[str, str]) -> Principal | None: ...


def bearer_token(headers: Mapping[str, str]) -> str | None:
    header = headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def active_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None or not user.is_active or user.deleted_at is not None:
        raise AuthenticationError("The account is disabled or no longer exists.")
    return user


class KalplaTokenAuthenticator:
    """Bearer access tokens signed by this deployment (``kid`` in our JWKS)."""

    def __init__(self, _app: Any = None) -> None:
        pass

    def __call__(self, session: Session, kalpla: Kalpla,
                 headers: Mapping[str, str]) -> Principal | None:
        token = bearer_token(headers)
        if token is None or not kalpla.keys.recognises(session, token):
            return None
        try:
            claims = kalpla.keys.verify(session, token)
        except TokenError:
            raise AuthenticationError("The access token is invalid or has expired.") from None
        if claims.get("typ", "access") != "access":
            raise AuthenticationError("This token is not an access token.")
        user = active_user(session, claims["sub"])
        if claims.get("gen") != user.token_generation:
            raise AuthenticationError("The access token has been revoked.")
        sid = claims.get("sid")
        if sid is not None and not _session_live(session, user.id, sid):
            # Logout and session revocation end the access tokens of that session at once,
            # not when they expire: one indexed lookup per request.
            raise AuthenticationError("The session has ended.")
        return Principal(user=user, method="token", credential_id=sid)


def _session_live(session: Session, user_id: str, family_id: str) -> bool:
    return session.scalar(select(RefreshToken.id).where(
        RefreshToken.family_id == family_id, RefreshToken.user_id == user_id,
        RefreshToken.revoked_at.is_(None)).limit(1)) is not None


def authenticate(session: Session, kalpla: Kalpla,
                 headers: Mapping[str, str]) -> Principal | None:
    """The caller, or None when the request carries no credentials."""
    for authenticator in kalpla.authenticators():
        principal = authenticator(session, kalpla, headers)
        if principal is not None:
            return principal
    if headers.get("Authorization"):
        raise AuthenticationError("The credentials are not recognised.")
    return None
