"""A user's data: export (core and every plugin's section) and erasure. No Flask here.

What the export leaves out on purpose: hashes and encrypted secrets (password, refresh and
e-mail tokens, TOTP secret, recovery codes, API keys), and mail bodies, which may carry
one-time links; everything else about the user, and what the platform recorded about them,
is in it.

Erasure runs in the caller's transaction, plugins first (``kalpla_user_erase``): if anything
fails, the caller rolls back and nothing is erased. The ``users`` row stays, anonymised, so
that audit events and other rows keep a valid actor id without personal data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from kalpla_core.audit.models import AuditEvent
from kalpla_core.audit.service import record
from kalpla_core.db import utcnow
from kalpla_core.http.problems import APIError
from kalpla_core.identity import members, throttle
from kalpla_core.identity.accounts import confirm_password, wrong_password
from kalpla_core.identity.apikeys import revoke_keys_of
from kalpla_core.identity.models import (
    APIKey,
    EmailToken,
    LoginThrottle,
    Membership,
    RecoveryCode,
    RefreshToken,
    TOTPDevice,
    User,
    UserIdentity,
)
from kalpla_core.identity.sessions import Client, revoke_all_sessions
from kalpla_core.institutions.models import Institution
from kalpla_core.jobs.models import Job
from kalpla_core.mail.models import OutboxMessage
from kalpla_core.plugins.manager import CORE

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

log = logging.getLogger("kalpla.privacy")

EXPORT_FORMAT = "kalpla-user-export/1"
# A session started this recently proves the user is at the keyboard (instead of a password).
RECENT_LOGIN = timedelta(minutes=10)
# Audit ``data`` keys that may identify a person; dropped from their events on erasure.
PERSONAL_KEYS = frozenset({"email", "name", "user_agent", "ip", "subject", "phone"})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _rows(session: Session, stmt: Any) -> list[Any]:
    return list(session.scalars(stmt))


# --- export ---------------------------------------------------------------------------------

def _profile(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name,
            "is_active": user.is_active, "is_platform_admin": user.is_platform_admin,
            "email_verified_at": _iso(user.email_verified_at),
            "created_at": _iso(user.created_at), "updated_at": _iso(user.updated_at)}


def _memberships(session: Session, user_id: str) -> list[dict[str, Any]]:
    rows = session.execute(select(Institution.slug, Institution.name, Membership.role,
                                  Membership.created_at)
                           .join(Institution, Institution.id == Membership.institution_id)
                           .where(Membership.user_id == user_id)
                           .order_by(Institution.slug, Membership.role))
    return [{"institution": slug, "institution_name": name, "role": role,
             "since": _iso(created)} for slug, name, role, created in rows]


def _sessions(session: Session, user_id: str) -> list[dict[str, Any]]:
    """One entry per session (refresh-token family), oldest first."""
    tokens = _rows(session, select(RefreshToken).where(RefreshToken.user_id == user_id)
                   .order_by(RefreshToken.created_at, RefreshToken.id))
    families: dict[str, dict[str, Any]] = {}
    for t in tokens:
        entry = families.setdefault(t.family_id, {
            "session_id": t.family_id, "started_at": _iso(t.created_at), "refreshes": -1})
        entry.update(last_refreshed_at=_iso(t.created_at), expires_at=_iso(t.expires_at),
                     user_agent=t.user_agent, ip=t.ip, revoked_at=_iso(t.revoked_at))
        entry["refreshes"] += 1
    return list(families.values())


def _mfa(session: Session, user_id: str) -> dict[str, Any]:
    device = session.get(TOTPDevice, user_id)
    unused = session.scalar(select(func.count(RecoveryCode.id)).where(
        RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)))
    return {"totp": None if device is None else {
                "created_at": _iso(device.created_at), "confirmed_at": _iso(device.confirmed_at)},
            "recovery_codes_unused": int(unused or 0)}


def _identities(session: Session, user_id: str) -> list[dict[str, Any]]:
    return [{"provider": i.provider, "subject": i.subject, "email": i.email,
             "linked_at": _iso(i.created_at)}
            for i in _rows(session, select(UserIdentity).where(UserIdentity.user_id == user_id)
                           .order_by(UserIdentity.id))]


def _email_tokens(session: Session, user_id: str) -> list[dict[str, Any]]:
    return [{"purpose": t.purpose, "created_at": _iso(t.created_at),
             "expires_at": _iso(t.expires_at), "used_at": _iso(t.used_at)}
            for t in _rows(session, select(EmailToken).where(EmailToken.user_id == user_id)
                           .order_by(EmailToken.id))]


def _api_keys(session: Session, user_id: str) -> list[dict[str, Any]]:
    return [{"id": k.id, "institution_id": k.institution_id, "name": k.name,
             "prefix": k.prefix, "scopes": k.scopes, "rate_plan": k.rate_plan,
             "created_at": _iso(k.created_at), "revoked_at": _iso(k.revoked_at),
             "last_used_at": _iso(k.last_used_at), "usage_count": k.usage_count}
            for k in _rows(session, select(APIKey).where(APIKey.created_by == user_id)
                           .order_by(APIKey.created_at, APIKey.id))]


def _audit_events(session: Session, user_id: str) -> list[dict[str, Any]]:
    return [{"id": e.id, "occurred_at": _iso(e.occurred_at), "action": e.action,
             "institution_id": e.institution_id, "target_type": e.target_type,
             "target_id": e.target_id, "ip": e.ip, "request_id": e.request_id, "data": e.data}
            for e in _rows(session, select(AuditEvent).where(AuditEvent.actor_id == user_id)
                           .order_by(AuditEvent.id))]


def _jobs(session: Session, user_id: str) -> list[dict[str, Any]]:
    # A job's error text is internal diagnostics, not the user's data: its status says enough.
    return [{"id": j.id, "name": j.name, "institution_id": j.institution_id,
             "status": j.status, "params": j.params, "result": j.result,
             "created_at": _iso(j.created_at), "finished_at": _iso(j.finished_at)}
            for j in _rows(session, select(Job).where(Job.owner_id == user_id)
                           .order_by(Job.created_at, Job.id))]


def _mail(session: Session, email: str) -> list[dict[str, Any]]:
    # Bodies are left out: verification and reset mails carry one-time links.
    return [{"subject": m.subject, "template": m.template, "status": m.status,
             "created_at": _iso(m.created_at), "sent_at": _iso(m.sent_at)}
            for m in _rows(session, select(OutboxMessage)
                           .where(func.lower(OutboxMessage.to) == email.lower())
                           .order_by(OutboxMessage.id))]


def export_user(session: Session, kalpla: Kalpla, user: User) -> dict[str, Any]:
    """Everything stored about ``user``, as JSON-ready data; ``plugins`` holds each loaded
    plugin's section (``kalpla_user_export``), keyed by plugin name."""
    plugins = {name: section for name, section in kalpla.plugins.call_each(
        "kalpla_user_export", session=session, user_id=user.id)
        if name != CORE and section is not None}
    return {
        "format": EXPORT_FORMAT,
        "exported_at": _iso(utcnow()),
        "profile": _profile(user),
        "memberships": _memberships(session, user.id),
        "sessions": _sessions(session, user.id),
        "mfa": _mfa(session, user.id),
        "identities": _identities(session, user.id),
        "email_tokens": _email_tokens(session, user.id),
        "api_keys": _api_keys(session, user.id),
        "audit_events": _audit_events(session, user.id),
        "jobs": _jobs(session, user.id),
        "mail": _mail(session, user.email),
        "plugins": plugins,
    }


