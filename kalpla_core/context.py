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
from kalpla_core.identity.authn import AuthenticationError, Principal, authenticate
from kalpla_core.identity.models import User
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


def current_principal(required: bool = True) -> Principal | None:
    """The authenticated caller (see :mod:`kalpla_core.identity.authn`), or None."""
    if "principal" not in g:
        try:
            g.principal = authenticate(db_session(), kalpla(), request.headers)
        except AuthenticationError as exc:
            raise unauthorized(str(exc)) from None
    if g.principal is None and required:
        raise unauthorized()
    return g.principal


def current_user(required: bool = True) -> User | None:
    """The authenticated user, or None for an anonymous request."""
    principal = current_principal(required)
    return principal.user if principal else None


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


def has_permission(permission: str, institution_id: str | None) -> bool:
    """Whether the caller (None: anonymous) holds ``permission`` in the institution, within
    the scopes and institution their credential is limited to."""
    principal = current_principal(required=False)
    if principal is None:
        return False
    if principal.scopes is not None and permission not in principal.scopes:
        return False
    if principal.institution_id is not None and principal.institution_id != institution_id:
        return False
    return kalpla().has_permission(db_session(), principal.user, permission, institution_id)


def require_permission(permission: str, institution_id: str | None) -> User:
    """The current user, if they hold ``permission`` in the institution; else 401/403."""
    principal = current_principal()
    assert principal is not None
    if not has_permission(permission, institution_id):
        raise APIError(403, f"You lack the permission {permission!r} here.", "forbidden")
    return principal.user


def request_meta() -> dict[str, str]:
    """The caller's IP and the request id, for audit records and session metadata."""
    return {"ip": request.remote_addr or "", "request_id": g.get("request_id", "")}
