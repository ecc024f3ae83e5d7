from __future__ import annotations

from typing import Any

from flask.views import MethodView

from kalpla_core.context import current_user, db_session, kalpla
from kalpla_core.http.api import Blueprint
from kalpla_core.http.pagination import PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.jobs.schemas import JobSchema
from kalpla_core.jobs.service import NEWEST_FIRST, own_jobs, readable_job

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
        return page_response(paginate(db_session(), own_jobs(user.id), NEWEST_FIRST,
                                      args["limit"], args["cursor"]))


@blp.route("/<job_id>")
class JobItem(MethodView):
    @blp.response(200, JobSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self, job_id: str) -> Any:
        """One job, for its owner (or someone holding ``jobs.read_all`` in its institution)."""
        user = current_user()
        assert user is not None
        job = readable_job(db_session(), kalpla(), user, job_id)
        if job is None:
            raise APIError(404, "There is no such job.", "not-found")
        return job
