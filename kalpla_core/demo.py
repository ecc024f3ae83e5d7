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


@dataclass(frozen=True)
class DemoCourse:
    institution: str
    slug: str
    title: str
    summary: str
    author: str  # a mentor's email
    tags: tuple[str, ...]
    level: str
    publish: bool = True
    capacity: int | None = None
    # Modules: (title, ((lesson title, kind, body or video URL, preview), …))
    modules: tuple[tuple[str, tuple[tuple[str, str, str, bool], ...]], ...] = ()
    students: tuple[str, ...] = ()


_PY_MODULES = (
    ("Getting started", (
        ("Welcome", "text", "# Welcome\n\nWhat this course covers and how to follow it.", True),
        ("Installing Python", "video", "https://videos.example.org/python/install.mp4", False),
    )),
    ("The basics", (
        ("Values and variables", "text", "Numbers, strings and the names that hold them.", False),
        ("Making decisions", "text", "`if`, `elif` and `else`, with worked examples.", False),
        ("Repeating work", "text", "`for` and `while` loops.", False),
    )),
)

COURSES = (
    DemoCourse("riverside-college", "intro-to-python", "Introduction to Python",
               "Write your first programs, from variables to loops.",
               "maya.mentor@example.com", ("python", "programming"), "beginner",
               capacity=30, modules=_PY_MODULES,
               students=("sam.student@example.com", "lena.student@example.com")),
    DemoCourse("riverside-college", "data-visualisation", "Data visualisation",
               "Charts that tell the truth: choosing, drawing and reading them.",
               "maya.mentor@example.com", ("data", "charts"), "intermediate", capacity=1,
               modules=(("Seeing data", (
                   ("Why charts lie", "text", "Axes, scales and what they hide.", True),)),),
               students=("lena.student@example.com", "sam.student@example.com")),
    DemoCourse("riverside-college", "advanced-python", "Advanced Python",
               "Generators, descriptors and the data model.", "maya.mentor@example.com",
               ("python",), "advanced", publish=False,
               modules=(("Iteration", (("Generators", "text", "Lazy sequences.", False),)),)),
    DemoCourse("northwind-academy", "business-writing", "Business writing",
               "Clear emails, reports and proposals.", "omar.mentor@example.com",
               ("writing", "communication"), "all",
               modules=(("Plain words", (
                   ("Say it once", "text", "Cutting what the reader does not need.", True),
                   ("Structure", "text", "Answer first, then the reasons.", False))),),
               students=("theo.student@example.com", "lena.student@example.com")),
)


def _caller(session: Session, kalpla: Kalpla, user: User) -> Any:
    from kalpla_core.courses.service import Caller

    return Caller(user=user, can=lambda permission, institution_id: kalpla.has_permission(
        session, user, permission, institution_id))


def ensure_courses(session: Session, kalpla: Kalpla) -> list[str]:
    """The demo courses with their modules and lessons, written through the course services
    as a mentor would; returns the slugs created now."""
    from kalpla_core.courses import service as courses
    from kalpla_core.courses import structure
    from kalpla_core.courses.models import Course

    institutions = _institutions_by_slug(session)
    users = {u.email: u for u in session.scalars(select(User))}
    existing = {tuple(row) for row in session.execute(select(Course.institution_id, Course.slug))}
    created = []
    for demo in COURSES:
        inst = institutions[demo.institution]
        if (inst.id, demo.slug) in existing:
            continue
        caller = _caller(session, kalpla, users[demo.author])
        course = courses.create_course(session, caller, inst.id, {
            "slug": demo.slug, "title": demo.title, "summary": demo.summary,
            "description": f"# {demo.title}\n\n{demo.summary}", "tags": list(demo.tags),
            "level": demo.level, "language": "en", "capacity": demo.capacity})
        for module_title, lessons in demo.modules:
            module = structure.create_module(session, course, {"title": module_title})
            for title, kind, content, preview in lessons:
                data: dict[str, Any] = {"title": title, "kind": kind, "is_preview": preview}
                if kind == "video":
                    data.update(video_url=content, duration_seconds=540)
                else:
                    data["body"] = content
                structure.create_lesson(session, kalpla, course, module, data)
        if demo.publish:
            courses.publish_course(session, kalpla, course)
        created.append(demo.slug)
    return created


def ensure_enrollments(session: Session, kalpla: Kalpla) -> int:
    """The demo students' enrollments (a full course puts the second one on its waitlist);
    returns how many were made now."""
    from kalpla_core.courses.models import Course
    from kalpla_core.enrollment.service import current_enrollment, enroll

    institutions = _institutions_by_slug(session)
    users = {u.email: u for u in session.scalars(select(User))}
    made = 0
    for demo in COURSES:
        course = session.scalar(select(Course).where(
            Course.institution_id == institutions[demo.institution].id,
            Course.slug == demo.slug))
        if course is None or course.status != "published":
            continue
        for email in demo.students:
            if current_enrollment(session, course.id, users[email].id) is None:
                enroll(session, kalpla, _caller(session, kalpla, users[email]), course.id)
                made += 1
    return made


DemoStep = Callable[[Session, "Kalpla"], object]

DEMO_STEPS: list[tuple[str, DemoStep]] = [
    ("institutions", ensure_institutions),
    ("accounts", ensure_accounts),
    ("memberships", ensure_memberships),
    ("plugins", enable_plugins),
    ("courses", ensure_courses),
    ("enrollments", ensure_enrollments),
]


def load_demo(kalpla: Kalpla, on_step: Callable[[str], None] | None = None) -> None:
    """Run every step, each in its own unit of work (so events of one step are delivered
    before the next begins). The schema must be migrated first."""
    for label, step in DEMO_STEPS:
        with kalpla.db.session() as session:
            step(session, kalpla)
        if on_step is not None:
            on_step(label)
