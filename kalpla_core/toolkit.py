"""The documented helpers plugins may use besides :mod:`kalpla_core.hookspecs`.

Everything a first-party or third-party plugin needs from the core is importable from here;
names are kept stable within a contract major version (see docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kalpla_core.context import (
    current_institution,
    current_user,
    db_session,
    kalpla,
    require_permission,
)
from kalpla_core.courses.access import can_read_lesson, has_seat
from kalpla_core.courses.models import Course, CourseInstructor, Lesson
from kalpla_core.crypto import InvalidToken, SecretBox, derive_key
from kalpla_core.db import Base, TimestampMixin, UTCDateTime, new_id, queue_after_commit, utcnow
from kalpla_core.enrollment.models import SEATED, Enrollment
from kalpla_core.enrollment.progress import report_lesson_completed
from kalpla_core.enrollment.service import (
    activate_pending,
    complete_enrollment,
    current_enrollment,
    drop_enrollment,
    reject_pending,
)
from kalpla_core.enrollment.state import serialise_writes
from kalpla_core.http.api import Blueprint
from kalpla_core.http.etag import conditional_get, etag_of, require_if_match, set_etag
from kalpla_core.http.pagination import Page, PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError, abort
from kalpla_core.idempotency.http import idempotent
from kalpla_core.identity.models import User
from kalpla_core.institutions.models import Institution
from kalpla_core.jobs import JobContext, JobError, JobSpec
from kalpla_core.plugins.dispatch import any_institution
from kalpla_core.storage.port import StoredObject

__all__ = [
    "SEATED",
    "APIError",
    "Base",
    "Blueprint",
    "Course",
    "CourseInstructor",
    "Enrollment",
    "Institution",
    "InvalidToken",
    "JobContext",
    "JobError",
    "JobSpec",
    "Lesson",
    "Page",
    "PageArgs",
    "SecretBox",
    "StoredObject",
    "TimestampMixin",
    "UTCDateTime",
    "User",
    "abort",
    "activate_pending",
    "add_file",
    "any_institution",
    "aws_client",
    "can_read_lesson",
    "complete_enrollment",
    "conditional_get",
    "current_enrollment",
    "current_institution",
    "current_user",
    "db_session",
    "derive_key",
    "drop_enrollment",
    "emit",
    "enqueue_job",
    "etag_of",
    "file_download_url",
    "find_file",
    "has_seat",
    "idempotent",
    "kalpla",
    "new_id",
    "page_of",
    "page_response",
    "paginate",
    "plugin_settings",
    "queue_after_commit",
    "reject_pending",
    "report_lesson_completed",
    "require_enabled",
    "require_if_match",
    "require_permission",
    "serialise_writes",
    "set_etag",
    "storage",
    "utcnow",
]

# Progress (issue 5), documented in docs/plugins.md ("Reporting completion"):
# report_lesson_completed(session, kalpla, lesson_id=…, plugin=…, user_id=… or enrollment_id=…,
# occurred_at=None) records that a student completed a lesson of the plugin's own kind, the only
# way such a lesson is completed; idempotent (the earliest completion counts), it fires
# kalpla_lesson_completed and, for the last required lesson, kalpla_course_completed.

# Enrollment (issue 5), documented in docs/plugins.md ("Moving a pending enrollment"):
# activate_pending(session, kalpla, enrollment_id, plugin=…) moves pending → active (or
# waitlisted when the course is full), reject_pending(…, reason, plugin=…) pending → dropped,
# drop_enrollment(…, reason) lets a student go, complete_enrollment(…) active → completed (the
# progress engine calls it). ``@idempotent`` on a view honours an ``Idempotency-Key`` header.
# ``current_enrollment(session, course_id, user_id)`` finds a user's enrollment in a course.
# ``Course``, ``CourseInstructor``, ``Lesson``, ``Enrollment`` (``SEATED``: the statuses that
# hold a seat), ``Institution`` and ``User`` are the core's models, for plugins to read (and to
# point foreign keys at); they change only through the core's services.
# ``can_read_lesson(session, kalpla, user, lesson)`` is the core's access decision for a
# lesson, ``has_seat(session, user_id, course_id)`` whether a user holds a seat;
# ``serialise_writes(session)`` takes the write lock SQLite needs before a read-then-write
# (a no-op on PostgreSQL, which locks rows). ``SecretBox(secret, purpose)`` encrypts secrets
# at rest, ``derive_key(secret, purpose)`` derives a key for one purpose.


def plugin_settings(plugin: str, institution_id: str | None = None,
                    session: Any = None) -> dict[str, Any] | None:
    """The plugin's settings for an institution (default: the request's), None if disabled;
    read through ``session`` when given (a gate's or a job's), else the request's."""
    from kalpla_core.institutions.service import plugin_settings as _settings

    inst_id = institution_id or current_institution().id
    return _settings(session if session is not None else db_session(), inst_id, plugin)


def require_enabled(plugin: str, institution_id: str) -> None:
    """404 unless ``plugin`` is enabled for the institution that owns the object at hand
    (routes already check the request's institution; this checks an object's)."""
    if plugin not in kalpla().enabled_plugins(db_session(), institution_id):
        abort(404, "There is no such resource.")


