"""Schemas of courses and of the catalog's query."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from kalpla_core.courses.catalog import SORTS
from kalpla_core.courses.models import COURSE_STATUSES, LEVELS
from kalpla_core.courses.service import MAX_INSTRUCTORS, MAX_PREREQUISITES, MAX_TAGS
from kalpla_core.http.pagination import PageArgs

SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# BCP 47 language tags as courses use them: language, optional script, region, variants.
LANGUAGE_RE = re.compile(
    r"^(?P<lang>[a-z]{2,3})(?:-(?P<script>[a-z]{4}))?(?:-(?P<region>[a-z]{2}|\d{3}))?"
    r"(?P<variants>(?:-(?:[a-z\d]{5,8}|\d[a-z\d]{3}))*)$", re.IGNORECASE)


def normalise_language(value: str) -> str:
    """``PT-br`` → ``pt-BR``, ``zh-hant-tw`` → ``zh-Hant-TW`` (the case BCP 47 recommends),
    so that one language is stored and filtered one way."""
    match = LANGUAGE_RE.match(value)
    if match is None or len(value) > 16:
        raise ValidationError("Give a BCP 47 language tag such as en, hi or pt-BR.")
    parts = [match["lang"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    if match["variants"]:
        parts.append(match["variants"][1:].lower())
    return "-".join(parts)


class LanguageTag(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return normalise_language(super()._deserialize(value, attr, data, **kwargs))


class UTCDateTimeField(fields.AwareDateTime):
    """A moment with an offset (UTC when none is given), answered in UTC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        return super()._deserialize(value, attr, data, **kwargs).astimezone(UTC)


_id = fields.String(validate=validate.Length(1, 32))


class InstructorSchema(Schema):
    id = fields.String(dump_only=True)
    name = fields.String(dump_only=True)


class CourseCardSchema(Schema):
    """A course as the catalog lists it."""

    id = fields.String(dump_only=True)
    institution_id = fields.String(dump_only=True)
    institution = fields.String(dump_only=True, metadata={"description": "Institution slug"})
    slug = fields.String(dump_only=True)
    title = fields.String(dump_only=True)
    summary = fields.String(dump_only=True)
    language = fields.String(dump_only=True)
    level = fields.String(dump_only=True)
    tags = fields.List(fields.String(), dump_only=True)
    instructors = fields.List(fields.Nested(InstructorSchema), dump_only=True)
    cover_file_id = fields.String(dump_only=True, allow_none=True)
    capacity = fields.Integer(dump_only=True, allow_none=True)
    enrollment_opens_at = fields.DateTime(dump_only=True, allow_none=True)
    enrollment_closes_at = fields.DateTime(dump_only=True, allow_none=True)
    access_days = fields.Integer(dump_only=True, allow_none=True)
    status = fields.String(dump_only=True)
    published_at = fields.DateTime(dump_only=True, allow_none=True)
    enrollment_count = fields.Integer(dump_only=True, metadata={
        "description": "Active enrollments; kept by the enrollment service (read-only)."})


class CourseSchema(CourseCardSchema):
    """A course in full."""

    description = fields.String(dump_only=True, metadata={"description": "Markdown, raw"})
    prerequisites = fields.List(fields.String(), dump_only=True,
                                metadata={"description": "Ids of required courses"})
    archived_at = fields.DateTime(dump_only=True, allow_none=True)
    created_by = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class CourseWriteSchema(Schema):
    """A new course (a draft). The creator becomes one of its instructors."""

    slug = fields.String(required=True, validate=[validate.Length(1, 100),
                                                  validate.Regexp(SLUG_RE)],
                         metadata={"description": "Unique in the institution: a-z, 0-9, -"})
    title = fields.String(load_default="", validate=validate.Length(max=200),
                          metadata={"description": "Required to publish"})
    summary = fields.String(load_default="", validate=validate.Length(max=500))
    description = fields.String(load_default="", validate=validate.Length(max=100_000),
                                metadata={"description": "Markdown, stored as given"})
    language = LanguageTag(load_default="en", metadata={"description": "BCP 47, e.g. pt-BR"})
    level = fields.String(load_default="all", validate=validate.OneOf(LEVELS))
    tags = fields.List(fields.String(validate=validate.Length(1, 50)), load_default=list,
                       validate=validate.Length(max=MAX_TAGS),
                       metadata={"description": "Stored lower-case, without duplicates"})
    cover_file_id = fields.String(allow_none=True, validate=validate.Length(max=32),
                                  metadata={"description": "A ready image file's id"})
    instructors = fields.List(_id, validate=validate.Length(max=MAX_INSTRUCTORS),
                              metadata={"description": "User ids of mentors or admins"})
    capacity = fields.Integer(allow_none=True, validate=validate.Range(min=0),
                              metadata={"description": "Seats; null for no limit"})
    enrollment_opens_at = UTCDateTimeField(allow_none=True)
    enrollment_closes_at = UTCDateTimeField(allow_none=True)
    prerequisites = fields.List(_id, validate=validate.Length(max=MAX_PREREQUISITES),
                                metadata={"description": "Ids of courses to complete first"})
    access_days = fields.Integer(allow_none=True, validate=validate.Range(1, 36_500),
                                 metadata={"description": "Days of access after enrolling; "
                                           "null for no limit"})

    @validates_schema
    def _window(self, data: dict[str, Any], **_kwargs: Any) -> None:
        opens, closes = data.get("enrollment_opens_at"), data.get("enrollment_closes_at")
        if opens is not None and closes is not None and opens >= closes:
            raise ValidationError("Enrollment must close after it opens.",
                                  "enrollment_closes_at")


class CoursePatchSchema(CourseWriteSchema):
    """A change to a course: only the fields given change (``If-Match`` required)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=True, **kwargs)


class CatalogArgs(PageArgs):
    institution = fields.String(load_default=None, validate=validate.Length(max=64),
                                metadata={"description": "Institution slug"})
    tag = fields.String(load_default=None, validate=validate.Length(1, 50))
    level = fields.String(load_default=None, validate=validate.OneOf(LEVELS))
    language = LanguageTag(load_default=None)
    instructor = fields.String(load_default=None, validate=validate.Length(1, 32),
                               metadata={"description": "User id of an instructor"})
    q = fields.String(load_default=None, validate=validate.Length(max=200),
                      metadata={"description": "Words to find in titles and summaries "
                                "(each as the start of a word)"})
    sort = fields.String(load_default="newest", validate=validate.OneOf(SORTS),
                         metadata={"description": "newest (by publication), title or "
                                   "popularity (enrollments)"})
    status = fields.String(load_default="published", validate=validate.OneOf(COURSE_STATUSES),
                           metadata={"description": "draft and archived: for the staff of "
                                     "the institution (institution or Kalpla-Institution)"})
