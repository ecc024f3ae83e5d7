"""Per-course channels (``channel_scope: course``). No Flask here.

With the institution's ``channel_scope`` set to ``course``, a session without a channel of
its own broadcasts on its course's one channel (ivs) or path and stream key (rtmp), made on
the first broadcast of any of its sessions and reused by all of them. A session *claims* the
channel by asking for the stream key (broadcast, rotate-key); the holder is the session that
claimed it last, and only one session of a course is live at a time: claiming while another
session is live on it is refused (409) until that one ends or is stopped.

Provider events name the channel, not the session: they go to the session whose stream they
carry (ivs stream id), else to the session that held the channel when they happened, so a
late event of the previous class does not touch the next one.

An IVS playback token is bound to the channel, not the session: tokens on a course's channel
carry the claim's *viewer-session version* (:func:`viewer_version`, growing with every claim),
so revoking the viewers of one claim (:mod:`kalpla_streaming.revocation`) leaves the tokens
of the next claim alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError, serialise_writes
from kalpla_streaming.models import Channel, LiveSession

SCOPES = ("session", "course")
# Viewer-session versions count seconds from here: they stay within IVS's 32-bit integers
# until 2092, where epoch seconds would overflow in 2038.
VERSION_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def course_scope(settings: dict[str, Any]) -> bool:
    return settings.get("channel_scope", "session") == "course"


def target(session: Session, live: LiveSession) -> LiveSession | Channel:
    """Where the session broadcasts: its course's channel, or its own."""
    if live.channel_id is not None:
        channel = session.get(Channel, live.channel_id)
        if channel is not None:
            return channel
    return live


def holder(session: Session, channel_id: str) -> LiveSession | None:
    """The session that claimed the channel last."""
    return session.scalar(select(LiveSession).where(LiveSession.channel_id == channel_id)
                          .order_by(LiveSession.claimed_at.desc(), LiveSession.id.desc())
                          .limit(1))


def holds(session: Session, live: LiveSession) -> bool:
    """Whether the session is the one on its channel (always, for a channel of its own)."""
    if live.channel_id is None:
        return True
    current = holder(session, live.channel_id)
    return current is not None and current.id == live.id


def session_at(session: Session, channel: Channel, when: datetime) -> LiveSession | None:
    """The session that held the channel at ``when`` (the last claim not after it)."""
    return session.scalar(select(LiveSession).where(
        LiveSession.channel_id == channel.id, LiveSession.claimed_at <= when)
        .order_by(LiveSession.claimed_at.desc(), LiveSession.id.desc()).limit(1))


def course_channel(session: Session, live: LiveSession) -> Channel:
    """The course's channel for the session's provider, locked; made (empty) the first
    time. Two first broadcasts at once make one row: the second waits for the first."""
    serialise_writes(session)
    stmt = (select(Channel).where(Channel.course_id == live.course_id,
                                  Channel.provider == live.provider)
            .with_for_update().execution_options(populate_existing=True))
    channel = session.scalar(stmt)
    if channel is None:
        channel = Channel(institution_id=live.institution_id, course_id=live.course_id,
                          provider=live.provider)
        try:
            with session.begin_nested():
                session.add(channel)
        except IntegrityError:  # made by a concurrent broadcast, committed meanwhile
            channel = session.scalar(stmt)
            assert channel is not None
    return channel


def viewer_version(live: LiveSession) -> int:
    """The viewer-session version of the session's tokens on its course's channel: whole
    seconds from ``VERSION_EPOCH`` to its claim. Claims are at least a second apart, so each
    claim's version is above every earlier one's."""
    assert live.claimed_at is not None
    return max(int((live.claimed_at - VERSION_EPOCH).total_seconds()), 0)


def claim(session: Session, live: LiveSession, channel: Channel,
          now: datetime) -> LiveSession | None:
    """Put the session on its course's channel; 409 while another session of the course is
    live on it. Returns the session it took the channel from, if another held it."""
    current = holder(session, channel.id)
    if current is not None and current.id != live.id:
        if current.status == "live":
            raise APIError(409, "Another live session of this course is on air on the "
                           "course's channel; it must end (or be stopped) first.",
                           "channel-busy", session_id=current.id)
        # The latest claim holds the channel, even if this server's clock lags another's; a
        # second after the previous one, so its viewer-session version is a higher one.
        earliest = current.claimed_at + timedelta(seconds=1) if current.claimed_at \
            else now
        live.claimed_at = max(now, earliest)
    elif current is None:
        live.claimed_at = now
    live.channel_id = channel.id
    live.ingest_endpoint, live.playback_url = channel.ingest_endpoint, channel.playback_url
    session.flush()
    return current if current is not None and current.id != live.id else None
