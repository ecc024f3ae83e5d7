"""Demo data for trying Kalpla on the embedded defaults.

Plain functions over a session, each idempotent: loading twice changes nothing. ``DEMO_STEPS``
lists them in order (``kalpla demo`` runs one unit of work per step); later domains append
their own steps, such as courses and enrollments.

Every demo account signs in with :data:`DEMO_PASSWORD`, which is public: demo data is for a
local database, and ``kalpla demo`` refuses PostgreSQL unless forced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kalpla_core.db import utcnow
from kalpla_core.identity.models import Membership, User
from kalpla_core.identity.passwords import hash_password
from kalpla_core.institutions.models import Institution, InstitutionPlugin
from kalpla_core.institutions.service import (
    create_institution,
    enable_plugin,
    ensure_default_institution,
)

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

DEMO_PASSWORD = "kalpla-demo-password"  # noqa: S105 (documented, demo data only)


@dataclass(frozen=True)
class DemoInstitution:
    slug: str
    name: str
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoAccount:
    email: str
    name: str
    platform_admin: bool = False
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # slug -> roles


INSTITUTIONS = (
    DemoInstitution("riverside-college", "Riverside College",
                    plugins={"example": {"greeting": "Welcome to Riverside College!"}}),
    DemoInstitution("northwind-academy", "Northwind Academy"),
)

ACCOUNTS = (
    DemoAccount("admin@example.com", "Avery Admin", platform_admin=True),
    DemoAccount("rosa.admin@example.com", "Rosa Martins",
                roles={"riverside-college": ("admin",)}),
    DemoAccount("maya.mentor@example.com", "Maya Patel",
                roles={"riverside-college": ("mentor",)}),
    DemoAccount("omar.mentor@example.com", "Omar Haddad",
                roles={"northwind-academy": ("mentor", "moderator")}),
    DemoAccount("sam.student@example.com", "Sam Lee",
                roles={"riverside-college": ("student",)}),
    DemoAccount("lena.student@example.com", "Lena Novak",
                roles={"riverside-college": ("student",), "northwind-academy": ("student",)}),
    DemoAccount("theo.student@example.com", "Theo Okafor",
                roles={"northwind-academy": ("student",)}),
)


def _institutions_by_slug(session: Session) -> dict[str, Institution]:
    return {i.slug: i for i in session.scalars(select(Institution))}


def ensure_institutions(session: Session, kalpla: Kalpla | None = None) -> list[str]:
    """The default institution and the demo ones; returns the slugs created now."""
    ensure_default_institution(session)
    existing = _institutions_by_slug(session)
    created = []
    for inst in INSTITUTIONS:
        if inst.slug not in existing:
            create_institution(session, inst.slug, inst.name)
            created.append(inst.slug)
    return created


def ensure_accounts(session: Session, kalpla: Kalpla | None = None) -> list[str]:
    """The demo accounts (password :data:`DEMO_PASSWORD`); returns the emails created now.
    Existing accounts are left as they are."""
    existing = set(session.scalars(select(func.lower(User.email))))
    created = []
    for account in ACCOUNTS:
        if account.email in existing:
            continue
        session.add(User(email=account.email, name=account.name,
                         password_hash=hash_password(DEMO_PASSWORD),
                         is_platform_admin=account.platform_admin,
                         email_verified_at=utcnow()))
        created.append(account.email)
    session.flush()
    return created


def ensure_memberships(session: Session, kalpla: Kalpla | None = None) -> int:
    """The demo accounts' roles in the demo institutions; returns how many were added."""
    users = {u.email: u.id for u in session.scalars(
        select(User).where(User.email.in_([a.email for a in ACCOUNTS])))}
    institutions = _institutions_by_slug(session)
    held = {tuple(row) for row in session.execute(
        select(Membership.user_id, Membership.institution_id, Membership.role)
        .where(Membership.user_id.in_(users.values())))}
    added = 0
    for account in ACCOUNTS:
        for slug, roles in account.roles.items():
            for role in roles:
                key = (users[account.email], institutions[slug].id, role)
                if key not in held:
                    session.add(Membership(user_id=key[0], institution_id=key[1], role=role))
                    added += 1
    session.flush()
    return added


def enable_plugins(session: Session, kalpla: Kalpla) -> list[tuple[str, str]]:
    """Enable the demo institutions' plugins that this deployment loads (others are skipped);
    returns the ``(slug, plugin)`` pairs enabled now."""
    institutions = _institutions_by_slug(session)
    enabled = {tuple(row) for row in session.execute(
        select(Institution.slug, InstitutionPlugin.plugin).join(
            InstitutionPlugin, InstitutionPlugin.institution_id == Institution.id))}
    done = []
    for inst in INSTITUTIONS:
        for plugin, settings in inst.plugins.items():
            if plugin in kalpla.plugins.names and (inst.slug, plugin) not in enabled:
                enable_plugin(session, kalpla, institutions[inst.slug], plugin, dict(settings))
                done.append((inst.slug, plugin))
    return done


DemoStep = Callable[[Session, "Kalpla"], object]

DEMO_STEPS: list[tuple[str, DemoStep]] = [
    ("institutions", ensure_institutions),
    ("accounts", ensure_accounts),
    ("memberships", ensure_memberships),
    ("plugins", enable_plugins),
]


def load_demo(kalpla: Kalpla, on_step: Callable[[str], None] | None = None) -> None:
    """Run every step, each in its own unit of work (so events of one step are delivered
    before the next begins). The schema must be migrated first."""
    for label, step in DEMO_STEPS:
        with kalpla.db.session() as session:
            step(session, kalpla)
        if on_step is not None:
            on_step(label)
