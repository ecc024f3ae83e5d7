"""Live sessions: kept in step with their lessons, who may do what, broadcasting, playback and
status changes from providers' events. No Flask here.

Status: ``scheduled`` → ``live`` → ``ended``, or ``cancelled`` (its lesson stopped being of
kind ``live``). Ended and cancelled are final. Provider events may come late, twice or out of
order: each is applied once (by its id), and what it sets only moves one way — the earliest
start and the earliest end win — so the outcome does not depend on the order of arrival.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kalpla_core.toolkit import (
    SEATED,
    APIError,
    Course,
    CourseInstructor,
    Enrollment,
    Lesson,
    User,
    can_read_lesson,
    file_download_url,
    has_seat,
    plugin_settings,
    serialise_writes,
)
from kalpla_streaming import attendance, channels, recordings, revocation
from kalpla_streaming.keys import STREAM_KEY_PURPOSE, unseal
from kalpla_streaming.models import OPEN_STATUSES, Channel, LiveSession, ProcessedEvent
from kalpla_streaming.providers import Playback, ProviderContext, StreamingProvider
from kalpla_streaming.providers.rtmp import publish_url

log = logging.getLogger("kalpla_streaming")

PLUGIN = "streaming"
KIND = "live"
BROADCAST = "streaming.broadcast"
MANAGE = "streaming.manage"


def _parse(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


# --- keeping sessions in step with lessons ----------------------------------------------------

def sync_lesson(session: Session, lesson_id: str, settings: dict[str, Any]) -> LiveSession | None:
    """Create or update the session of a ``live`` lesson; cancel it if the lesson changed
    to another kind. A deleted lesson takes its session with it (foreign key cascade)."""
    lesson = session.get(Lesson, lesson_id)
    live = session.scalar(select(LiveSession).where(LiveSession.lesson_id == lesson_id))
    if lesson is None:
        return None
    if lesson.kind != KIND:
        if live is not None and live.status in OPEN_STATUSES:
            live.status = "cancelled"
        return live
    starts, ends = _parse(lesson.data["starts_at"]), _parse(lesson.data["ends_at"])
    if live is None:
        course = session.get(Course, lesson.course_id)
        assert course is not None
        live = LiveSession(institution_id=course.institution_id, course_id=course.id,
                           lesson_id=lesson.id, provider=settings["provider"], status="scheduled")
        session.add(live)
    live.title = lesson.title
    if live.status == "cancelled" and live.started_at is None:
        live.status = "scheduled"  # live again before it ever went on air
    if live.status == "scheduled":
        live.scheduled_start, live.scheduled_end = starts, ends
    session.flush()
    return live


def live_lessons(session: Session, institution_id: str) -> list[str]:
    """The ids of the institution's lessons of kind ``live``."""
    return list(session.scalars(select(Lesson.id).join(Course, Course.id == Lesson.course_id)
                                .where(Course.institution_id == institution_id,
                                       Lesson.kind == KIND)))


# --- who may do what --------------------------------------------------------------------------

def get_session(session: Session, session_id: str, institution_id: str) -> LiveSession:
    """The session of the request's institution, else 404 (other institutions' stay unknown)."""
    live = session.get(LiveSession, session_id)
    if live is None or live.institution_id != institution_id:
        raise APIError(404, f"There is no live session {session_id!r}.", "not-found")
    return live


def is_staff(session: Session, kalpla: Any, user: User | None, live: LiveSession) -> bool:
    """Admins (``streaming.manage``) and the course's instructors holding
    ``streaming.broadcast``."""
    if user is None or not user.is_active:
        return False
    if kalpla.has_permission(session, user, MANAGE, live.institution_id):
        return True
    if not kalpla.has_permission(session, user, BROADCAST, live.institution_id):
        return False
    course = session.get(Course, live.course_id)
    return (course is not None and course.created_by == user.id) or session.get(
        CourseInstructor, (live.course_id, user.id)) is not None


def require_staff(session: Session, kalpla: Any, user: User, live: LiveSession) -> None:
    if not is_staff(session, kalpla, user, live):
        raise APIError(403, "Only the session's instructors and admins may do this.",
                       "forbidden")


def require_viewer(session: Session, kalpla: Any, user: User | None, live: LiveSession) -> None:
    """Active enrollments, course staff and admins watch; the rest are refused."""
    lesson = session.get(Lesson, live.lesson_id)
    assert lesson is not None
    decision = can_read_lesson(session, kalpla, user, lesson)
    if decision.outcome != "allow":
        raise APIError(403, decision.reason or "You may not watch this session.",
                       decision.code or "forbidden", plugin=decision.plugin or None)


def may_see(session: Session, kalpla: Any, user: User, live: LiveSession) -> bool:
    """Whether the session's details are shown to the user: staff and seated students."""
    return is_staff(session, kalpla, user, live) or has_seat(session, user.id, live.course_id)


