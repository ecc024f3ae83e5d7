"""Attendance: joins and heartbeats, and the completion they earn. No Flask here.

A viewer's player sends a heartbeat every ``HEARTBEAT_SECONDS`` or so. The time since the
previous heartbeat counts as watched when it is at most ``MAX_GAP_SECONDS`` (a longer gap is
a new start, not time watched), towards the live time while the session is scheduled or live,
towards the recording once it has ended. Counted time is real elapsed time, so frequent
heartbeats earn nothing extra.

Once the session has ended, a viewer who watched at least ``attendance_percent`` (a plugin
setting, 60 by default) of its live time — live, from the recording, or both — has completed
the lesson: it is reported to the core's progress service (for enrolled students; staff
attend without a progress to complete).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError, report_lesson_completed
from kalpla_streaming.models import Attendance, LiveSession

log = logging.getLogger("kalpla_streaming")

PLUGIN = "streaming"
HEARTBEAT_SECONDS = 30
MAX_GAP_SECONDS = 90
DEFAULT_PERCENT = 60


def _row(session: Session, live: LiveSession, user_id: str, now: datetime) -> Attendance:
    row = session.scalar(select(Attendance).where(Attendance.session_id == live.id,
                                                  Attendance.user_id == user_id)
                         .with_for_update())
    if row is None:
        row = Attendance(session_id=live.id, user_id=user_id, joins=0, first_joined_at=now,
                         live_seconds=0, recording_seconds=0)
        session.add(row)
    return row


def join(session: Session, live: LiveSession, user_id: str, now: datetime) -> Attendance:
    """A viewer opened the stream (a playback token was issued)."""
    row = _row(session, live, user_id, now)
    row.joins += 1
    row.last_seen_at = now
    session.flush()
    return row


def heartbeat(session: Session, kalpla: Any, live: LiveSession, user_id: str, now: datetime,
              percent: int = DEFAULT_PERCENT) -> Attendance:
    """The viewer is still watching: count the time since the last heartbeat."""
    row = _row(session, live, user_id, now)
    if row.last_seen_at is None:
        row.joins += 1
    else:
        gap = (now - row.last_seen_at).total_seconds()
        if 0 < gap <= MAX_GAP_SECONDS:
            if live.status == "ended":
                row.recording_seconds += int(gap)
            else:
                row.live_seconds += int(gap)
    if row.last_seen_at is None or now > row.last_seen_at:
        row.last_seen_at = now
    session.flush()
    complete(session, kalpla, live, row, percent, now)
    return row


def live_seconds(live: LiveSession) -> int | None:
    """How long the session was live, once it has ended (None before, or if never started)."""
    if live.status != "ended" or live.started_at is None or live.ended_at is None:
        return None
    return max(int((live.ended_at - live.started_at).total_seconds()), 0)


def attended_enough(live: LiveSession, row: Attendance, percent: int) -> bool:
    total = live_seconds(live)
    if not total:
        return False
    return (row.live_seconds + row.recording_seconds) * 100 >= total * percent


def complete(session: Session, kalpla: Any, live: LiveSession, row: Attendance, percent: int,
             now: datetime) -> bool:
    """Mark the attendance complete and report the lesson completed, once."""
    if row.completed_at is not None or not attended_enough(live, row, percent):
        return False
    # A live watcher completed when the session ended; a recording watcher now.
    when = live.ended_at if row.recording_seconds == 0 and live.ended_at else now
    row.completed_at = when
    try:
        with session.begin_nested():
            report_lesson_completed(session, kalpla, lesson_id=live.lesson_id, plugin=PLUGIN,
                                    user_id=row.user_id, occurred_at=when)
    except APIError as exc:
        # Staff and former students attend without an active enrollment to complete.
        log.info("attendance of %s in session %s not reported: %s", row.user_id, live.id,
                 exc.detail)
    session.flush()
    return True


def percent_for(kalpla: Any, session: Session, institution_id: str) -> int:
    from kalpla_core.toolkit import plugin_settings

    settings = plugin_settings(PLUGIN, institution_id, session=session) or {}
    return int(settings.get("attendance_percent", DEFAULT_PERCENT))


def complete_all(session: Session, kalpla: Any, live: LiveSession) -> int:
    """After the session ended: complete every attendee who watched enough."""
    percent = percent_for(kalpla, session, live.institution_id)
    rows = session.scalars(select(Attendance).where(Attendance.session_id == live.id,
                                                    Attendance.completed_at.is_(None)))
    assert live.ended_at is not None
    return sum(complete(session, kalpla, live, row, percent, live.ended_at) for row in rows)


def attendance_query(live: LiveSession) -> Any:
    return select(Attendance).where(Attendance.session_id == live.id)