# --- erasure --------------------------------------------------------------------------------

def recently_logged_in(session: Session, user_id: str, session_id: str | None) -> bool:
    """Whether the session ``session_id`` (an access token's ``sid``) of this user was
    started by a login within :data:`RECENT_LOGIN` (refreshes do not renew a login)."""
    if not session_id:
        return False
    started = session.scalar(select(func.min(RefreshToken.created_at)).where(
        RefreshToken.family_id == session_id, RefreshToken.user_id == user_id))
    return started is not None and utcnow() - started <= RECENT_LOGIN


def delete_account(session: Session, kalpla: Kalpla, user: User, *, password: str | None,
                   recent_login: bool, client: Client) -> None:
    """Check that the caller is the user (their password, or a recent login), then erase the
    account. A wrong password counts towards the lockout and is audited like any other; a
    failure while erasing leaves everything as it was and answers 500."""
    if password is not None:
        if not confirm_password(session, kalpla, user, password, client, "account.delete"):
            session.commit()  # keep the failure count and its audit event
            raise wrong_password()
    elif not recent_login:
        raise APIError(403, "Give your password, or log in again and retry within "
                       f"{int(RECENT_LOGIN.total_seconds() // 60)} minutes.",
                       "reauthentication-required")
    try:
        erase_user(session, kalpla, user, request_id=client.request_id)
    except APIError:
        raise
    except Exception:
        log.exception("account erasure failed; nothing was erased",
                      extra={"user_id": user.id})
        raise APIError(500, "The account could not be deleted; nothing was changed.",
                       "erasure-failed") from None


