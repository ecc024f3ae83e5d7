"""Schemas of enrollments, rosters and bulk enrollment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, fields, validate

from kalpla_core.enrollment.models import ENROLLMENT_STATUSES, Enrollment
from kalpla_core.http.pagination import PageArgs
from kalpla_core.identity.models import ROLES, User

_status = fields.String(validate=validate.OneOf(ENROLLMENT_STATUSES), load_default=None,
                        metadata={"description": "Only enrollments in this status."})


@dataclass
class EnrollmentView:
    """An enrollment as answered: the row, its waitlist place and (on rosters) its user."""

    enrollment: Enrollment
    waitlist_position: int | None = None
    user: User | None = None


class EnrollArgs(Schema):
    user_id = fields.String(load_default=None, validate=validate.Length(1, 32), metadata={
        "description": "The member to enroll (course staff only); omit to enroll yourself."})


class EnrollmentListArgs(PageArgs):
    status = _status


class RosterUserSchema(Schema):
    id = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    email = fields.String(dump_only=True)


class EnrollmentSchema(Schema):
    id = fields.String(dump_only=True)
    institution_id = fields.String(dump_only=True)
    course_id = fields.String(dump_only=True)
    user_id = fields.String(dump_only=True)
    status = fields.String(dump_only=True, metadata={
        "description": "pending, active, completed, dropped, expired or waitlisted"})
    source = fields.String(dump_only=True, metadata={
        "description": "self, staff, bulk or subscription"})
    enrolled_by = fields.String(dump_only=True, allow_none=True)
    pending_plugin = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "The plugin a pending enrollment waits on."})
    pending_reason = fields.String(dump_only=True, allow_none=True)
    action = fields.Dict(dump_only=True, allow_none=True, attribute="pending_action",
                         metadata={"description": "What the client should do for a pending "
                                                  "enrollment to go on (e.g. a checkout)."})
    activated_at = fields.DateTime(dump_only=True, allow_none=True)
    expires_at = fields.DateTime(dump_only=True, allow_none=True, metadata={
        "description": "When access runs out (activation + the course's access_days)."})
    completed_at = fields.DateTime(dump_only=True, allow_none=True)
    dropped_at = fields.DateTime(dump_only=True, allow_none=True)
    waitlisted_at = fields.DateTime(dump_only=True, allow_none=True)
    waitlist_position = fields.Integer(dump_only=True, allow_none=True, metadata={
        "description": "Place in the waitlist (1 = next) while waitlisted."})
    offer_expires_at = fields.DateTime(dump_only=True, allow_none=True, metadata={
        "description": "A seat is offered until then: accept it with POST …/accept-offer."})
    lessons_completed = fields.Integer(dump_only=True)
    lessons_required = fields.Integer(dump_only=True)
    progress_percent = fields.Integer(dump_only=True)
    last_activity_at = fields.DateTime(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        if isinstance(obj, EnrollmentView):
            if attr in ("waitlist_position", "user"):
                return getattr(obj, attr)
            obj = obj.enrollment
        return super().get_attribute(obj, attr, default)


class RosterEntrySchema(EnrollmentSchema):
    user = fields.Nested(RosterUserSchema, dump_only=True, allow_none=True)


class BulkRowSchema(Schema):
    """One row of a bulk enrollment. The address is checked row by row by the job, so that
    one bad row is reported as ``invalid`` instead of refusing the whole list."""

    email = fields.String(required=True)
    role = fields.String(load_default=None, allow_none=True,
                         metadata={"description": "Role in the institution given to a new "
                                                  "member: " + ", ".join(ROLES)
                                                  + " (default student)."})


class BulkAcceptedSchema(Schema):
    job_id = fields.String(dump_only=True)
    status = fields.String(dump_only=True)
    rows = fields.Integer(dump_only=True)
    location = fields.String(dump_only=True, metadata={
        "description": "Where the job's progress and per-row results are read."})