def emit(hook: str, event: Any) -> None:
    """Deliver ``event`` through the event hook ``hook`` after the request's commit."""
    kalpla().emit(db_session(), hook, event)


def enqueue_job(name: str, params: dict[str, Any] | None = None,
                institution_id: str | None = None) -> Any:
    """Queue a registered job owned by the current user; it starts after the commit."""
    user = current_user(required=False)
    return kalpla().jobs.enqueue(db_session(), name, params, user.id if user else None,
                                 institution_id)


def storage(name: str | None = None) -> Any:
    """The storage provider (``KALPLA_STORAGE``, or the one named): ``upload``, ``stat``,
    ``download_url``, ``delete`` over keys (see :mod:`kalpla_core.storage.port`)."""
    from kalpla_core.storage.service import storage as _storage

    return _storage(kalpla(), name)


def aws_client(service: str, app_kalpla: Any = None,
               config: Mapping[str, Any] | None = None) -> Any:
    """The app's boto3 client of an AWS ``service`` (``"s3"``, ``"ivs"``, ``"polly"`` …),
    with the region, retries, timeouts and endpoint of the ``KALPLA_AWS_*`` settings.
    ``app_kalpla`` (``app.extensions["kalpla"]``) serves callers outside an app context;
    ``config`` (botocore ``Config`` keyword arguments) overrides the defaults it names, e.g.
    ``{"retries": {"mode": "standard", "total_max_attempts": 5}}``: one client per distinct
    override, shared by its callers."""
    from kalpla_core.aws import aws_client as _aws_client

    return _aws_client(app_kalpla if app_kalpla is not None else kalpla(), service, config)


# Files a plugin's own storage provider holds (issue 7), documented in docs/plugins.md ("Files
# of a plugin's storage provider").

def find_file(session: Any, *, provider: str, storage_key: str) -> str | None:
    """The id of the ``ready`` file ``provider`` holds at ``storage_key``, or None."""
    from sqlalchemy import select

    from kalpla_core.storage.models import StoredFile

    return session.scalar(select(StoredFile.id).where(
        StoredFile.storage_key == storage_key, StoredFile.provider == provider,
        StoredFile.status == "ready"))


def add_file(session: Any, *, institution_id: str, course_id: str, lesson_id: str | None,
             provider: str, storage_key: str, filename: str, content_type: str, size: int,
             purpose: str = "resource", owner_id: str | None = None) -> str:
    """Record a ``ready`` file of a course (and of one of its lessons) whose object a
    plugin's storage provider (registered through ``kalpla_providers``) already holds at
    ``storage_key``; its id. It is read like any file (of a lesson: by whoever may read the
    lesson), its download URL comes from ``provider``'s ``download_url`` and its deletion
    calls ``provider``'s ``delete``. Idempotent: a file already recorded at ``storage_key``
    (by ``provider``, for the course) is the answer, also when a concurrent call recorded it
    first; a file of another course or provider there is a ValueError."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from kalpla_core.db import new_id as _new_id
    from kalpla_core.db import utcnow as _utcnow
    from kalpla_core.storage.models import StoredFile
    from kalpla_core.storage.service import PURPOSES

    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}")
    course = session.get(Course, course_id)
    if course is None or course.institution_id != institution_id:
        raise ValueError("the course is not the institution's")
    if lesson_id is not None:
        lesson = session.get(Lesson, lesson_id)
        if lesson is None or lesson.course_id != course_id:
            raise ValueError("the lesson is not the course's")
    def recorded() -> str | None:
        # The file at the key, if it is this one: another course's (or institution's) is
        # never handed out as this course's.
        existing = session.scalar(select(StoredFile).where(
            StoredFile.storage_key == storage_key).execution_options(populate_existing=True))
        if existing is None:
            return None
        if (existing.provider, existing.status, existing.institution_id,
                existing.course_id) != (provider, "ready", institution_id, course_id):
            raise ValueError("another file is recorded at that storage key")
        return str(existing.id)

    found = recorded()
    if found is not None:
        return found
    file = StoredFile(
        id=_new_id(), institution_id=institution_id, owner_id=owner_id, course_id=course_id,
        lesson_id=lesson_id, purpose=purpose, provider=provider, storage_key=storage_key,
        filename=filename[:255], content_type=content_type, size=max(int(size), 0),
        status="ready", confirmed_at=_utcnow())
    try:
        with session.begin_nested():
            session.add(file)
    except IntegrityError:
        found = recorded()
        if found is None:
            raise
        return found
    return file.id


def file_download_url(session: Any, file_id: str, ttl: int | None = None) -> tuple[str, int]:
    """A URL serving the ready file ``file_id`` and how many seconds it lasts (by default the
    core's: minutes, an hour for audio and video). It checks no rights: the caller has."""
    from kalpla_core.storage.models import StoredFile
    from kalpla_core.storage.service import download_ttl, download_url

    file = session.get(StoredFile, file_id)
    if file is None:
        raise APIError(404, f"There is no file {file_id!r}.", "not-found")
    seconds = ttl or download_ttl(file)
    return download_url(kalpla(), file, seconds), seconds