def upcoming_query(user: User, institution_id: str, now: datetime) -> Any:
    """Open sessions not yet over in the courses the user holds a seat in or instructs."""
    seated = exists().where(Enrollment.course_id == LiveSession.course_id,
                            Enrollment.user_id == user.id, Enrollment.status.in_(SEATED),
                            or_(Enrollment.expires_at.is_(None), Enrollment.expires_at > now))
    teaches = exists().where(CourseInstructor.course_id == LiveSession.course_id,
                             CourseInstructor.user_id == user.id)
    return select(LiveSession).where(
        LiveSession.institution_id == institution_id,
        LiveSession.status.in_(OPEN_STATUSES),
        or_(LiveSession.status == "live", LiveSession.scheduled_end > now),
        or_(seated, teaches))


# --- broadcasting -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Ingest:
    ingest_endpoint: str
    stream_key: str
    publish_url: str | None


def _open(live: LiveSession) -> None:
    if live.status not in OPEN_STATUSES:
        raise APIError(409, f"The session is {live.status}; it cannot be broadcast.",
                       "session-closed")


def _ingest(ctx: ProviderContext, live: LiveSession, channel: LiveSession | Channel) -> Ingest:
    assert channel.ingest_endpoint is not None and channel.stream_key_encrypted is not None
    key = unseal(ctx.secret_key, STREAM_KEY_PURPOSE, channel.stream_key_encrypted)
    url = publish_url(channel.ingest_endpoint, key) if live.provider == "rtmp" else None
    return Ingest(channel.ingest_endpoint, key, url)


def _channel(ctx: ProviderContext, kalpla: Any, provider: StreamingProvider,
             live: LiveSession) -> LiveSession | Channel:
    """Where the session broadcasts, made on first use: its own channel, or — with
    ``channel_scope`` "course", for a session without a channel of its own — its course's,
    which the session claims (409 while another session of the course is live on it). The
    viewers of a session it takes the channel from are revoked, unless that one ended (they
    were revoked then)."""
    own = live.channel_id is None and (live.ingest_endpoint is not None
                                       or not channels.course_scope(ctx.settings))
    if own:
        provider.open_channel(ctx, live)
        return live
    channel = channels.course_channel(ctx.session, live)
    provider.open_channel(ctx, channel)
    previous = channels.claim(ctx.session, live, channel, ctx.now)
    if previous is not None and previous.status != "ended":
        revocation.queue(ctx.session, kalpla, previous, channel)
    return channel


def broadcast(ctx: ProviderContext, kalpla: Any, provider: StreamingProvider,
              live: LiveSession) -> Ingest:
    """The ingest endpoint and stream key, the channel made on first use. The session row is
    locked first, so two first broadcasts at once make one channel, not two."""
    live = lock(ctx.session, live.id)
    _open(live)
    channel = _channel(ctx, kalpla, provider, live)
    ctx.session.flush()
    return _ingest(ctx, live, channel)


def rotate_key(ctx: ProviderContext, kalpla: Any, provider: StreamingProvider,
               live: LiveSession) -> Ingest:
    live = lock(ctx.session, live.id)
    _open(live)
    channel = _channel(ctx, kalpla, provider, live)
    provider.rotate_key(ctx, channel)
    ctx.session.flush()
    return _ingest(ctx, live, channel)


def stop(ctx: ProviderContext, kalpla: Any, provider: StreamingProvider,
         live: LiveSession) -> LiveSession:
    """End the session now (the provider stops the stream, if the session is the one on its
    channel); stopping again changes nothing."""
    live = lock(ctx.session, live.id)
    if live.status == "cancelled":
        raise APIError(409, "The session was cancelled.", "session-closed")
    if live.status == "ended":
        return live
    if live.ingest_endpoint is not None and channels.holds(ctx.session, live):
        provider.stop(ctx, channels.target(ctx.session, live))
    apply_state(ctx.session, kalpla, live, "ended", ctx.now)
    return live


def playback(ctx: ProviderContext, provider: StreamingProvider, live: LiveSession,
             viewer: User) -> Playback:
    """A playback URL and token bound to the viewer — once the session has ended, a link to
    its recording; recorded as a join."""
    if live.status == "cancelled":
        raise APIError(409, "The session was cancelled.", "session-closed")
    if live.status == "ended":
        result = _recording(ctx, live)
    elif live.ingest_endpoint is None:
        raise APIError(409, "The session has not been set up for broadcasting yet.",
                       "not-broadcasting")
    elif not channels.holds(ctx.session, live):
        raise APIError(409, "Another session of this course is on the course's channel; "
                       "this one is not on air yet.", "not-on-air")
    else:
        result = provider.playback(ctx, live, channels.target(ctx.session, live), viewer.id)
    attendance.join(ctx.session, live, viewer.id, ctx.now)
    return result


def _recording(ctx: ProviderContext, live: LiveSession) -> Playback:
    """The ended session's recording: a link to its file (a resource of the lesson)."""
    if live.recording_file_id is None:
        raise APIError(409, "The session has ended and its recording is not available (yet).",
                       "recording-not-ready")
    url, seconds = file_download_url(ctx.session, live.recording_file_id)
    return Playback(url, None, ctx.now + timedelta(seconds=seconds), live.recording_file_id)


