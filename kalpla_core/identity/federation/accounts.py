"""Which Kalpla user an external identity is: an existing link, an account with the same
verified email, or a user created just in time. No Flask here.

An identity without a link is accepted only when the provider vouches for the email address
(``email_verified``). It then links to the account holding that address, provided the
account's own address is verified too, or creates one. Otherwise whoever first used an
address without proving it (at a lax provider, or by registering here) could be handed a
stranger's account, or keep a way into it once its owner claims it.
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
from kalpla_core.identity import mfa
from kalpla_core.identity.models import Membership, User, UserIdentity
from kalpla_core.identity.sessions import start_session

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla
    from kalpla_core.identity.accounts import LoginResult


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
                 institution_id: str | None = None, make_student: bool = False,
                 ip: str = "", request_id: str = "") -> User:
    """The user ``identity`` signs in as, linking or creating it when needed (audited, in
    ``institution_id``). With ``make_student``, a created user becomes a student there."""
    user = linked_user(session, identity.provider, identity.subject)
    if user is not None:
        return user
    email = normalise_email(identity.email)
    if email is None:
        raise LinkRefused("The identity provider did not share a usable email address.",
                          "email-required", 403)
    # Refused alike whether or not an account holds the address: nothing to enumerate.
    if not identity.email_verified:
        raise LinkRefused("The identity provider does not vouch for your email address; "
                          "register or sign in with a password instead.",
                          "email-unverified", 403)
    existing = session.scalar(select(User).where(func.lower(User.email) == email))
    if existing is not None:
        if existing.email_verified_at is None:
            raise LinkRefused("An account with this email exists but its address was never "
                              "verified: verify it (or reset the password) first.",
                              "account-unverified", 409)
        user = _usable(existing)
        action = "identity.linked"
    else:
        user = User(email=email, name=identity.name[:200], password_hash=None,
                    email_verified_at=utcnow())
        session.add(user)
        session.flush()
        if make_student and institution_id is not None:
            session.add(Membership(user_id=user.id, institution_id=institution_id,
                                   role="student"))
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


def sign_in(session: Session, kalpla: Kalpla, user: User, *, method: str, user_agent: str = "",
            ip: str = "", request_id: str = "") -> LoginResult:
    """What a login through an external provider answers: as for a password login, a
    challenge when the account has a second factor (or must enrol one), else a session."""
    if mfa.totp_enabled(session, user.id):
        return mfa.issue_challenge(session, kalpla, user)
    if mfa.required_by_policy(session, user):
        return mfa.issue_enrolment(session, kalpla, user)
    return start_session(session, kalpla, user, method=method, user_agent=user_agent, ip=ip,
                         request_id=request_id)
