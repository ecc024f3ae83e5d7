from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kalpla_core.db import Base, TimestampMixin, UTCDateTime, new_id, utcnow

DEFAULT_INSTITUTION_SLUG = "default"


class Institution(TimestampMixin, Base):
    __tablename__ = "institutions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class InstitutionPlugin(Base):
    """A plugin enabled for an institution, with its validated settings."""

    __tablename__ = "institution_plugins"
    __table_args__ = (UniqueConstraint("institution_id", "plugin"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    plugin: Mapped[str] = mapped_column(String(64), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
