from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from kalpla_core.db import Base, UTCDateTime, new_id, utcnow


class StoredFile(Base):
    """A file in the configured storage. Created ``pending`` when an upload is asked for,
    ``ready`` once the stored object was checked (size, type, checksum) on confirm."""

    __tablename__ = "files"
    __table_args__ = (
        # A course's resource list, page by page in order.
        Index("ix_files_course_listing", "course_id", "purpose", "status", "created_at", "id"),
        # The purge of abandoned uploads: old pending files, oldest first.
        Index("ix_files_status_created", "status", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    course_id: Mapped[str | None] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), index=True)
    lesson_id: Mapped[str | None] = mapped_column(
        ForeignKey("lessons.id", ondelete="SET NULL", use_alter=True))
    purpose: Mapped[str] = mapped_column(String(32), default="resource")
    provider: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(500), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
