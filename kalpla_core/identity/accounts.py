"""Accounts: registration, e-mail verification, password login, change, forgotten-password
reset and the profile. No Flask here; routes pass plain values and a :class:`Client`.

Choices (see also docs in the route descriptions):

- Addresses are stored normalised (trimmed, lower-case) and looked up exactly.
- Registration answers 409 for an address already taken: a sign-up form must say so, and the
  endpoint is rate limited per IP so it is no faster an oracle than trying to log in. Forgotten
  password and re-sending the verification mail answer the same whether or not an account
  exists.
- A password login is refused with one 401 for a wrong password, an unknown address and a
  disabled or deleted account alike (the password is hashed in every case, so timing does not
  tell them apart), and each of those counts towards the lockout. An account whose address is
  not verified gets 403 ``email-not-verified``, but only after its correct password, so that
  answer reveals nothing to someone who does not know it.
- A password reset proves control of the mailbox, so it also verifies the address; it and a
  password change end every session (refresh tokens revoked, access tokens made stale by the
  token generation).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kalpla_core.audit.service import record
from kalpla_core.contract import UserRegistered
from kalpla_core.db import utcnow
from kalpla_core.http.problems import APIError
from kalpla_core.identity import mfa, throttle
from kalpla_core.identity.models import EmailToken, Membership, User
from kalpla_core.identity.passwords import hash_password, needs_rehash, verify_password
from kalpla_core.identity.policy import check_password, normalise_password
from kalpla_core.identity.sessions import (
    Client,
    TokenPair,
    can_authenticate,
    revoke_all_sessions,
    start_session,
    token_hash,
)
from kalpla_core.identity.throttle import normalise_email
from kalpla_core.mail.service import send_mail

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

VERIFY_EMAIL = "verify_email"
PASSWORD_RESET = "password_reset"  # noqa: S105 (an e-mail token purpose)
VERIFY_TTL = timedelta(hours=48)
RESET_TTL = timedelta(hours=1)

__all__ = ["Client", "LoginResult", "normalise_email"]


LoginResult = TokenPair | mfa.MFAChallenge | mfa.EnrolmentChallenge


def find_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == normalise_email(email)))


def _audit(session: Session, action: str, user: User | None, client: Client,
           **data: str) -> None:
    record(session, action, actor_id=user.id if user else None, target_type="user",
           target_id=user.id if user else "", ip=client.ip, request_id=client.request_id, **data)


# --- single-use mailed tokens --------------------------------------------------------------

def issue_email_token(session: Session, user: User, purpose: str, ttl: timedelta) -> str:
    """A new token for ``purpose``; earlier unused ones of the user for it stop working."""
    now = utcnow()
    session.execute(update(EmailToken).where(
        EmailToken.user_id == user.id, EmailToken.purpose == purpose,
        EmailToken.used_at.is_(None)).values(used_at=now))
    token = secrets.token_urlsafe(32)
    session.add(EmailToken(user_id=user.id, purpose=purpose, token_hash=token_hash(token),
                           created_at=now, expires_at=now + ttl))
    session.flush()
    return token


def _invalid_token() -> APIError:
    return APIError(400, "The token is invalid, expired or already used.", "invalid-token")


def consume_email_token(session: Session, token: str, purpose: str) -> User:
    """The user a still-valid token was sent to; the token is spent (within the caller's
    transaction, so a failed request leaves it usable)."""
    now = utcnow()
    row = session.scalar(select(EmailToken).where(EmailToken.token_hash == token_hash(token),
                                                  EmailToken.purpose == purpose))
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise _invalid_token()
    spent = session.execute(update(EmailToken).where(
        EmailToken.id == row.id, EmailToken.used_at.is_(None)).values(used_at=now))
    user = session.get(User, row.user_id)
    if not spent.rowcount or not can_authenticate(user):  # type: ignore[attr-defined]
        raise _invalid_token()
    assert user is not None
    return user


def _link(kalpla: Kalpla, path: str, token: str) -> str:
    return f"{kalpla.settings.base_url}/{path}?token={token}"


# --- registration and verification ---------------------------------------------------------

def register(session: Session, kalpla: Kalpla, *, email: str, password: str, name: str,
             institution_id: str | None, client: Client) -> User:
    """Create an account (a student of ``institution_id``, when given), mail the verification
    link and announce ``kalpla_user_registered`` after the commit."""
    email = normalise_email(email)
    name = name.strip()
    check_password(password, email=email, name=name)
    taken = APIError(409, "An account with this e-mail address already exists.", "email-taken")
    if find_by_email(session, email) is not None:
        raise taken
    user = User(email=email, name=name, password_hash=hash_password(normalise_password(password)))
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise taken from None
    if institution_id is not None:
        session.add(Membership(user_id=user.id, institution_id=institution_id, role="student"))
    send_verification(session, kalpla, user)
    _audit(session, "user.registered", user, client)
    kalpla.emit(session, "kalpla_user_registered", UserRegistered(
        institution_id=institution_id, occurred_at=datetime.now(UTC).isoformat(),
        user_id=user.id, email=user.email))
    session.flush()
    return user


def send_verification(session: Session, kalpla: Kalpla, user: User) -> None:
    token = issue_email_token(session, user, VERIFY_EMAIL, VERIFY_TTL)
    send_mail(session, kalpla, user.email, "verify_email", name=user.name, email=user.email,
              token=token, link=_link(kalpla, "verify-email", token),
              expires_hours=int(VERIFY_TTL.total_seconds() // 3600))


def resend_verification(session: Session, kalpla: Kalpla, email: str, client: Client) -> None:
    """Mail a new verification link if such an unverified, active account exists; the caller
    answers the same either way."""
    user = find_by_email(session, email)
    if user is not None and can_authenticate(user) and user.email_verified_at is None:
        send_verification(session, kalpla, user)
        _audit(session, "email.verification_sent", user, client)


def verify_email(session: Session, token: str, client: Client) -> User:
    user = consume_email_token(session, token, VERIFY_EMAIL)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
        _audit(session, "email.verified", user, client)
    return user


# --- password login ------------------------------------------------------------------------

def _bad_credentials() -> APIError:
    return APIError(401, "The e-mail address or the password is wrong.", "invalid-credentials",
                    headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})


def password_login(session: Session, kalpla: Kalpla, email: str, password: str,
                   client: Client) -> LoginResult:
    """Check a password login. The answer is a token pair, or a challenge when the account
    has a second factor (or must enrol one first)."""
    key = throttle.account_key(kalpla.settings.secret_key, email)
    throttle.check(session, key)
    user = find_by_email(session, email)
    candidate = normalise_password(password)
    # Hashes even without an account, so an unknown address takes as long as a known one.
    valid = verify_password(user.password_hash if user else None, candidate)
    if not valid or not can_authenticate(user):
        throttle.record_failure(session, key)
        _audit(session, "login.failed", user, client, method="password")
        session.commit()  # the failure must count although the request answers 401
        raise _bad_credentials()
    assert user is not None and user.password_hash is not None
    if user.email_verified_at is None:
        raise APIError(403, "Confirm your e-mail address first; the link was mailed to you.",
                       "email-not-verified")
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(candidate)
    if mfa.totp_enabled(session, user.id):
        # The failure count stays until the second factor is right too.
        return mfa.issue_challenge(session, kalpla, user)
    throttle.record_success(session, key)
    if mfa.required_by_policy(session, user):
        return mfa.issue_enrolment(session, kalpla, user)
    return start_session(session, kalpla, user, method="password", user_agent=client.user_agent,
                         ip=client.ip, request_id=client.request_id)


def confirm_password(session: Session, kalpla: Kalpla, user: User, password: str,
                     client: Client, action: str) -> bool:
    """Re-check the signed-in user's password before a sensitive change; a wrong one counts
    towards the lockout like a failed login. Raises 429 while the account is locked."""
    key = throttle.account_key(kalpla.settings.secret_key, user.email)
    throttle.check(session, key)
    if verify_password(user.password_hash, normalise_password(password)):
        return True
    throttle.record_failure(session, key)
    _audit(session, f"{action}.failed", user, client, reason="wrong-password")
    return False


def wrong_password() -> APIError:
    return APIError(403, "The current password is wrong.", "invalid-credentials")


# --- changing and resetting the password ---------------------------------------------------

def _set_password(session: Session, kalpla: Kalpla, user: User, password: str) -> None:
    check_password(password, email=user.email, name=user.name, field="new_password")
    user.password_hash = hash_password(normalise_password(password))
    revoke_all_sessions(session, user)
    throttle.record_success(session, throttle.account_key(kalpla.settings.secret_key,
                                                          user.email))


def change_password(session: Session, kalpla: Kalpla, user: User, current: str, new: str,
                    client: Client) -> TokenPair:
    """Change the signed-in user's password: every session ends, and the caller gets a new
    one in exchange."""
    if not confirm_password(session, kalpla, user, current, client, "password.change"):
        session.commit()
        raise wrong_password()
    _set_password(session, kalpla, user, new)
    _audit(session, "password.changed", user, client)
    send_mail(session, kalpla, user.email, "password_changed", name=user.name, email=user.email,
              when=utcnow().strftime("%Y-%m-%d %H:%M"), reset=False)
    return start_session(session, kalpla, user, method="password", user_agent=client.user_agent,
                         ip=client.ip, request_id=client.request_id)


def forgot_password(session: Session, kalpla: Kalpla, email: str, client: Client) -> None:
    """Mail a reset link if an active account has this address; the caller answers the same
    either way."""
    user = find_by_email(session, email)
    if user is None or not can_authenticate(user):
        return
    token = issue_email_token(session, user, PASSWORD_RESET, RESET_TTL)
    send_mail(session, kalpla, user.email, "password_reset", name=user.name, email=user.email,
              token=token, link=_link(kalpla, "reset-password", token),
              expires_minutes=int(RESET_TTL.total_seconds() // 60))
    _audit(session, "password.reset_requested", user, client)


def reset_password(session: Session, kalpla: Kalpla, token: str, new: str,
                   client: Client) -> User:
    user = consume_email_token(session, token, PASSWORD_RESET)
    _set_password(session, kalpla, user, new)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    _audit(session, "password.reset", user, client)
    send_mail(session, kalpla, user.email, "password_changed", name=user.name, email=user.email,
              when=utcnow().strftime("%Y-%m-%d %H:%M"), reset=True)
    return user


# --- profile -------------------------------------------------------------------------------

def update_profile(session: Session, user: User, *, name: str | None, client: Client) -> User:
    if name is not None and name.strip() != user.name:
        user.name = name.strip()
        _audit(session, "profile.updated", user, client, fields="name")
    session.flush()
    return user


# --- turning MFA off -----------------------------------------------------------------------

def disable_mfa(session: Session, kalpla: Kalpla, user: User, password: str, code: str,
                client: Client) -> None:
    """Turn TOTP off, given the password and a current TOTP or recovery code. Refused while
    an institution requires MFA for one of the user's roles."""
    if not mfa.totp_enabled(session, user.id):
        raise APIError(409, "Two-step verification is not on.", "mfa-not-enabled")
    if mfa.required_by_policy(session, user):
        raise APIError(403, "Your institution requires two-step verification for your role.",
                       "mfa-required")
    if not confirm_password(session, kalpla, user, password, client, "mfa.disable"):
        session.commit()
        raise wrong_password()
    if mfa.check_second_factor(session, kalpla, user, code) is None:
        throttle.record_failure(session, throttle.account_key(kalpla.settings.secret_key,
                                                              user.email))
        _audit(session, "mfa.disable.failed", user, client, reason="wrong-code")
        session.commit()
        raise APIError(403, "The code is wrong or was already used.", "invalid-code")
    mfa.remove(session, kalpla, user, client)
