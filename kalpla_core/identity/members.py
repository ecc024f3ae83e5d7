"""Institution memberships: who holds which roles where. No Flask here.

A member is a user with at least one role in the institution (one ``memberships`` row per
role). Every change is audited; an institution never loses its last admin through here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, delete, exists, func, select
from sqlalchemy.orm import Session

from kalpla_core.audit.service import record
from kalpla_core.http.problems import APIError
from kalpla_core.identity.accounts import PASSWORD_RESET, issue_email_token
from kalpla_core.identity.models import ROLES, Membership, User
from kalpla_core.identity.throttle import normalise_email
from kalpla_core.institutions.models import Institution
from kalpla_core.mail.service import send_mail

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

ADMIN = "admin"
# An invitation's password link lives longer than a reset link: it may wait for a holiday.
INVITE_TTL = timedelta(days=7)


@dataclass
class Member:
    """A user as seen from one institution."""

    user: User
    roles: list[str]
    joined_at: datetime | None = None
    invited: bool = False

    @property
    def user_id(self) -> str:
        return self.user.id

    @property
    def email(self) -> str:
        return self.user.email

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def is_active(self) -> bool:
        return self.user.is_active


@dataclass
class MembershipSummary:
    """One institution the user belongs to, with their roles there."""

    institution: Institution
    roles: list[str] = field(default_factory=list)


@dataclass
class Actor:
    """Who makes a change, for the audit log."""

    user_id: str | None
    ip: str = ""
    request_id: str = ""


def _clean_roles(roles: Iterable[str]) -> list[str]:
    unique = sorted(set(roles))
    unknown = [r for r in unique if r not in ROLES]
    if unknown or not unique:
        raise APIError(422, "Give at least one role among " + ", ".join(ROLES) + ".",
                       "validation", errors={"roles": [f"Unknown roles: {unknown}" if unknown
                                                       else "At least one role is required."]})
    return unique


def roles_by_user(session: Session, institution_id: str,
                  user_ids: Sequence[str]) -> dict[str, tuple[list[str], datetime | None]]:
    """Roles and first-joined time of each of ``user_ids`` in the institution: one query."""
    out: dict[str, list[str]] = defaultdict(list)
    joined: dict[str, datetime] = {}
    if not user_ids:
        return {}
    rows = session.execute(select(Membership.user_id, Membership.role, Membership.created_at)
                           .where(Membership.institution_id == institution_id,
                                  Membership.user_id.in_(user_ids)))
    for user_id, role, created in rows:
        out[user_id].append(role)
        if user_id not in joined or created < joined[user_id]:
            joined[user_id] = created
    return {uid: (sorted(roles), joined.get(uid)) for uid, roles in out.items()}


def members_query(institution_id: str, role: str | None = None) -> Select[tuple[User]]:
    """Users holding a role (``role``, or any) in the institution, for keyset pagination."""
    cond = [Membership.user_id == User.id, Membership.institution_id == institution_id]
    if role is not None:
        cond.append(Membership.role == role)
    return select(User).where(exists().where(*cond))


def as_members(session: Session, institution_id: str, users: Sequence[User]) -> list[Member]:
    roles = roles_by_user(session, institution_id, [u.id for u in users])
    return [Member(u, *roles.get(u.id, ([], None))) for u in users]


def get_member(session: Session, institution_id: str, user_id: str) -> Member:
    """The member, or 404 when the user holds no role there (or does not exist)."""
    roles = roles_by_user(session, institution_id, [user_id])
    user = session.get(User, user_id) if roles else None
    if user is None:
        raise APIError(404, "There is no such member in this institution.", "not-found")
    return Member(user, *roles[user_id])


def _admin_ids(session: Session, institution_id: str) -> set[str]:
    # Rows are locked on PostgreSQL so two admins demoting each other at once cannot both
    # pass the last-admin check; SQLite serialises writers anyway.
    stmt = (select(Membership.id, Membership.user_id)
            .where(Membership.institution_id == institution_id, Membership.role == ADMIN)
            .with_for_update())
    return {user_id for _id, user_id in session.execute(stmt)}


def _keep_an_admin(session: Session, institution_id: str, user_id: str) -> None:
    if _admin_ids(session, institution_id) == {user_id}:
        raise APIError(409, "This is the institution's last admin; make another member admin "
                       "first.", "last-admin")


def add_member(session: Session, institution: Institution, user: User, roles: Iterable[str],
               actor: Actor, *, invited: bool = False) -> Member:
    """Give an existing user roles in the institution (409 if they are already a member)."""
    clean = _clean_roles(roles)
    if roles_by_user(session, institution.id, [user.id]):
        raise APIError(409, "The user is already a member; change their roles instead.",
                       "already-member")
    for role in clean:
        session.add(Membership(user_id=user.id, institution_id=institution.id, role=role))
    record(session, "member.added", actor_id=actor.user_id, institution_id=institution.id,
           target_type="user", target_id=user.id, ip=actor.ip, request_id=actor.request_id,
           roles=clean, invited=invited)
    session.flush()
    member = get_member(session, institution.id, user.id)
    member.invited = invited
    return member


def set_roles(session: Session, institution: Institution, user_id: str, roles: Iterable[str],
              actor: Actor) -> Member:
    """Replace the member's roles with ``roles``."""
    clean = _clean_roles(roles)
    member = get_member(session, institution.id, user_id)
    if ADMIN in member.roles and ADMIN not in clean:
        _keep_an_admin(session, institution.id, user_id)
    before = member.roles
    if before == clean:
        return member
    session.execute(delete(Membership).where(
        Membership.institution_id == institution.id, Membership.user_id == user_id,
        Membership.role.in_(set(before) - set(clean))))
    for role in sorted(set(clean) - set(before)):
        session.add(Membership(user_id=user_id, institution_id=institution.id, role=role))
    record(session, "member.roles_changed", actor_id=actor.user_id,
           institution_id=institution.id, target_type="user", target_id=user_id, ip=actor.ip,
           request_id=actor.request_id, before=before, after=clean)
    session.flush()
    return get_member(session, institution.id, user_id)


