"""Streaming: live classes on Amazon IVS or on a self-hosted media server (MediaMTX).

A lesson of kind ``live`` (scheduled ``starts_at``/``ends_at`` in its data) gets a live
session. Its instructors get an ingest endpoint and a stream key, enrolled students a playback
URL with a short-lived token bound to them; the provider's events move the session live and
ended, and attendance completes the lesson in the students' progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marshmallow import Schema
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kalpla_core.hookspecs import (
    LessonChanged,
    LessonKind,
    Permission,
    PluginEnablementChanged,
    PluginMeta,
    Provider,
    hookimpl,
)

KALPLA_PLUGIN = PluginMeta(
    name="streaming",
    version="0.1.0",
    core_requires=">=0.1,<0.2",
    label="Live classes",
    description="Live classes on Amazon IVS or a self-hosted media server (MediaMTX), with "
                "signed playback and attendance.",
)


@hookimpl
def kalpla_models() -> list[type[Any]]:
    from kalpla_streaming.models import (
        Attendance,
        Channel,
        LiveSession,
        PlaybackKeyPair,
        ProcessedEvent,
    )

    return [LiveSession, Channel, PlaybackKeyPair, Attendance, ProcessedEvent]


@hookimpl
def kalpla_migrations() -> Path:
    return Path(__file__).parent / "migrations" / "versions"


@hookimpl
def kalpla_permissions() -> list[Permission]:
    return [
        Permission("streaming.broadcast", "Broadcast the live sessions of courses one "
                   "instructs", ("mentor", "admin")),
        Permission("streaming.manage", "Broadcast, stop and see the attendance of every "
                   "live session of the institution", ("admin",)),
    ]


@hookimpl
def kalpla_providers() -> list[Provider]:
    from kalpla_streaming.providers import PORT
    from kalpla_streaming.providers.ivs import IVSProvider
    from kalpla_streaming.providers.rtmp import RTMPProvider
    from kalpla_streaming.providers.storage import IVSRecordingStorage, RTMPRecordingStorage
    from kalpla_streaming.recordings import IVS_STORAGE, RTMP_STORAGE

    return [
        Provider(PORT, "rtmp", lambda app: RTMPProvider(),
                 "Self-hosted media server (MediaMTX) authenticating through Kalpla"),
        Provider(PORT, "ivs", IVSProvider.for_app, "Amazon Interactive Video Service"),
        # Recordings are files of their lessons, held where the video service wrote them.
        Provider("storage", IVS_STORAGE, IVSRecordingStorage,
                 "Amazon IVS recordings (HLS in S3), served through signed playlists"),
        Provider("storage", RTMP_STORAGE, RTMPRecordingStorage,
                 "MediaMTX recordings, served by its playback server with signed links"),
    ]


@hookimpl
def kalpla_jobs() -> dict[str, Any]:
    from kalpla_streaming.revocation import JOBS

    return dict(JOBS)


@hookimpl
def kalpla_settings_schema() -> type[Schema]:
    from kalpla_streaming.settings import StreamingSettings

    return StreamingSettings


@hookimpl
def kalpla_lesson_kinds() -> list[LessonKind]:
    from kalpla_streaming.settings import LiveLessonData

    return [LessonKind("live", "Live class", LiveLessonData,
                       "A class streamed live at a scheduled time; completed by attending.")]


@hookimpl
def kalpla_blueprints() -> list[Any]:
    from kalpla_streaming.routes import blp

    return [blp]


@hookimpl
def kalpla_cli_commands() -> list[Any]:
    from kalpla_streaming.cli import streaming

    return [streaming]


@hookimpl
def kalpla_startup(app: Any) -> None:
    from kalpla_streaming.settings import DeploymentConfig

    kalpla = app.extensions["kalpla"]
    app.extensions["kalpla_streaming"] = DeploymentConfig.load(
        kalpla.settings.extra.get("streaming"))


@hookimpl
def kalpla_lesson_changed(event: LessonChanged) -> None:
    """Keep the live session of a ``live`` lesson in step with it."""
    if event.change == "deleted" or event.institution_id is None:
        return
    from kalpla_core.toolkit import kalpla, plugin_settings
    from kalpla_streaming.service import sync_lesson

    with kalpla().db.session() as session:
        settings = plugin_settings("streaming", event.institution_id, session=session)
        if settings is not None:
            sync_lesson(session, event.lesson_id, settings)


@hookimpl
def kalpla_plugin_enablement_changed(event: PluginEnablementChanged) -> None:
    """Enabled for an institution: give its existing live lessons their sessions."""
    if event.plugin != "streaming" or not event.enabled or event.institution_id is None:
        return
    from kalpla_core.toolkit import kalpla
    from kalpla_streaming.service import live_lessons, sync_lesson

    with kalpla().db.session() as session:
        for lesson_id in live_lessons(session, event.institution_id):
            sync_lesson(session, lesson_id, dict(event.settings))


@hookimpl
def kalpla_user_export(session: Session, user_id: str) -> dict[str, Any]:
    from kalpla_streaming.models import Attendance

    rows = session.scalars(select(Attendance).where(Attendance.user_id == user_id)
                           .order_by(Attendance.first_joined_at))
    return {"attendance": [{
        "session_id": r.session_id, "joins": r.joins,
        "first_joined_at": r.first_joined_at.isoformat(),
        "last_seen_at": r.last_seen_at.isoformat() if r.last_seen_at else None,
        "live_seconds": r.live_seconds, "recording_seconds": r.recording_seconds,
        "completed_at": r.completed_at.isoformat() if r.completed_at else None,
    } for r in rows]}


@hookimpl
def kalpla_user_erase(session: Session, user_id: str) -> None:
    from kalpla_streaming.models import Attendance

    session.execute(delete(Attendance).where(Attendance.user_id == user_id))
