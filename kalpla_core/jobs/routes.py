from __future__ import annotations

from typing import Any

from flask.views import MethodView
from sqlalchemy import select

from kalpla_core.context import current_user, db_session, kalpla
from kalpla_core.http.api import Blueprint
from kalpla_core.http.pagination import PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.jobs.models import Job
from kalpla_core.jobs.schemas import JobSchema

blp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs",
                description="Background jobs: status, progress and result.")


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(JobSchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's own jobs, newest first."""
        user = current_user()
        assert user is not None
        stmt = select(Job).where(Job.owner_id == user.id)
        return page_response(paginate(db_session(), stmt,
                                      [(Job.created_at, "desc"), (Job.id, "desc")],
                                      args["limit"], args["cursor"]))


@blp.route("/<job_id>")
class JobItem(MethodView):
    @blp.response(200, JobSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self, job_id: str) -> Any:
        """One job, for its owner (or an admin of its institution)."""
        user = current_user()
        session = db_session()
        job = session.get(Job, job_id)
        visible = job is not None and (
            job.owner_id == (user.id if user else None)
            or kalpla().has_permission(session, user, "jobs.read_all", job.institution_id))
        if not visible:
            raise APIError(404, "There is no such job.", "not-found")
        return job
