"""Tables of the streaming plugin: live sessions, the channels courses share, playback key
pairs, attendance and the provider events already processed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from kalpla_core.toolkit import Base, TimestampMixin, UTCDateTime, new_id, utcnow

STATUSES = ("scheduled", "live", "ended", "cancelled")
OPEN_STATUSES = ("scheduled", "live")
PROVIDERS = ("rtmp", "ivs")


class LiveSession(TimestampMixin, Base):
    """One live class: the streaming side of a lesson of kind ``live``."""

    __tablename__ = "streaming_sessions"
    __table_args__ = (
        CheckConstraint("status IN ('scheduled', 'live', 'ended', 'cancelled')", name="status"),
        CheckConstraint("provider IN ('rtmp', 'ivs')", name="provider"),
        # "Upcoming sessions of my courses": by course, in start order, keyset by id.
        Index("ix_streaming_sessions_course_start", "course_id", "scheduled_start", "id"),
        Index("ix_streaming_sessions_channel_arn", "channel_arn"),
        # Who holds a course channel (latest claim) and who held it at a given time.
        Index("ix_streaming_sessions_channel_claim", "channel_id", "claimed_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    lesson_id: Mapped[str] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"),
                                           unique=True)
    title: Mapped[str] = mapped_column(String(200))
    scheduled_start: Mapped[datetime] = mapped_column(UTCDateTime())
    scheduled_end: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    provider: Mapped[str] = mapped_column(String(16))
    # The course's channel (``channel_scope`` "course"), when the session broadcasts on it;
    # its ingest endpoint and playback URL are copied here, its keys stay on the channel.
    channel_id: Mapped[str | None] = mapped_column(
        ForeignKey("streaming_channels.id", ondelete="SET NULL"))
    # When the session took its course's channel: events are the session's from then on.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # ivs: the stream seen starting, so later events of that stream find this session.
    stream_id: Mapped[str | None] = mapped_column(String(64))
    # ivs: the channel; rtmp: the media server path (``live/<id>``).
    channel_arn: Mapped[str | None] = mapped_column(String(200))
    stream_key_arn: Mapped[str | None] = mapped_column(String(200))
    rtmp_path: Mapped[str | None] = mapped_column(String(100), unique=True)
    ingest_endpoint: Mapped[str | None] = mapped_column(String(500))
    playback_url: Mapped[str | None] = mapped_column(String(1000))
    # The stream key, encrypted with SecretBox (purpose "kalpla_streaming.stream_key").
    stream_key_encrypted: Mapped[str | None] = mapped_column(Text)
    recording_location: Mapped[str | None] = mapped_column(String(1000))
    # The recording, a resource of the lesson once the stream ended (see recordings.py).
    recording_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class Channel(TimestampMixin, Base):
    """A course's one channel (ivs) or path and key (rtmp), shared by its live sessions when
    the institution's ``channel_scope`` is ``course``. The session holding it is the one that
    claimed it last; only one session of the course is live on it at a time."""

    __tablename__ = "streaming_channels"
    __table_args__ = (
        CheckConstraint("provider IN ('rtmp', 'ivs')", name="provider"),
        UniqueConstraint("course_id", "provider"),
        Index("ix_streaming_channels_channel_arn", "channel_arn"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True)
    course_id: Mapped[str] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(16))
    channel_arn: Mapped[str | None] = mapped_column(String(200))
    stream_key_arn: Mapped[str | None] = mapped_column(String(200))
    rtmp_path: Mapped[str | None] = mapped_column(String(100), unique=True)
    ingest_endpoint: Mapped[str | None] = mapped_column(String(500))
    playback_url: Mapped[str | None] = mapped_column(String(1000))
    stream_key_encrypted: Mapped[str | None] = mapped_column(Text)


class PlaybackKeyPair(Base):
    """An institution's P-384 key pair signing IVS playback tokens; the public half is
    imported into IVS, the private half is kept encrypted."""

    __tablename__ = "streaming_playback_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    institution_id: Mapped[str] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), unique=True)
    arn: Mapped[str] = mapped_column(String(200))
    public_key_pem: Mapped[str] = mapped_column(Text)
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    recording_configuration_arn: Mapped[str | None] = mapped_column(String(200))
    # The bucket that configuration writes to: "Recording End" events naming another
    # bucket are not believed.
    recording_bucket: Mapped[str | None] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Attendance(Base):
    """A viewer of a session: joins and heartbeats, seconds watched live and of the recording."""

    __tablename__ = "streaming_attendance"
    __table_args__ = (UniqueConstraint("session_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("streaming_sessions.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    joins: Mapped[int] = mapped_column(Integer, default=0)
    first_joined_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    live_seconds: Mapped[int] = mapped_column(Integer, default=0)
    recording_seconds: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ProcessedEvent(Base):
    """A provider event already applied (by its provider's id), so a repeat changes nothing."""

    __tablename__ = "streaming_events"
    __table_args__ = (UniqueConstraint("source", "event_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(200))
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("streaming_sessions.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
