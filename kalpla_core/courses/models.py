from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from kalpla_core.db import Base, TimestampMixin, UTCDateTime, new_id

COURSE_STATUSES = ("draft", "published", "archived")
LEVELS = ("beginner", "intermediate", "advanced", "all")
CORE_LESSON_KINDS = ("text", "video", "file")


class Course(TimestampMixin, Base):
    __tablename__ = "courses"
    __table_args__ = (
        UniqueConstraint("institution_id", "slug"),
        CheckConstraint("status IN ('draft', 'published', 'archived')", name="status"),
        CheckConstraint("capacity IS NULL OR capacity >= 0", name="capacity"),
        # Catalog orderings, each ending in the id so keyset pagination is exact.
        Index("ix_courses_catalog_newest", "status", "published_at", "id"),
        Index("ix_courses_catalog_title", "status", "title", "id"),
        Index("ix_courses_catalog_popularity", "status", "enrollment_count", "id"),
        Index("ix_courses_institution_status", "institution_id", "status", "published_at", "id"),
        # Each catalog filter on a column of courses, with each ordering (revision c0005):
        # a filtered page reads its rows in order from one index, whatever the catalog size.
        Index("ix_courses_institution_title", "institution_id", "status", "title", "id"),
        Index("ix_courses_institution_popularity", "institution_id", "status",
              "enrollment_count", "id"),
        Index("ix_courses_language_newest", "language", "status", "published_at", "id"),
        Index("ix_courses_language_title", "language", "status", "title", "id"),
        Index("ix_courses_language_popularity", "language", "status", "enrollment_count", "id"),
        Index("ix_courses_level_newest", "level", "status", "published_at", "id"),
        Index("ix_courses_level_title", "level", "status", "title", "id"),
        Index("ix_courses_level_popularity", "level", "status", "enrollment_count", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(String(500), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(16), default="en")
    level: Mapped[str] = mapped_column(String(16), default="all")
    cover_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL", use_alter=True))
    capacity: Mapped[int | None] = mapped_column(Integer)
    enrollment_opens_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    enrollment_closes_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    access_days: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Active enrollments, kept by the enrollment service; the catalog's popularity order.
    enrollment_count: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped when the lesson set changes, so progress can be recomputed deterministically.
    structure_version: Mapped[int] = mapped_column(Integer, default=1)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class CatalogSortKeys:
    """Copies of the course's catalog sort keys on a table of related rows (tags, instructors,
    search words), kept by ``courses.catalog.sync_sort_keys``: with an index (value, status,
    sort key, course_id) per ordering, a page filtered on that table reads its rows in order,
    whatever the size of the catalog (revision c0007)."""

    status: Mapped[str] = mapped_column(String(16))
    # The "newest" order: the publication time of a published course, else its creation.
    newest_at: Mapped[datetime] = mapped_column(UTCDateTime())
    title: Mapped[str] = mapped_column(String(200))
    enrollment_count: Mapped[int] = mapped_column(Integer)


def _sort_indexes(table: str, column: str, **kw: Any) -> tuple[Index, ...]:
    return tuple(Index(f"ix_{table}_{name}", column, "status", key, "course_id", **kw)
                 for name, key in (("newest", "newest_at"), ("title", "title"),
                                   ("popularity", "enrollment_count")))


class CourseTag(CatalogSortKeys, Base):
    __tablename__ = "course_tags"
    __table_args__ = _sort_indexes("course_tags", "tag")

    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"),
                                           primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True)


class CourseInstructor(CatalogSortKeys, Base):
    __tablename__ = "course_instructors"
    __table_args__ = _sort_indexes("course_instructors", "user_id")

    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"),
                                           primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)


class CoursePrerequisite(Base):
    __tablename__ = "course_prerequisites"

    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"),
                                           primary_key=True)
    required_course_id: Mapped[str] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True, index=True)


class Module(TimestampMixin, Base):
    __tablename__ = "course_modules"
    __table_args__ = (Index("ix_course_modules_course_position", "course_id", "position"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(String(500), default="")
    position: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class Lesson(TimestampMixin, Base):
    __tablename__ = "lessons"
    __table_args__ = (
        Index("ix_lessons_module_position", "module_id", "position"),
        Index("ix_lessons_course", "course_id"),
        Index("ix_lessons_file", "file_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    module_id: Mapped[str] = mapped_column(ForeignKey("course_modules.id", ondelete="CASCADE"))
    # Denormalised from the module: access checks and progress read lessons by course.
    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text, default="")
    video_url: Mapped[str | None] = mapped_column(String(2000))
    file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    is_preview: Mapped[bool] = mapped_column(Boolean, default=False)
    is_required: Mapped[bool] = mapped_column(Boolean, default=True)
    # Settings of a plugin-contributed kind, validated by that kind's schema.
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class CourseSearchTerm(CatalogSortKeys, Base):
    """One word of a course's title or summary, folded (see ``courses.catalog.search_terms``):
    the catalog's free-text search matches query words as prefixes of these, through an index,
    so its cost follows the size of a page rather than the size of the catalog."""

    __tablename__ = "course_search_terms"
    # text_pattern_ops lets PostgreSQL answer ``term LIKE 'abc%'`` from the indexes whatever
    # the database collation; SQLite compares bytes and uses them for a range.
    __table_args__ = _sort_indexes("course_search_terms", "term",
                                   postgresql_ops={"term": "text_pattern_ops"})

    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"),
                                           primary_key=True)
    term: Mapped[str] = mapped_column(String(64), primary_key=True)
