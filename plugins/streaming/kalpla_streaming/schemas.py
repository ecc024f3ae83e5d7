"""Request and response schemas of the streaming routes."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate

from kalpla_core.toolkit import PageArgs


class LiveSessionSchema(Schema):
    """A live session as students and staff see it: no stream key, no provider references."""

    id = fields.String(dump_only=True)
    lesson_id = fields.String(dump_only=True)
    course_id = fields.String(dump_only=True)
    title = fields.String(dump_only=True)
    status = fields.String(dump_only=True, metadata={
        "description": "scheduled, live, ended or cancelled"})
    provider = fields.String(dump_only=True)
    scheduled_start = fields.DateTime(dump_only=True)
    scheduled_end = fields.DateTime(dump_only=True)
    started_at = fields.DateTime(dump_only=True, allow_none=True)
    ended_at = fields.DateTime(dump_only=True, allow_none=True)
    recording_file_id = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "The recording, a file of the lesson (GET /files/{id}/download), "
                       "once the stream has ended and the recording is written"})
    has_recording = fields.Method("_has_recording", dump_only=True)

    def _has_recording(self, obj: object) -> bool:
        if isinstance(obj, dict):
            return bool(obj.get("has_recording"))
        return getattr(obj, "recording_file_id", None) is not None


PUBLIC_FIELDS = ("id", "lesson_id", "course_id", "title", "status", "provider",
                 "scheduled_start", "scheduled_end", "started_at", "ended_at",
                 "recording_file_id")


def public_view(live: object) -> dict[str, object]:
    """The session's fields everyone who may see it sees (the staff schema omits the rest)."""
    return {**{name: getattr(live, name) for name in PUBLIC_FIELDS},
            "has_recording": getattr(live, "recording_file_id", None) is not None}


class StaffLiveSessionSchema(LiveSessionSchema):
    """What the session's staff see besides: where it is broadcast and recorded."""

    ingest_endpoint = fields.String(dump_only=True, allow_none=True)
    playback_url = fields.String(dump_only=True, allow_none=True)
    recording_location = fields.String(dump_only=True, allow_none=True)


class UpcomingArgs(PageArgs):
    course_id = fields.String(validate=validate.Length(1, 32))


class IngestGrantSchema(Schema):
    ingest_endpoint = fields.String(dump_only=True, metadata={
        "description": "Where the encoder sends the stream (RTMP/RTMPS)"})
    stream_key = fields.String(dump_only=True, metadata={
        "description": "Secret: shown to the session's instructors and admins only"})
    publish_url = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "rtmp: the full publish URL, credentials included"})


class PlaybackGrantSchema(Schema):
    url = fields.String(dump_only=True, metadata={"description": "Playback URL, token included"})
    token = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "The live stream's token bound to the viewer (null for a recording)"})
    expires_at = fields.DateTime(dump_only=True)
    recording_file_id = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "Set once the session has ended: the URL is its recording's"})


class RecordingArgs(Schema):
    token = fields.String(required=True, validate=validate.Length(1, 2000))


class AttendeeSchema(Schema):
    user_id = fields.String(dump_only=True)
    joins = fields.Integer(dump_only=True)
    first_joined_at = fields.DateTime(dump_only=True)
    last_seen_at = fields.DateTime(dump_only=True, allow_none=True)
    live_seconds = fields.Integer(dump_only=True)
    recording_seconds = fields.Integer(dump_only=True)
    completed_at = fields.DateTime(dump_only=True, allow_none=True)


class MediaMTXAuthSchema(Schema):
    """MediaMTX's ``authHTTPAddress`` request body."""

    class Meta:
        unknown = INCLUDE

    user = fields.String(load_default="")
    password = fields.String(load_default="")
    token = fields.String(load_default="")
    ip = fields.String(load_default="")
    action = fields.String(required=True)
    path = fields.String(load_default="")
    protocol = fields.String(load_default="")
    id = fields.String(load_default=None, allow_none=True)
    query = fields.String(load_default="")


class MediaMTXEventSchema(Schema):
    """A ``runOnReady``/``runOnNotReady`` notification."""

    event = fields.String(required=True, validate=validate.OneOf(("ready", "not_ready")))
    path = fields.String(required=True, validate=validate.Length(1, 200))
    id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    occurred_at = fields.AwareDateTime(load_default=None, allow_none=True)


class StreamingHookResultSchema(Schema):
    applied = fields.Boolean(dump_only=True)
