"""Enrollment routes: enrolling (one, or in bulk), rosters, my enrollments, dropping and
accepting a waitlist offer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import request, url_for
from flask.views import MethodView
from marshmallow import ValidationError

from kalpla_core.context import current_user, db_session, has_permission, kalpla
from kalpla_core.courses.service import Caller
from kalpla_core.db import utcnow
from kalpla_core.enrollment import bulk, service, waitlist
from kalpla_core.enrollment.models import Enrollment
from kalpla_core.enrollment.schemas import (
    BulkAcceptedSchema,
    BulkRowSchema,
    EnrollArgs,
    EnrollmentListArgs,
    EnrollmentSchema,
    EnrollmentView,
    RosterEntrySchema,
)
from kalpla_core.http.api import Blueprint
from kalpla_core.http.etag import conditional_get, etag_of
from kalpla_core.http.pagination import page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.idempotency.http import idempotent

blp = Blueprint("enrollment", __name__, url_prefix="/api/v1",
                description="Enrollment: joining courses, the waitlist, rosters and bulk "
                            "enrollment.")

BEARER = [{"bearer": []}]
CSV_TYPES = ("text/csv", "application/csv")


def _caller() -> Caller:
    return Caller(current_user(required=False), has_permission)


def _views(enrollments: Sequence[Enrollment], with_users: bool = False) -> list[EnrollmentView]:
    session = db_session()
    places = waitlist.positions(session, enrollments)
    users = service.users_of(session, enrollments) if with_users else {}
    return [EnrollmentView(e, places.get(e.id), users.get(e.user_id)) for e in enrollments]


def _one(enrollment: Enrollment) -> EnrollmentView:
    return _views([enrollment])[0]


@blp.route("/courses/<course_id>/enrollments")
class CourseEnrollments(MethodView):
    @blp.arguments(EnrollmentListArgs, location="query")
    @blp.response(200, page_of(RosterEntrySchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any], course_id: str) -> Any:
        """The course's roster, for its instructors and the institution's admins
        (``enrollment.manage``): by status then id; ``status=waitlisted`` in waitlist
        order."""
        session = db_session()
        course = service.managed_course(session, _caller(), course_id)
        service.refresh_due(session, kalpla(), utcnow(), course_id=course.id)
        stmt, keys = service.roster(course.id, args["status"])
        page = paginate(session, stmt, keys, args["limit"], args["cursor"])
        page.items = _views(page.items, with_users=True)
        return page_response(page)

    @idempotent
    @blp.arguments(EnrollArgs)
    @blp.response(201, EnrollmentSchema)
    @blp.alt_response(202, schema=EnrollmentSchema, description=(
        "The enrollment waits on a plugin (status pending): ``action`` tells the client what "
        "to do, such as paying."))
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], course_id: str) -> Any:
        """Enroll yourself (empty body), or, as the course's staff, a member (``user_id``).

        201 with status ``active``, or ``waitlisted`` (with ``waitlist_position``) when the
        course is full; 202 with status ``pending`` when a plugin holds it. Problems:
        ``enrollment-not-open``, ``enrollment-closed``, ``prerequisites-missing`` (listing
        them), ``already-enrolled`` (with ``enrollment_id``), ``not-a-member``, or the
        refusing plugin's own code (403). Honours ``Idempotency-Key``."""
        enrollment = service.enroll(db_session(), kalpla(), _caller(), course_id,
                                    data["user_id"])
        status = 202 if enrollment.status == "pending" else 201
        location = url_for("enrollment.EnrollmentItem", enrollment_id=enrollment.id)
        return _one(enrollment), status, {"Location": location}


def _bulk_rows() -> list[dict[str, str | None]]:
    """The rows of a bulk request: a JSON list, a CSV body, or a CSV file in a multipart
    form (field ``file``)."""
    mimetype = request.mimetype
    if mimetype in CSV_TYPES:
        return bulk.parse_csv(_text(request.get_data()))
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise APIError(422, "The request has invalid fields; see errors.", "validation",
                           errors={"file": ["Attach the CSV file as the field 'file'."]})
        return bulk.parse_csv(_text(upload.read()))
    if mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, list):
            raise APIError(422, "The request has invalid fields; see errors.", "validation",
                           errors={"rows": ["Send a JSON list of {email, role} objects."]})
        try:
            rows = BulkRowSchema(many=True).load(body)
        except ValidationError as exc:
            raise APIError(422, "The request has invalid fields; see errors.", "validation",
                           errors={"rows": exc.messages}) from None
        return bulk.clean_rows(rows)
    raise APIError(415, "Send a JSON list, a text/csv body or a multipart form with a CSV "
                   "file.", "unsupported-media-type")


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(422, "The request has invalid fields; see errors.", "validation",
                       errors={"file": ["The CSV must be UTF-8 text."]}) from None


