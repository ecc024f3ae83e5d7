"""Recordings become resources of their lesson when the stream ends. No Flask here.

- ``ivs``: the "Recording End" event names the bucket and prefix IVS wrote the HLS recording
  to (``<prefix>/media/hls/master.m3u8``, a playlist per rendition, its segments). The file's
  storage provider is ``ivs-recording``, its key ``s3://<bucket>/<prefix>``; its size is the
  recording's bytes, its type HLS.
- ``rtmp``: MediaMTX records the session's path (``record: yes``) and its playback server
  serves a time window of it as MP4. The file's provider is ``rtmp-recording``, its key the
  playback server's ``/get`` URL of the session's window, from its start to its end (so
  sessions sharing a course's path have recordings of their own); its size is unknown (0).

Each session gets its recording once: it remembers the file (``recording_file_id``), and
``toolkit.add_file`` is idempotent by key besides. The file is a ``resource`` of the lesson
(``lesson_id`` set): whoever may read the lesson reads it, through the core's file routes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError, add_file
from kalpla_streaming.models import LiveSession, PlaybackKeyPair

log = logging.getLogger("kalpla_streaming")

IVS_STORAGE = "ivs-recording"
RTMP_STORAGE = "rtmp-recording"
HLS_TYPE = "application/vnd.apple.mpegurl"
MP4_TYPE = "video/mp4"
MAX_KEY = 500  # a file's storage_key


# --- where a recording is ---------------------------------------------------------------------

@dataclass(frozen=True)
class S3Location:
    """An IVS recording: the bucket and the prefix IVS wrote it under."""

    bucket: str
    prefix: str

    @property
    def key(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def hls(self, name: str) -> str:
        """The S3 key of ``name`` in the recording's HLS folder."""
        return f"{self.prefix}/media/hls/{name}"


def parse_s3(key: str) -> S3Location | None:
    """The location of an ``ivs-recording`` key; None for any other key."""
    if not key.startswith("s3://"):
        return None
    bucket, _, prefix = key.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        return None
    return S3Location(bucket, prefix)


# Under a channel's folder IVS writes <year>/<month>/<day>/<hours>/<minutes>/<recording id>.
IVS_PREFIX_DEPTH = 6


def ivs_channel_folder(channel_arn: str) -> str | None:
    """Where IVS writes a channel's recordings in the bucket: ``ivs/v1/<account>/<channel
    id>/``; None for what is not a channel's ARN."""
    parts = channel_arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or not parts[5].startswith("channel/"):
        return None
    account, channel_id = parts[4], parts[5].removeprefix("channel/")
    if not account or not channel_id or "/" in channel_id:
        return None
    return f"ivs/v1/{account}/{channel_id}/"


def ivs_buckets(session: Session, institution_id: str, configured: str | None) -> set[str]:
    """The buckets the institution's recordings are in: the one its recording configuration
    writes to, and ``configured`` (its ``ivs_recording_bucket``; the configuration's too,
    when it was made before its bucket was kept)."""
    made = session.scalar(select(PlaybackKeyPair.recording_bucket).where(
        PlaybackKeyPair.institution_id == institution_id))
    return {b for b in (made, configured) if isinstance(b, str) and b}


