"""Schemas of a course's structure: modules, lessons, their order and the outline."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from kalpla_core.courses.structure import (
    MAX_BODY,
    MAX_DURATION,
    MAX_LESSONS_PER_MODULE,
    MAX_MODULES,
)

_id = fields.String(validate=validate.Length(1, 32))


# --- modules ----------------------------------------------------------------------------------

class ModuleSchema(Schema):
    id = fields.String(dump_only=True)
    course_id = fields.String(dump_only=True)
    title = fields.String(dump_only=True)
    summary = fields.String(dump_only=True)
    position = fields.Integer(dump_only=True, metadata={"description": "0-based, dense"})
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class ModuleWriteSchema(Schema):
    """A new module: at the end of the course, or at ``position`` (later ones move down)."""

    title = fields.String(required=True, validate=validate.Length(1, 200))
    summary = fields.String(load_default="", validate=validate.Length(max=500))
    position = fields.Integer(validate=validate.Range(min=0), metadata={
        "description": "0-based; at most the number of modules (the end)"})


class ModulePatchSchema(Schema):
    """A change to a module; ``position`` moves it within its course (``If-Match`` required)."""

    title = fields.String(validate=validate.Length(1, 200))
    summary = fields.String(validate=validate.Length(max=500))
    position = fields.Integer(validate=validate.Range(min=0))


class ModuleOrderSchema(Schema):
    module_ids = fields.List(_id, required=True, validate=validate.Length(max=MAX_MODULES),
                             metadata={"description": "Every module of the course, once, "
                                       "in the new order"})


# --- lessons ----------------------------------------------------------------------------------

class LessonSummarySchema(Schema):
    """A lesson as listings and the outline show it: no body, no content references."""

    id = fields.String(dump_only=True)
    module_id = fields.String(dump_only=True)
    course_id = fields.String(dump_only=True)
    title = fields.String(dump_only=True)
    kind = fields.String(dump_only=True)
    position = fields.Integer(dump_only=True, metadata={"description": "0-based, dense"})
    duration_seconds = fields.Integer(dump_only=True, allow_none=True)
    is_preview = fields.Boolean(dump_only=True)
    is_required = fields.Boolean(dump_only=True)


class LessonSchema(LessonSummarySchema):
    """A lesson in full; read by those allowed to (staff, enrolled students, previews)."""

    body = fields.String(dump_only=True, metadata={"description": "Markdown, raw"})
    video_url = fields.String(dump_only=True, allow_none=True)
    file_id = fields.String(dump_only=True, allow_none=True)
    data = fields.Dict(dump_only=True, metadata={
        "description": "Settings of a plugin's lesson kind"})
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class LessonWriteSchema(Schema):
    """A new lesson. What a kind needs: ``text`` a Markdown ``body``; ``video`` a
    ``video_url`` (https) or the ``file_id`` of a ready video file, and ``duration_seconds``;
    ``file`` a ``file_id``; a plugin's kind its ``data``. Every kind may have a ``body``
    (notes shown with it)."""

    title = fields.String(required=True, validate=validate.Length(1, 200))
    kind = fields.String(required=True, validate=validate.Length(1, 32),
                         metadata={"description": "text, video, file or a plugin's kind"})
    body = fields.String(validate=validate.Length(max=MAX_BODY),
                         metadata={"description": "Markdown, stored as given"})
    video_url = fields.Url(allow_none=True, schemes={"https"}, require_tld=True,
                           validate=validate.Length(max=2000))
    file_id = fields.String(allow_none=True, validate=validate.Length(1, 32))
    duration_seconds = fields.Integer(allow_none=True,
                                      validate=validate.Range(0, MAX_DURATION))
    is_preview = fields.Boolean(metadata={"description": "Free preview of a published "
                                          "course, readable by anyone"})
    is_required = fields.Boolean(metadata={"description": "Counts towards completion"})
    data = fields.Dict(keys=fields.String(), metadata={
        "description": "Settings of a plugin's kind, validated by its schema"})
    position = fields.Integer(validate=validate.Range(min=0), metadata={
        "description": "0-based within the module; at most the number of its lessons"})


class LessonPatchSchema(LessonWriteSchema):
    """A change to a lesson (``If-Match`` required). ``module_id`` moves it to another module
    of the same course (at ``position``, else at the end); ``position`` alone moves it within
    its module."""

    module_id = fields.String(validate=validate.Length(1, 32))

    def __init__(self, **kwargs: object) -> None:
        super().__init__(partial=True, **kwargs)  # type: ignore[arg-type]


class LessonOrderSchema(Schema):
    lesson_ids = fields.List(_id, required=True,
                             validate=validate.Length(max=MAX_LESSONS_PER_MODULE),
                             metadata={"description": "Every lesson of the module, once, "
                                       "in the new order"})


# --- the outline ------------------------------------------------------------------------------

class OutlineLessonSchema(Schema):
    id = fields.String(dump_only=True)
    title = fields.String(dump_only=True)
    kind = fields.String(dump_only=True)
    position = fields.Integer(dump_only=True)
    duration_seconds = fields.Integer(dump_only=True, allow_none=True)
    is_preview = fields.Boolean(dump_only=True)
    is_required = fields.Boolean(dump_only=True)


class OutlineModuleSchema(Schema):
    id = fields.String(dump_only=True)
    title = fields.String(dump_only=True)
    summary = fields.String(dump_only=True)
    position = fields.Integer(dump_only=True)
    duration_seconds = fields.Integer(dump_only=True, metadata={
        "description": "Sum of its lessons' durations"})
    lessons = fields.List(fields.Nested(OutlineLessonSchema), dump_only=True)


class OutlineSchema(Schema):
    course_id = fields.String(dump_only=True)
    structure_version = fields.Integer(dump_only=True)
    structure_etag = fields.String(dump_only=True, metadata={
        "description": "Send in If-Match to re-order modules or lessons"})
    lesson_count = fields.Integer(dump_only=True)
    duration_seconds = fields.Integer(dump_only=True)
    modules = fields.List(fields.Nested(OutlineModuleSchema), dump_only=True)


class LessonFileSchema(Schema):
    url = fields.String(dump_only=True, metadata={"description": "Short-lived download URL"})
    expires_in = fields.Integer(dump_only=True, metadata={"description": "Seconds"})
    filename = fields.String(dump_only=True)
    content_type = fields.String(dump_only=True)
    size = fields.Integer(dump_only=True)


class ModuleOrderOutSchema(Schema):
    module_ids = fields.List(fields.String(), dump_only=True)


class LessonOrderOutSchema(Schema):
    lesson_ids = fields.List(fields.String(), dump_only=True)