# --- status changes ---------------------------------------------------------------------------

def apply_state(session: Session, kalpla: Any, live: LiveSession, state: str,
                at: datetime) -> bool:
    """Apply a start (``live``) or end (``ended``) that happened at ``at``; True if anything
    changed. The earliest start and the earliest end count; a cancelled session stays so."""
    if live.status == "cancelled":
        return False
    changed = ended_now = False
    if state == "live":
        if live.started_at is None or at < live.started_at:
            live.started_at, changed = at, True
        if live.status == "scheduled":
            live.status, changed = "live", True
    elif state == "ended":
        if live.ended_at is None or at < live.ended_at:
            live.ended_at, changed = at, True
        if live.status != "ended":
            live.status, changed, ended_now = "ended", True, True
    else:
        raise ValueError(f"unknown state {state!r}")
    if changed:
        session.flush()
        if live.status == "ended":
            if live.provider == "rtmp":
                _record_rtmp(session, live)
            attendance.complete_all(session, kalpla, live)
    if ended_now:
        _revoke_on_end(session, kalpla, live)
    return changed


def _revoke_on_end(session: Session, kalpla: Any, live: LiveSession) -> None:
    """A session ending on its course's channel: its viewers' tokens would play the next
    session on it. Revoked here if it still holds the channel, else the claim that took the
    channel from it revoked them."""
    if live.provider != "ivs" or live.channel_id is None or not channels.holds(session, live):
        return
    channel = session.get(Channel, live.channel_id)
    if channel is not None:
        revocation.queue(session, kalpla, live, channel)


def _record_rtmp(session: Session, live: LiveSession) -> None:
    """An ended self-hosted session's recording becomes a resource of its lesson (once both
    its start and end are known, whichever event came last)."""
    settings = plugin_settings(PLUGIN, live.institution_id, session=session)
    path = channels.target(session, live).rtmp_path
    if settings is not None and path is not None:
        recordings.add_rtmp(session, live, path, settings)


def first_time(session: Session, source: str, event_id: str, kind: str, occurred_at: datetime,
               live: LiveSession | None) -> bool:
    """Record a provider event; False when it was processed before (a repeat)."""
    seen = session.scalar(select(ProcessedEvent.id).where(
        ProcessedEvent.source == source, ProcessedEvent.event_id == event_id))
    if seen is not None:
        return False
    try:
        with session.begin_nested():
            session.add(ProcessedEvent(source=source, event_id=event_id, kind=kind,
                                       occurred_at=occurred_at,
                                       session_id=live.id if live else None))
    except IntegrityError:  # the same event, processed concurrently
        return False
    return True


def lock(session: Session, live_id: str) -> LiveSession:
    """The session row, fresh and locked for the rest of the transaction (``SELECT … FOR
    UPDATE``; on SQLite, the database write lock)."""
    serialise_writes(session)
    found = session.scalar(select(LiveSession).where(LiveSession.id == live_id)
                           .with_for_update().execution_options(populate_existing=True))
    assert found is not None
    return found


def by_channel(session: Session, channel_arn: str, at: datetime,
               stream_ids: tuple[str, ...] = ()) -> LiveSession | None:
    """The session an IVS event of ``channel_arn`` at ``at`` is about: the channel's own
    session, or on a course's channel the session whose stream it carries, else the one
    holding the channel then."""
    live = session.scalar(select(LiveSession).where(LiveSession.channel_arn == channel_arn))
    if live is not None:
        return live
    channel = session.scalar(select(Channel).where(Channel.channel_arn == channel_arn))
    if channel is None:
        return None
    if stream_ids:
        found = session.scalar(select(LiveSession).where(
            LiveSession.channel_id == channel.id, LiveSession.stream_id.in_(stream_ids))
            .limit(1))
        if found is not None:
            return found
    return channels.session_at(session, channel, at)


def by_recording(session: Session, file_id: str) -> LiveSession | None:
    """The session whose recording is the file ``file_id``."""
    return session.scalar(select(LiveSession).where(LiveSession.recording_file_id == file_id))


def recording_served(session: Session, kalpla: Any, file_id: str | None) -> bool:
    """Whether a recording file's links may be served: the file is a session's recording,
    and the session's institution still has the plugin enabled."""
    live = by_recording(session, file_id) if file_id is not None else None
    return live is not None and PLUGIN in kalpla.enabled_plugins(session, live.institution_id)


def by_path(session: Session, path: str, at: datetime) -> LiveSession | None:
    """The session on a media server path at ``at``: the path's own session, or the one
    holding the course's path then."""
    live = session.scalar(select(LiveSession).where(LiveSession.rtmp_path == path))
    if live is not None:
        return live
    channel = session.scalar(select(Channel).where(Channel.rtmp_path == path))
    return channels.session_at(session, channel, at) if channel is not None else None
