from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kalpla_core.db import Base, TimestampMixin, UTCDateTime, new_id

ENROLLMENT_STATUSES = ("pending", "active", "completed", "dropped", "expired", "waitlisted")
# Statuses that hold a seat (count against capacity).
SEATED = ("active", "completed")


class Enrollment(TimestampMixin, Base):
    """One user's enrollment in one course. A dropped or expired enrollment is kept (history);
    re-enrolling reuses the row, so a user has at most one enrollment per course."""

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("course_id", "user_id"),
        CheckConstraint("status IN ('pending', 'active', 'completed', 'dropped', 'expired', "
                        "'waitlisted')", name="status"),
        Index("ix_enrollments_course_status", "course_id", "status", "id"),
        Index("ix_enrollments_waitlist", "course_id", "status", "waitlisted_at", "id"),
        Index("ix_enrollments_user_status", "user_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="self")
    enrolled_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Why a pending enrollment waits and what the client should do (from the gate's Decision).
    pending_plugin: Mapped[str | None] = mapped_column(String(64))
    pending_reason: Mapped[str | None] = mapped_column(String(500))
    pending_action: Mapped[dict[str, Any] | None] = mapped_column()
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    dropped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    waitlisted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A seat offered to a waitlisted student, held until this moment.
    offer_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # Progress summary, recomputed by the progress engine.
    lessons_completed: Mapped[int] = mapped_column(Integer, default=0)
    lessons_required: Mapped[int] = mapped_column(Integer, default=0)
    progress_percent: Mapped[int] = mapped_column(Integer, default=0)
    structure_version: Mapped[int] = mapped_column(Integer, default=0)
    last_lesson_id: Mapped[str | None] = mapped_column(
        ForeignKey("lessons.id", ondelete="SET NULL"))
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class LessonProgress(Base):
    """What one enrollment did with one lesson. Every field only ever grows (max, earliest
    completion), so late, repeated or reordered events never lower progress."""

    __tablename__ = "lesson_progress"
    __table_args__ = (UniqueConstraint("enrollment_id", "lesson_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[str] = mapped_column(
        ForeignKey("enrollments.id", ondelete="CASCADE"), index=True)
    lesson_id: Mapped[str] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"),
                                           index=True)
    first_viewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    position_seconds: Mapped[int] = mapped_column(Integer, default=0)
    max_percent: Mapped[int] = mapped_column(Integer, default=0)
    # Watched seconds as a merged set of intervals would be more exact; max percent is what
    # the completion rule needs and is order-independent.
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_by: Mapped[str | None] = mapped_column(String(64))

