"""Routes of progress: recording learning events, and reading an enrollment's progress."""

from __future__ import annotations

from typing import Any

from flask import after_this_request
from flask.views import MethodView

from kalpla_core.context import current_user, db_session, has_permission, kalpla
from kalpla_core.courses.service import Caller
from kalpla_core.enrollment import progress
from kalpla_core.enrollment.progress_schemas import (
    CourseProgressSchema,
    EventResultSchema,
    ProgressEventSchema,
)
from kalpla_core.http.api import Blueprint

blp = Blueprint("progress", __name__, url_prefix="/api/v1",
                description="Progress: learning events on lessons, and each enrollment's "
                            "progress through its course.")

BEARER = [{"bearer": []}]


def _caller() -> Caller:
    return Caller(current_user(required=False), has_permission)


def _private() -> None:
    @after_this_request
    def _set(response: Any) -> Any:
        response.headers["Cache-Control"] = "private, no-store"
        return response


@blp.route("/lessons/<lesson_id>/progress")
class LessonProgressEvents(MethodView):
    @blp.arguments(ProgressEventSchema)
    @blp.response(200, EventResultSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], lesson_id: str) -> Any:
        """Record a learning event of the caller on a lesson: students who may read the lesson
        and hold an active enrollment in its course (staff previews are not recorded).
        Idempotent and order-independent: progress only grows. Completion rules: text and file
        lessons when viewed (or marked completed), videos once ``video_completion_percent``
        (institution setting, default 90) is watched, plugin kinds when their plugin reports
        it."""
        caller = _caller()
        _private()
        return progress.record_event(
            db_session(), kalpla(), caller.user, lesson_id, data["event"],
            position_seconds=data.get("position_seconds"), percent=data.get("percent"),
            occurred_at=data.get("occurred_at"), can=caller.can)


@blp.route("/courses/<course_id>/progress")
class MyCourseProgress(MethodView):
    @blp.response(200, CourseProgressSchema)
    @blp.doc(security=BEARER)
    def get(self, course_id: str) -> Any:
        """The caller's progress in the course: lessons done, percent, each lesson's progress
        and the resume point (404 without an enrollment)."""
        _private()
        return progress.my_progress(db_session(), kalpla(), _caller(), course_id)


@blp.route("/enrollments/<enrollment_id>/progress")
class EnrollmentProgress(MethodView):
    @blp.response(200, CourseProgressSchema)
    @blp.doc(security=BEARER)
    def get(self, enrollment_id: str) -> Any:
        """An enrollment's progress, for its student and the course's instructors and the
        institution's admins (404 to anyone else)."""
        _private()
        return progress.enrollment_progress(db_session(), kalpla(), _caller(), enrollment_id)
