"""The plugin contract: every hook a plugin may implement.

Three kinds, kept apart (see docs/plugins.md for the full reference and call order):

1. Registration hooks run once at start-up, for every loaded plugin.
2. Gates run inside the caller's transaction, only for plugins enabled for the institution
   concerned; they answer :class:`Decision` objects or ``None`` (no opinion).
3. Events run after the transaction committed, only for plugins enabled for the institution
   concerned; an implementation that raises is logged and does not affect the others.

Hooks are called in a fixed order: the core first, then plugins in ``KALPLA_PLUGINS`` order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from kalpla_core.contract import (
    CourseArchived,
    CourseCompleted,
    CoursePublished,
    Decision,
    EnrollmentCreated,
    EnrollmentRequest,
    EnrollmentStatusChanged,
    Event,
    LessonAccessRequest,
    LessonChanged,
    LessonCompleted,
    LessonKind,
    OrderPaid,
    OrderRefunded,
    Permission,
    PluginEnablementChanged,
    PluginMeta,
    Provider,
    SubscriptionChanged,
    UserRegistered,
)
from kalpla_core.version import CONTRACT_VERSION

if TYPE_CHECKING:
    import click
    from flask import Flask
    from marshmallow import Schema
    from sqlalchemy.orm import Session

    from kalpla_core.http.api import Blueprint

__all__ = [
    "CONTRACT_VERSION", "CourseArchived", "CourseCompleted", "CoursePublished", "Decision",
    "EnrollmentCreated", "EnrollmentRequest", "EnrollmentStatusChanged", "Event",
    "LessonAccessRequest", "LessonChanged", "LessonCompleted", "LessonKind", "OrderPaid",
    "OrderRefunded", "Permission", "PluginEnablementChanged", "PluginMeta", "Provider",
    "SubscriptionChanged", "UserRegistered", "hookimpl", "hookspec",
]

hookspec = pluggy.HookspecMarker("kalpla")
hookimpl = pluggy.HookimplMarker("kalpla")

# Hook kinds, read by the plugin manager and the documentation test.
REGISTRATION_HOOKS = (
    "kalpla_blueprints", "kalpla_cli_commands", "kalpla_permissions", "kalpla_providers",
    "kalpla_settings_schema", "kalpla_migrations", "kalpla_models", "kalpla_jobs",
    "kalpla_lesson_kinds", "kalpla_startup",
)
GATE_HOOKS = ("kalpla_enrollment_requested", "kalpla_lesson_access")
EVENT_HOOKS = (
    "kalpla_user_registered", "kalpla_enrollment_created", "kalpla_enrollment_status_changed",
    "kalpla_lesson_completed", "kalpla_course_completed", "kalpla_course_published",
    "kalpla_course_archived", "kalpla_lesson_changed", "kalpla_plugin_enablement_changed",
    "kalpla_order_paid", "kalpla_order_refunded", "kalpla_subscription_changed",
)
DATA_HOOKS = ("kalpla_user_export", "kalpla_user_erase")


# --- 1. registration ----------------------------------------------------------------------

@hookspec
def kalpla_blueprints() -> list[Blueprint]:
    """Blueprints of the plugin's API. Each is mounted under ``/api/v1/<plugin-name>/`` and
    answers 404 for an institution that has not enabled the plugin."""


@hookspec
def kalpla_cli_commands() -> list[click.Command]:
    """Click commands (or groups) added to the ``kalpla`` command line."""


@hookspec
def kalpla_permissions() -> list[Permission]:
    """Permissions the plugin checks, with the institution roles that hold them by default.
    Names must start with the plugin name and a dot (``payments.refund``)."""


@hookspec
def kalpla_providers() -> list[Provider]:
    """Implementations of ports (mail, storage, jobs, a plugin's own ports) selectable by
    configuration."""


@hookspec
def kalpla_settings_schema() -> type[Schema] | None:
    """The marshmallow schema of the plugin's per-institution settings. Settings given when an
    institution enables the plugin are validated (and defaulted) with it."""


@hookspec
def kalpla_migrations() -> str | Path | None:
    """The folder of the plugin's Alembic revisions: one branch labelled with the plugin name."""


@hookspec
def kalpla_models() -> list[type[Any]]:
    """The plugin's SQLAlchemy models (on ``kalpla_core.db.Base``). Their tables must be named
    ``<plugin>_…`` and their foreign keys point only at core tables or the plugin's own."""


@hookspec
def kalpla_jobs() -> dict[str, Any]:
    """Background job functions by name (``<plugin>.<job>``). A job function is called as
    ``fn(ctx, **params)``, where ``ctx`` is a :class:`kalpla_core.jobs.JobContext`."""


@hookspec
def kalpla_lesson_kinds() -> list[LessonKind]:
    """Lesson kinds the plugin contributes besides the core's ``text``, ``video`` and ``file``.
    Kind names are unique across the core and every loaded plugin."""


@hookspec
def kalpla_startup(app: Flask) -> None:
    """Called once, after every plugin is registered, with the app fully configured."""


# --- 2. gates (inside the transaction) ----------------------------------------------------

@hookspec
def kalpla_enrollment_requested(session: Session, request: EnrollmentRequest) -> Decision | None:
    """Allow, deny (with a reason) or hold pending (with an action for the client) an
    enrollment. Any deny wins; otherwise any pending holds the enrollment; ``None`` abstains."""


@hookspec
def kalpla_lesson_access(session: Session, request: LessonAccessRequest) -> Decision | None:
    """Narrow access to a lesson the core already allows (``deny`` with a reason); ``None``
    abstains. Never widens access."""


# --- 3. events (after commit) -------------------------------------------------------------

@hookspec
def kalpla_user_registered(event: UserRegistered) -> None:
    """A user account was created (``kalpla.identity.user.registered.v1``)."""


@hookspec
def kalpla_enrollment_created(event: EnrollmentCreated) -> None:
    """An enrollment was created in any status (``kalpla.enrollment.created.v1``)."""


@hookspec
def kalpla_enrollment_status_changed(event: EnrollmentStatusChanged) -> None:
    """An enrollment moved between statuses (``kalpla.enrollment.status.changed.v1``)."""


@hookspec
def kalpla_lesson_completed(event: LessonCompleted) -> None:
    """A student completed a lesson for the first time (``kalpla.progress.lesson.completed.v1``)."""


@hookspec
def kalpla_course_completed(event: CourseCompleted) -> None:
    """An enrollment completed every required lesson (``kalpla.progress.course.completed.v1``)."""


@hookspec
def kalpla_course_published(event: CoursePublished) -> None:
    """A course was published (``kalpla.courses.course.published.v1``)."""


@hookspec
def kalpla_course_archived(event: CourseArchived) -> None:
    """A course was archived (``kalpla.courses.course.archived.v1``)."""


@hookspec
def kalpla_lesson_changed(event: LessonChanged) -> None:
    """A lesson was created, updated, moved or deleted (``kalpla.courses.lesson.changed.v1``)."""


@hookspec
def kalpla_plugin_enablement_changed(event: PluginEnablementChanged) -> None:
    """A plugin was enabled (with its settings) or disabled for an institution; delivered to
    that plugin whether the change enabled or disabled it."""


@hookspec
def kalpla_order_paid(event: OrderPaid) -> None:
    """An order was paid (``kalpla.payments.order.paid.v1``); announced by the payments
    plugin."""


@hookspec
def kalpla_order_refunded(event: OrderRefunded) -> None:
    """Part or all of a paid order was refunded (``kalpla.payments.order.refunded.v1``)."""


@hookspec
def kalpla_subscription_changed(event: SubscriptionChanged) -> None:
    """A subscription started, renewed, fell behind or ended
    (``kalpla.payments.subscription.changed.v1``)."""


# --- data protection ----------------------------------------------------------------------

@hookspec
def kalpla_user_export(session: Session, user_id: str) -> dict[str, Any] | None:
    """The plugin's part of a user's data export, as JSON-serialisable data."""


@hookspec
def kalpla_user_erase(session: Session, user_id: str) -> None:
    """Erase or anonymise the plugin's data of a user being deleted, inside the deletion's
    transaction."""