_BULK_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "array", "items": {
            "type": "object", "required": ["email"],
            "properties": {"email": {"type": "string"}, "role": {"type": "string"}}}}},
        "text/csv": {"schema": {"type": "string"}, "example": "email,role\nana@example.com,"
                     "student\n"},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}}},
    },
}


@blp.route("/courses/<course_id>/enrollments/bulk")
class BulkEnrollments(MethodView):
    @idempotent
    @blp.response(202, BulkAcceptedSchema)
    @blp.doc(security=BEARER, requestBody=_BULK_BODY)
    def post(self, course_id: str) -> Any:
        """Enroll many at once (the course's staff): a JSON list of ``{email, role}``, or a
        CSV with the columns ``email`` and optionally ``role`` (as the body, ``text/csv``, or
        the ``file`` of a multipart form). Runs as a background job: follow it at the
        ``Location`` (``/api/v1/jobs/{id}``) for progress and the result of each row —
        ``enrolled``, ``already-enrolled``, ``invited`` (no account had the address: one
        was created and invited) or ``invalid`` with a reason."""
        session = db_session()
        rows = _bulk_rows()
        job = bulk.start(session, kalpla(), _caller(), course_id, rows)
        location = url_for("jobs.JobItem", job_id=job.id)
        body = {"job_id": job.id, "status": job.status, "rows": len(rows),
                "location": location}
        return body, 202, {"Location": location}


def _enrollment_etag(view: EnrollmentView) -> str:
    # The waitlist place moves without the row changing: it is part of the version read.
    return etag_of("enrollment", view.enrollment.id,
                   f"{view.enrollment.version}:{view.waitlist_position}")


@blp.route("/enrollments/<enrollment_id>")
class EnrollmentItem(MethodView):
    @blp.response(200, EnrollmentSchema)
    @blp.doc(security=BEARER)
    def get(self, enrollment_id: str) -> Any:
        """One enrollment, for its student or the course's staff."""
        enrollment = service.readable_enrollment(db_session(), kalpla(), _caller(),
                                                 enrollment_id)
        view = _one(enrollment)
        conditional_get(_enrollment_etag(view))
        return view

    @blp.response(200, EnrollmentSchema)
    @blp.doc(security=BEARER)
    def delete(self, enrollment_id: str) -> Any:
        """Drop the enrollment (its student, or the course's staff): a pending, active or
        waitlisted enrollment becomes ``dropped`` and a freed seat is offered to the next
        student waiting. A completed enrollment is kept (409)."""
        session = db_session()
        caller = _caller()
        enrollment = service.readable_enrollment(session, kalpla(), caller, enrollment_id)
        assert caller.user is not None
        reason = ("Dropped by the student." if caller.user.id == enrollment.user_id
                  else "Dropped by the course's staff.")
        return _one(service.drop_enrollment(session, kalpla(), enrollment.id, reason))


@blp.route("/enrollments/<enrollment_id>/accept-offer")
class AcceptOffer(MethodView):
    @blp.response(200, EnrollmentSchema)
    @blp.doc(security=BEARER)
    def post(self, enrollment_id: str) -> Any:
        """Take the seat offered to you from the waitlist (your own enrollment only), before
        ``offer_expires_at``; the enrollment becomes ``active``. ``no-offer`` or
        ``offer-expired`` (409) otherwise."""
        session = db_session()
        caller = _caller()
        user = current_user()
        assert user is not None
        enrollment = session.get(Enrollment, enrollment_id)
        if enrollment is None or enrollment.user_id != user.id:
            # Staff read the enrollment, but the seat is the student's to take.
            service.readable_enrollment(session, kalpla(), caller, enrollment_id)
            raise APIError(403, "Only the student accepts their seat offer.", "forbidden")
        return _one(waitlist.accept_offer(session, kalpla(), enrollment, utcnow()))


@blp.route("/me/enrollments")
class MyEnrollments(MethodView):
    @blp.arguments(EnrollmentListArgs, location="query")
    @blp.response(200, page_of(EnrollmentSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """Your enrollments in every institution, newest first."""
        session = db_session()
        user = current_user()
        assert user is not None
        service.refresh_due(session, kalpla(), utcnow(), user_id=user.id)
        stmt, keys = service.my_enrollments(user.id, args["status"])
        page = paginate(session, stmt, keys, args["limit"], args["cursor"])
        page.items = _views(page.items)
        return page_response(page)
