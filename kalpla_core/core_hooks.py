"""The core's own hook implementations; registered first, as the plugin named ``core``."""

from __future__ import annotations

from typing import Any

from kalpla_core.contract import LessonChanged, Permission, Provider
from kalpla_core.hookspecs import hookimpl


@hookimpl
def kalpla_permissions() -> list[Permission]:
    return [
        Permission("institutions.manage", "Edit the institution and its settings", ("admin",)),
        Permission("plugins.manage", "Enable, configure and disable plugins", ("admin",)),
        Permission("members.manage", "Add members and change their roles", ("admin",)),
        Permission("jobs.read_all", "Read every background job of the institution", ("admin",)),
        # Identity (issue 3): API keys and the audit log.
        Permission("apikeys.manage", "Create, list and revoke the institution's API keys",
                   ("admin",)),
        Permission("audit.read", "Read the institution's audit log", ("admin",)),
        # Courses (issue 4): authoring. A mentor edits only the courses they instruct or
        # created; courses.manage_all lifts that limit.
        Permission("courses.create", "Create courses and edit the ones you instruct",
                   ("mentor", "admin")),
        Permission("courses.manage_all", "Edit, publish, archive and delete every course of "
                   "the institution", ("admin",)),
        # Enrollment (issue 5): a course's staff (its instructors, the institution's admins)
        # enroll others, read its roster and drop its students.
        Permission("enrollment.manage", "Enroll others in, read the roster of and drop "
                   "students from the courses you instruct", ("mentor", "admin")),
    ]


@hookimpl
def kalpla_providers() -> list[Provider]:
    from kalpla_core.identity.apikeys import APIKeyAuthenticator
    from kalpla_core.identity.authn import KalplaTokenAuthenticator
    from kalpla_core.identity.federation.cognito import CognitoAuthenticator
    from kalpla_core.jobs.runners import CeleryRunner, InProcessRunner
    from kalpla_core.mail.providers import OutboxProvider, SMTPProvider
    from kalpla_core.storage.local import LocalStorage
    from kalpla_core.storage.s3 import S3Storage

    return [
        Provider("authenticator", "token", KalplaTokenAuthenticator,
                 "Bearer access tokens signed by this deployment"),
        # Identity (issue 3): institution API keys (klp_…), only such credentials claimed.
        Provider("authenticator", "api_key", APIKeyAuthenticator,
                 "Institution API keys: Bearer klp_… or X-API-Key"),
        # Identity (issue 3): tokens of the Cognito user pools in KALPLA_COGNITO_USER_POOLS.
        Provider("authenticator", "cognito", CognitoAuthenticator,
                 "Bearer tokens issued by a configured Amazon Cognito user pool"),
        # Identity (issue 3): the mail port; KALPLA_MAIL picks one, plugins may add more.
        Provider("mail", "outbox", OutboxProvider,
                 "Stores mail in the mail_outbox table (kalpla mail list)"),
        Provider("mail", "smtp", SMTPProvider, "Sends through the server at KALPLA_SMTP_URL"),
        Provider("jobs", "inprocess", InProcessRunner, "Thread pool inside the web process"),
        # Courses (issue 4): the storage port; KALPLA_STORAGE picks where new files go.
        Provider("storage", "local", LocalStorage,
                 "Files under <instance>/files, served through HMAC-signed URLs"),
        Provider("storage", "s3", S3Storage,
                 "Objects in KALPLA_S3_BUCKET: presigned POST uploads and GET downloads, SSE"),
        Provider("jobs", "celery", CeleryRunner, "Celery workers (KALPLA_CELERY_BROKER_URL)"),
    ]


@hookimpl
def kalpla_cli_commands() -> list[Any]:
    # Enrollment (issue 5): kalpla enrollments expire, kalpla idempotency purge.
    from kalpla_core.enrollment.cli import enrollments
    from kalpla_core.idempotency.cli import idempotency

    # Identity (issue 3): kalpla mail list / show.
    from kalpla_core.mail.cli import mail

    # Storage: kalpla files purge-pending.
    from kalpla_core.storage.cli import files

    return [mail, enrollments, idempotency, files]


@hookimpl
def kalpla_jobs() -> dict[str, Any]:
    # Enrollment (issue 5): bulk enrollment.
    from kalpla_core.enrollment.bulk import JOB, bulk_enroll_job
    from kalpla_core.jobs import JobSpec

    # Storage: abandoned uploads, for deployments that schedule jobs rather than cron; a
    # partial run is simply continued by the next.
    from kalpla_core.storage import purge

    return {JOB: bulk_enroll_job,
            purge.JOB: JobSpec(purge.purge_pending_job, retry_safe=True)}


# Enrollment (issue 5): progress summaries follow the course's lessons.
@hookimpl
def kalpla_lesson_changed(event: LessonChanged) -> None:
    from flask import current_app

    from kalpla_core.enrollment.progress import on_lesson_changed

    on_lesson_changed(current_app.extensions["kalpla"], event.course_id)
