"""Imports every core model, so the metadata (migrations, plugin checks) sees all tables."""

from kalpla_core.audit.models import AuditEvent
from kalpla_core.courses.models import (
    Course,
    CourseInstructor,
    CoursePrerequisite,
    CourseSearchTerm,
    CourseTag,
    Lesson,
    Module,
)
from kalpla_core.enrollment.models import Enrollment, LessonProgress
from kalpla_core.idempotency.models import IdempotencyKey
from kalpla_core.identity.models import (
    APIKey,
    EmailToken,
    LoginThrottle,
    Membership,
    RecoveryCode,
    RefreshToken,
    SigningKey,
    TOTPDevice,
    User,
    UserIdentity,
)
from kalpla_core.institutions.models import Institution, InstitutionPlugin
from kalpla_core.jobs.models import Job
from kalpla_core.mail.models import OutboxMessage
from kalpla_core.storage.models import StoredFile

__all__ = [
    "APIKey",
    "AuditEvent",
    "Course",
    "CourseInstructor",
    "CoursePrerequisite",
    "CourseSearchTerm",
    "CourseTag",
    "EmailToken",
    "Enrollment",
    "IdempotencyKey",
    "Institution",
    "InstitutionPlugin",
    "Job",
    "Lesson",
    "LessonProgress",
    "LoginThrottle",
    "Membership",
    "Module",
    "OutboxMessage",
    "RecoveryCode",
    "RefreshToken",
    "SigningKey",
    "StoredFile",
    "TOTPDevice",
    "User",
    "UserIdentity",
]
