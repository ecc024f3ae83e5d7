"""Reading job records: who may see which job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from kalpla_core.identity.models import User
from kalpla_core.jobs.models import Job

if TYPE_CHECKING:
    from kalpla_core.http.pagination import SortKey


def readable_job(session: Session, kalpla: Any, user: User, job_id: str) -> Job | None:
    """The job, if ``user`` owns it or holds ``jobs.read_all`` in its institution; else None
    (callers answer 404 alike for a missing job and someone else's)."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    if job.owner_id == user.id:
        return job
    if kalpla.has_permission(session, user, "jobs.read_all", job.institution_id):
        return job
    return None


def own_jobs(user_id: str) -> Select[tuple[Job]]:
    """The jobs ``user_id`` owns (order them with :data:`NEWEST_FIRST`)."""
    return select(Job).where(Job.owner_id == user_id)


NEWEST_FIRST: list[SortKey] = [(Job.created_at, "desc"), (Job.id, "desc")]
