"""Which Kalpla user an external identity is: an existing link, an account with the same
verified email, or a user created just in time. No Flask here.

An email links to an existing account only when the provider says it is verified AND the
account's own address is verified: otherwise whoever registered an address first (without
proving it) could be handed a stranger's account, or take it over later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kalpla_core.audit.service import record
from kalpla_core.contract import UserRegistered
from kalpla_core.db import utcnow
from kalpla_core.identity.models import User, UserIdentity

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla


@dataclass(frozen=True)
class ExternalIdentity:
    provider: str  # ``oidc:<name>`` or ``cognito:<pool id>``
    subject: str
    email: str | None
    email_verified: bool
    name: str = ""


class LinkRefused(Exception):
    """The identity cannot be mapped to a usable account; ``code`` names the reason."""

    def __init__(self, detail: str, code: str, status: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status


def is_verified(value: object) -> bool:
    """``email_verified`` as providers send it: a boolean, or the string "true" (LinkedIn,
    Cognito attributes)."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def normalise_email(email: object) -> str | None:
    if not isinstance(email, str):
        return None
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or len(email) > 320 or any(c.isspace() for c in email):
        return None
    return email


def _usable(user: User | None) -> User:
    if user is None or not user.is_active or user.deleted_at is not None:
        raise LinkRefused("The account is disabled or no longer exists.", "unauthorized", 401)
    return user


def linked_user(session: Session, provider: str, subject: str) -> User | None:
    """The user an identity is already linked to (None: no link yet); refused when that
    account is disabled or deleted."""
    user_id = session.scalar(select(UserIdentity.user_id).where(
        UserIdentity.provider == provider, UserIdentity.subject == subject))
    if user_id is None:
        return None
    return _usable(session.get(User, user_id))


def resolve_user(session: Session, kalpla: Kalpla, identity: ExternalIdentity, *,
                 institution_id: str | None = None, ip: str = "",
                 request_id: str = "") -> User:
    """The user ``identity`` signs in as, linking or creating it when needed (audited)."""
    user = linked_user(session, identity.provider, identity.subject)
    if user is not None:
        return user
    email = normalise_email(identity.email)
    if email is None:
        raise LinkRefused("The identity provider did not share a usable email address.",
                          "email-required", 403)
    existing = session.scalar(select(User).where(func.lower(User.email) == email))
    if existing is not None:
        if not identity.email_verified:
            raise LinkRefused("An account with this email exists, and the identity provider "
                              "does not vouch for the address: sign in with your password.",
                              "email-unverified", 409)
        if existing.email_verified_at is None:
            raise LinkRefused("An account with this email exists but its address was never "
                              "verified: verify it (or reset the password) first.",
                              "account-unverified", 409)
        user = _usable(existing)
        action = "identity.linked"
    else:
        user = User(email=email, name=identity.name[:200], password_hash=None,
                    email_verified_at=utcnow() if identity.email_verified else None)
        session.add(user)
        session.flush()
        action = "user.provisioned"
        kalpla.emit(session, "kalpla_user_registered", UserRegistered(
            institution_id=institution_id, occurred_at=datetime.now(UTC).isoformat(),
            user_id=user.id, email=email))
    session.add(UserIdentity(user_id=user.id, provider=identity.provider,
                             subject=identity.subject, email=email))
    record(session, action, actor_id=user.id, institution_id=institution_id,
           target_type="user", target_id=user.id, ip=ip, request_id=request_id,
           provider=identity.provider)
    session.flush()
    return user
