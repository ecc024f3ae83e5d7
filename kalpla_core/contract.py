"""Types the hooks speak in: plugin metadata, registrations, gate decisions, event payloads.

Part of the public contract (re-exported by :mod:`kalpla_core.hookspecs`). Payload types may
gain fields (with defaults) but never lose or change one within a contract major version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


@dataclass(frozen=True)
class PluginMeta:
    """What a plugin says about itself: a module-level ``KALPLA_PLUGIN`` in its entry point.

    ``core_requires`` is a PEP 440 specifier set that the running core version must satisfy;
    ``requires`` names plugins that must be loaded too.
    """

    name: str
    version: str
    core_requires: str
    requires: tuple[str, ...] = ()
    label: str = ""
    description: str = ""


@dataclass(frozen=True)
class Permission:
    """A named permission (``payments.refund``) and the institution roles granted it by default."""

    name: str
    description: str
    default_roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Provider:
    """An implementation of a port (``mail``, ``storage``, ``jobs``, ``payments`` …).

    ``factory(app)`` returns the provider object; the port's owner documents its interface.
    """

    port: str
    name: str
    factory: Callable[[Any], Any]
    description: str = ""


@dataclass(frozen=True)
class LessonKind:
    """A kind of lesson a plugin contributes (``live``, ``quiz``). ``data_schema`` validates
    the lesson's ``data``; lessons of plugin kinds are completed only when the plugin reports
    it through the core progress service."""

    name: str
    label: str
    data_schema: Any = None  # a marshmallow Schema class, or None for no data
    description: str = ""


Outcome = Literal["allow", "deny", "pending"]


@dataclass(frozen=True)
class Decision:
    """A gate's answer. ``code`` is machine-readable, ``reason`` is for people, and ``action``
    tells the client what to do to go on (for example ``{"type": "checkout", "url": …}``)."""

    outcome: Outcome
    reason: str = ""
    code: str = ""
    action: Mapping[str, Any] | None = None
    plugin: str = ""

    @classmethod
    def allow(cls) -> Decision:
        return cls("allow")

    @classmethod
    def deny(cls, reason: str, code: str = "denied") -> Decision:
        return cls("deny", reason=reason, code=code)

    @classmethod
    def pending(cls, reason: str, action: Mapping[str, Any] | None = None,
                code: str = "pending") -> Decision:
        return cls("pending", reason=reason, code=code, action=action)


# --- gate requests ------------------------------------------------------------------------

@dataclass(frozen=True)
class EnrollmentRequest:
    """Someone asks for ``user_id`` to be enrolled in ``course_id``."""

    institution_id: str
    course_id: str
    user_id: str
    requested_by: str
    source: str = "self"  # self | staff | bulk | subscription


@dataclass(frozen=True)
class LessonAccessRequest:
    """May ``user_id`` (None: anonymous) read ``lesson_id``? Asked after the core's own rules
    allowed it; a plugin may only narrow access, never widen it."""

    institution_id: str
    course_id: str
    lesson_id: str
    user_id: str | None


# --- events -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event payload. ``name`` is versioned: a changed payload gets a new name."""

    name: ClassVar[str]
    institution_id: str | None
    occurred_at: str  # ISO 8601, UTC

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class UserRegistered(Event):
    name: ClassVar[str] = "kalpla.identity.user.registered.v1"
    user_id: str
    email: str


@dataclass(frozen=True, kw_only=True)
class EnrollmentCreated(Event):
    name: ClassVar[str] = "kalpla.enrollment.created.v1"
    enrollment_id: str
    course_id: str
    user_id: str
    status: str


@dataclass(frozen=True, kw_only=True)
class LessonCompleted(Event):
    name: ClassVar[str] = "kalpla.progress.lesson.completed.v1"
    lesson_id: str
    course_id: str
    user_id: str
    enrollment_id: str


@dataclass(frozen=True, kw_only=True)
class PluginEnablementChanged(Event):
    name: ClassVar[str] = "kalpla.plugins.enablement.changed.v1"
    plugin: str
    enabled: bool
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CoursePublished(Event):
    name: ClassVar[str] = "kalpla.courses.course.published.v1"
    course_id: str
    slug: str
    title: str


@dataclass(frozen=True, kw_only=True)
class CourseArchived(Event):
    name: ClassVar[str] = "kalpla.courses.course.archived.v1"
    course_id: str


@dataclass(frozen=True, kw_only=True)
class LessonChanged(Event):
    name: ClassVar[str] = "kalpla.courses.lesson.changed.v1"
    lesson_id: str
    course_id: str
    change: str  # created | updated | moved | deleted


@dataclass(frozen=True, kw_only=True)
class EnrollmentStatusChanged(Event):
    name: ClassVar[str] = "kalpla.enrollment.status.changed.v1"
    enrollment_id: str
    course_id: str
    user_id: str
    old_status: str
    new_status: str
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class CourseCompleted(Event):
    name: ClassVar[str] = "kalpla.progress.course.completed.v1"
    enrollment_id: str
    course_id: str
    user_id: str


# --- payments events (issue 6): announced by the payments plugin, heard by analytics ---------

@dataclass(frozen=True, kw_only=True)
class OrderPaid(Event):
    name: ClassVar[str] = "kalpla.payments.order.paid.v1"
    order_id: str
    user_id: str | None
    course_id: str | None
    plan_id: str | None
    amount: int  # minor units of ``currency``
    currency: str
    provider: str
    invoice_number: int | None


@dataclass(frozen=True, kw_only=True)
class OrderRefunded(Event):
    name: ClassVar[str] = "kalpla.payments.order.refunded.v1"
    order_id: str
    user_id: str | None
    amount: int  # refunded by this change
    total_refunded: int
    currency: str
    status: str  # partially_refunded | refunded


@dataclass(frozen=True, kw_only=True)
class SubscriptionChanged(Event):
    name: ClassVar[str] = "kalpla.payments.subscription.changed.v1"
    subscription_id: str
    user_id: str
    plan_id: str
    status: str  # active | past_due | canceled | expired
    current_period_end: str  # ISO 8601, UTC
