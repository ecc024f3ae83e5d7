"""Per-request context: the database session, the caller and the institution concerned.

Plugins reach these through :mod:`kalpla_core.toolkit`; services never import this module
(they take a session and plain values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.http.problems import APIError
from kalpla_core.identity.models import User
from kalpla_core.identity.tokens import TokenError
from kalpla_core.institutions.models import DEFAULT_INSTITUTION_SLUG, Institution

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

INSTITUTION_HEADER = "Kalpla-Institution"


def kalpla() -> Kalpla:
    return current_app.extensions["kalpla"]


def db_session() -> Session:
    """The request's session: committed when the response is a success, else rolled back."""
    if "db_session" not in g:
        g.db_session = kalpla().db.sessionmaker()
    return g.db_session


def unauthorized(detail: str = "Authentication is required.") -> APIError:
    return APIError(401, detail, "unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})


def current_user(required: bool = True) -> User | None:
    """The authenticated user (Bearer access token), or None for an anonymous request."""
    if "current_user" not in g:
        g.current_user = _authenticate()
    if g.current_user is None and required:
        raise unauthorized()
    return g.current_user


def _authenticate() -> User | None:
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("The Authorization header must be 'Bearer <token>'.")
    session = db_session()
    try:
        claims = kalpla().keys.verify(session, token.strip())
    except TokenError:
        raise unauthorized("The access token is invalid or has expired.") from None
    user = session.get(User, claims["sub"])
    if user is None or not user.is_active or claims.get("gen") != user.token_generation:
        raise unauthorized("The access token is no longer valid.")
    return user


def current_institution() -> Institution:
    """The institution a request concerns: the ``Kalpla-Institution`` header (a slug), or the
    default institution when the header is absent."""
    if "current_institution" not in g:
        slug = request.headers.get(INSTITUTION_HEADER) or DEFAULT_INSTITUTION_SLUG
        inst = db_session().scalar(select(Institution).where(Institution.slug == slug))
        if inst is None:
            raise APIError(404, f"There is no institution {slug!r}.", "unknown-institution")
        g.current_institution = inst
    return g.current_institution


def require_permission(permission: str, institution_id: str | None) -> User:
    """The current user, if they hold ``permission`` in the institution; else 401/403."""
    user = current_user()
    assert user is not None
    if not kalpla().has_permission(db_session(), user, permission, institution_id):
        raise APIError(403, f"You lack the permission {permission!r} here.", "forbidden")
    return user