def remove_member(session: Session, institution: Institution, user_id: str,
                  actor: Actor) -> None:
    member = get_member(session, institution.id, user_id)
    if ADMIN in member.roles:
        _keep_an_admin(session, institution.id, user_id)
    session.execute(delete(Membership).where(Membership.institution_id == institution.id,
                                             Membership.user_id == user_id))
    record(session, "member.removed", actor_id=actor.user_id, institution_id=institution.id,
           target_type="user", target_id=user_id, ip=actor.ip, request_id=actor.request_id,
           roles=member.roles)
    session.flush()


def find_user_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


def invite(session: Session, kalpla: Kalpla, institution: Institution, email: str,
           roles: Iterable[str], actor: Actor, *, name: str = "",
           inviter_name: str = "") -> Member:
    """Create an account without a password for ``email``, make it a member and mail it a
    link to choose its password (the password-reset flow, which also verifies the address).
    Until then nobody can log in to it."""
    clean = _clean_roles(roles)
    user = User(email=normalise_email(email), name=name.strip(), password_hash=None)
    session.add(user)
    session.flush()
    member = add_member(session, institution, user, clean, actor, invited=True)
    token = issue_email_token(session, user, PASSWORD_RESET, INVITE_TTL)
    send_mail(session, kalpla, user.email, "invitation", name=user.name, email=user.email,
              institution=institution.name, inviter=inviter_name, roles=", ".join(clean),
              token=token, link=f"{kalpla.settings.base_url}/reset-password?token={token}",
              expires_days=INVITE_TTL.days)
    return member


def my_memberships_query(user_id: str) -> Select[tuple[Institution]]:
    """Institutions where the user holds a role, for keyset pagination."""
    return select(Institution).where(exists().where(
        Membership.institution_id == Institution.id, Membership.user_id == user_id))


def summaries(session: Session, user_id: str,
              institutions: Sequence[Institution]) -> list[MembershipSummary]:
    """Each institution with the user's roles there: one query for the whole page."""
    ids = [i.id for i in institutions]
    roles: dict[str, list[str]] = defaultdict(list)
    if ids:
        for inst_id, role in session.execute(select(Membership.institution_id, Membership.role)
                                             .where(Membership.user_id == user_id,
                                                    Membership.institution_id.in_(ids))):
            roles[inst_id].append(role)
    return [MembershipSummary(i, sorted(roles[i.id])) for i in institutions]


def sole_admin_of(session: Session, user_id: str) -> list[str]:
    """Slugs of the institutions where ``user_id`` is the only admin."""
    mine = select(Membership.institution_id).where(Membership.user_id == user_id,
                                                    Membership.role == ADMIN)
    others = (select(Membership.institution_id)
              .where(Membership.role == ADMIN, Membership.user_id != user_id))
    return list(session.scalars(select(Institution.slug).where(
        Institution.id.in_(mine), Institution.id.not_in(others)).order_by(Institution.slug)))