def ivs_location(bucket: Any, prefix: Any, channel_arn: str,
                 buckets: set[str]) -> S3Location | None:
    """The recording a "Recording End" event of ``channel_arn`` names, if it is in one of
    ``buckets`` and in that channel's folder, laid out as IVS does; else None. A recording
    file's deletion deletes everything under its prefix, so no other place is believed."""
    folder = ivs_channel_folder(channel_arn)
    if folder is None or not isinstance(bucket, str) or bucket not in buckets \
            or not isinstance(prefix, str):
        return None
    prefix = prefix.strip("/")
    rest = prefix.removeprefix(folder).split("/")
    if not prefix.startswith(folder) or len(rest) != IVS_PREFIX_DEPTH \
            or any(part in ("", ".", "..") for part in rest):
        return None
    return parse_s3(f"s3://{bucket}/{prefix}")


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Window:
    """A self-hosted recording: a time window of a path, served by MediaMTX's playback
    server at ``base``."""

    base: str
    path: str
    start: datetime
    seconds: int

    @property
    def key(self) -> str:
        return (f"{self.base.rstrip('/')}/get?path={quote(self.path, safe='')}"
                f"&start={quote(_rfc3339(self.start), safe='')}&duration={self.seconds}"
                f"&format=mp4")

    def matches(self, start: str | None, duration: str | None) -> bool:
        """Whether a request's ``start`` and ``duration`` ask for exactly this window."""
        try:
            asked = datetime.fromisoformat((start or "").replace("Z", "+00:00"))
            return asked == self.start and float(duration or "nan") == self.seconds
        except (TypeError, ValueError):  # unparsable, or a time without its zone
            return False


def parse_rtmp(key: str) -> Window | None:
    """The window of an ``rtmp-recording`` key; None for any other key."""
    parts = urlsplit(key)
    if parts.scheme not in ("http", "https") or not parts.path.endswith("/get"):
        return None
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    try:
        start = datetime.fromisoformat(query["start"].replace("Z", "+00:00"))
        seconds = int(query["duration"])
    except (KeyError, ValueError):
        return None
    if start.tzinfo is None or not query.get("path"):
        return None
    base = f"{parts.scheme}://{parts.netloc}{parts.path.removesuffix('/get')}"
    return Window(base, query["path"], start, seconds)


# --- making the file --------------------------------------------------------------------------

def _filename(live: LiveSession, extension: str) -> str:
    return f"Recording — {live.title}.{extension}"


def add_ivs(session: Session, kalpla: Any, live: LiveSession, location: S3Location) -> str | None:
    """The session's recording file, made from what IVS wrote at ``location`` (once). None
    when there is no master playlist there; 503 while S3 cannot be read, so the event is
    delivered again."""
    if live.recording_file_id is not None:
        return live.recording_file_id
    storage = kalpla.providers.get("storage", IVS_STORAGE, kalpla.app)
    try:
        found = storage.stat(location.key)
    except (ClientError, BotoCoreError) as exc:
        log.warning("recording of session %s not readable in S3: %s", live.id,
                    type(exc).__name__)
        raise APIError(503, "The recording cannot be read yet; deliver the event again.",
                       "recording-unavailable", headers={"Retry-After": "30"}) from None
    if found is None:
        log.warning("recording of session %s has no master playlist at %s", live.id,
                    location.key)
        return None
    live.recording_file_id = add_file(
        session, institution_id=live.institution_id, course_id=live.course_id,
        lesson_id=live.lesson_id, provider=IVS_STORAGE, storage_key=location.key,
        filename=_filename(live, "m3u8"), content_type=HLS_TYPE, size=found.size)
    session.flush()
    return live.recording_file_id


def add_rtmp(session: Session, live: LiveSession, path: str,
             settings: dict[str, Any]) -> str | None:
    """The ended session's recording on the media server (once): the window from its start
    to its end. None when the institution does not record, or the session never started."""
    if live.recording_file_id is not None:
        return live.recording_file_id
    if not settings.get("rtmp_record", True) or live.started_at is None \
            or live.ended_at is None:
        return None
    seconds = max(math.ceil((live.ended_at - live.started_at).total_seconds()), 1)
    window = Window(settings.get("rtmp_recording_url", "http://localhost:9996"), path,
                    live.started_at, seconds)
    if len(window.key) > MAX_KEY:  # settings saved before their length was limited
        log.error("recording of session %s not kept: its key is longer than %d characters "
                  "(shorten rtmp_recording_url)", live.id, MAX_KEY)
        return None
    live.recording_file_id = add_file(
        session, institution_id=live.institution_id, course_id=live.course_id,
        lesson_id=live.lesson_id, provider=RTMP_STORAGE, storage_key=window.key,
        filename=_filename(live, "mp4"), content_type=MP4_TYPE, size=0)
    session.flush()
    return live.recording_file_id
