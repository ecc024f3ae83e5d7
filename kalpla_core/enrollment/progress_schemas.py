"""Schemas of progress: learning events in, per-lesson progress and summaries out."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from kalpla_core.enrollment.progress import MAX_POSITION

EVENTS = ("viewed", "video", "completed")


class ProgressEventSchema(Schema):
    """One learning event on a lesson. Send ``viewed`` when the lesson is opened (or its file
    downloaded), ``video`` with the furthest position reached and the share watched while a
    video plays, ``completed`` when a student marks a text or file lesson done. Repeating an
    event, or sending them out of order, never lowers progress."""

    event = fields.String(required=True, validate=validate.OneOf(EVENTS))
    position_seconds = fields.Integer(validate=validate.Range(0, MAX_POSITION), metadata={
        "description": "video events: the furthest point reached, in seconds"})
    percent = fields.Float(validate=validate.Range(0, 100), metadata={
        "description": "video events: the share of the video watched, 0–100"})
    occurred_at = fields.AwareDateTime(default_timezone=UTC, metadata={
        "description": "When it happened on the client (default: now); kept between the "
                       "enrollment's start and now"})

    @validates_schema
    def _fits_event(self, data: dict[str, Any], **_: Any) -> None:
        video_fields = [k for k in ("position_seconds", "percent") if k in data]
        if data.get("event") == "video":
            missing = {"position_seconds", "percent"} - set(video_fields)
            if missing:
                raise ValidationError({k: ["A video event needs it."] for k in sorted(missing)})
        elif video_fields:
            raise ValidationError({k: ["Only video events carry it."] for k in video_fields})


class LessonStateSchema(Schema):
    lesson_id = fields.String()
    first_viewed_at = fields.DateTime(allow_none=True)
    last_event_at = fields.DateTime(allow_none=True)
    position_seconds = fields.Integer(metadata={"description": "furthest position reached"})
    percent = fields.Integer(metadata={"description": "highest share watched (videos)"})
    completed = fields.Boolean()
    completed_at = fields.DateTime(allow_none=True)
    completed_by = fields.String(allow_none=True, metadata={
        "description": "what completed it: viewed, watched, manual or plugin:<name>"})


class SummarySchema(Schema):
    enrollment_id = fields.String()
    course_id = fields.String()
    user_id = fields.String()
    status = fields.String(metadata={"description": "the enrollment's status"})
    lessons_completed = fields.Integer(metadata={"description": "required lessons done"})
    lessons_required = fields.Integer()
    percent = fields.Integer(metadata={"description": "lessons_completed of "
                                       "lessons_required, rounded down"})
    last_lesson_id = fields.String(allow_none=True, metadata={
        "description": "the lesson with the latest event"})
    last_activity_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True, metadata={
        "description": "when the enrollment was completed"})


class EventResultSchema(Schema):
    lesson = fields.Nested(LessonStateSchema)
    summary = fields.Nested(SummarySchema)
    lesson_completed = fields.Boolean(metadata={
        "description": "this event completed the lesson for the first time"})
    course_completed = fields.Boolean(metadata={
        "description": "and with it every required lesson of the course"})


class LessonLineSchema(Schema):
    lesson_id = fields.String()
    module_id = fields.String()
    title = fields.String()
    kind = fields.String()
    is_required = fields.Boolean()
    progress = fields.Nested(LessonStateSchema, allow_none=True, attribute="state",
                             metadata={"description": "null: never opened"})


class CourseProgressSchema(Schema):
    """An enrollment's progress in its course: the summary, where to resume, and each lesson
    in outline order."""

    summary = fields.Nested(SummarySchema)
    resume_lesson_id = fields.String(allow_none=True, metadata={
        "description": "the first required lesson not completed, in outline order; once all "
                       "are done, the lesson opened last"})
    lessons = fields.List(fields.Nested(LessonLineSchema))