def _scrub(data: dict[str, Any], email: str) -> dict[str, Any]:
    return {k: v for k, v in data.items()
            if k not in PERSONAL_KEYS and not (isinstance(v, str) and v.lower() == email)}


def _anonymise_audit(session: Session, user_id: str, email: str) -> None:
    """Keep the user's events (actor and target ids) but drop their IP and personal data."""
    about_user = or_(AuditEvent.actor_id == user_id,
                     and_(AuditEvent.target_type == "user", AuditEvent.target_id == user_id))
    changes = [{"id": event_id, "data": _scrub(data or {}, email)}
               for event_id, data in session.execute(
                   select(AuditEvent.id, AuditEvent.data).where(about_user))
               if data and _scrub(data, email) != data]
    if changes:
        session.execute(update(AuditEvent), changes)
    session.execute(update(AuditEvent).where(about_user, AuditEvent.ip != "").values(ip=""))


def _delete_where(session: Session, models: Iterable[Any], user_id: str) -> None:
    for model in models:
        session.execute(delete(model).where(model.user_id == user_id))


def erase_user(session: Session, kalpla: Kalpla, user: User, *, request_id: str = "") -> None:
    """Erase or anonymise ``user`` across plugins and core, in the caller's transaction.
    409 when they are the last admin of an institution (it would be left unmanaged)."""
    sole = members.sole_admin_of(session, user.id)
    if sole:
        raise APIError(409, "You are the only admin of " + ", ".join(sole) + "; make another "
                       "member admin first.", "last-admin", institutions=sole)
    # Plugins first, while every core row still exists; an exception aborts everything.
    kalpla.plugins.call_each("kalpla_user_erase", session=session, user_id=user.id)

    email = user.email.lower()
    _delete_where(session, (TOTPDevice, RecoveryCode, UserIdentity, EmailToken, Membership),
                  user.id)
    revoke_all_sessions(session, user)  # also bumps the token generation
    session.execute(update(RefreshToken).where(RefreshToken.user_id == user.id)
                    .values(user_agent="", ip=""))
    revoke_keys_of(session, user.id)
    session.execute(delete(LoginThrottle).where(
        LoginThrottle.key_hash == throttle.account_key(kalpla.settings.secret_key, email)))
    session.execute(delete(OutboxMessage).where(func.lower(OutboxMessage.to) == email))
    _anonymise_audit(session, user.id, email)

    user.email = f"deleted-{user.id}@invalid"
    user.name = ""
    user.password_hash = None
    user.email_verified_at = None
    user.is_platform_admin = False
    user.is_active = False
    user.deleted_at = utcnow()
    record(session, "user.deleted", actor_id=user.id, target_type="user", target_id=user.id,
           request_id=request_id)
    session.flush()
