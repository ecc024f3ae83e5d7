"""Amazon IVS events from EventBridge, whichever way they arrive (SNS, API destination).
No Flask here.

- ``IVS Stream State Change`` with ``detail.event_name`` ``Stream Start`` moves the channel's
  session live, ``Stream End`` ends it (at the event's ``time``);
- ``IVS Recording State Change`` with ``detail.recording_status`` ``Recording End`` records
  where the recording is (``s3://<bucket>/<prefix>``) and makes it a resource of the lesson
  (:mod:`kalpla_streaming.recordings`).

On a course's channel, an event goes to the session whose stream it carries (the stream id
seen at its start), else to the session holding the channel when it happened. Each event is
applied once, by its EventBridge ``id``; the session's rules (earliest start and end win) make
late and reordered events harmless. Events of unknown channels, and of sessions whose
institution disabled the plugin, are acknowledged and ignored.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from kalpla_core.toolkit import plugin_settings
from kalpla_streaming import recordings, service

log = logging.getLogger("kalpla_streaming")

STREAM_STATE = "IVS Stream State Change"
RECORDING_STATE = "IVS Recording State Change"
STATES = {"Stream Start": "live", "Stream End": "ended"}


class EventError(ValueError):
    """The body is not an IVS event."""


class ForeignAccount(EventError):
    """The event names a channel of another AWS account than the one it came through."""


def account_of(arn: str) -> str | None:
    """The account id of an ARN (``arn:aws:<service>:<region>:<account>:…``)."""
    parts = arn.split(":", 5)
    return parts[4] if len(parts) == 6 and parts[0] == "arn" and parts[4] else None


def _time(value: Any) -> datetime:
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise EventError(f"bad time {value!r}") from None
    if at.tzinfo is None:
        raise EventError("the time has no zone")
    return at


def handle(session: Session, kalpla: Any, event: Any, account: str | None = None) -> str:
    """Apply one event: ``applied``, ``unchanged``, ``repeat`` or ``ignored``. With
    ``account`` (the SNS topic's), :class:`ForeignAccount` unless every channel the event
    names is of that account."""
    if not isinstance(event, dict) or event.get("source") != "aws.ivs":
        raise EventError("not an aws.ivs event")
    kind, event_id = event.get("detail-type"), event.get("id")
    detail = event.get("detail")
    if not isinstance(event_id, str) or not event_id or not isinstance(detail, dict):
        raise EventError("the event has no id or detail")
    at = _time(event.get("time"))
    if kind not in (STREAM_STATE, RECORDING_STATE):
        return "ignored"
    channels = [r for r in event.get("resources") or [] if isinstance(r, str)
                and ":channel/" in r]
    if account is not None and any(account_of(arn) != account for arn in channels):
        raise ForeignAccount(f"channel {channels[0]!r} is not of account {account!r}")
    streams = _stream_ids(detail)
    live = service.by_channel(session, channels[0], at, streams) if channels else None
    if live is None or service.PLUGIN not in kalpla.enabled_plugins(session,
                                                                     live.institution_id):
        return "ignored"
    live = service.lock(session, live.id)
    if not service.first_time(session, "ivs", event_id, str(kind), at, live):
        return "repeat"
    if kind == STREAM_STATE:
        state = STATES.get(str(detail.get("event_name")))
        if state is None:
            return "unchanged"
        if state == "live" and live.stream_id is None and streams:
            live.stream_id = streams[0]
        return "applied" if service.apply_state(session, kalpla, live, state, at) else "unchanged"
    if detail.get("recording_status") == "Recording End" and live.recording_file_id is None:
        bucket, prefix = detail.get("recording_s3_bucket_name"), detail.get(
            "recording_s3_key_prefix")
        settings = plugin_settings(service.PLUGIN, live.institution_id, session=session) or {}
        buckets = recordings.ivs_buckets(session, live.institution_id,
                                         settings.get("ivs_recording_bucket"))
        location = recordings.ivs_location(bucket, prefix, channels[0], buckets)
        if location is None:
            log.warning("recording of session %s at s3://%r/%r ignored: not where the "
                        "institution's recordings of %s are", live.id, bucket, prefix,
                        channels[0])
            return "ignored"
        live.recording_location = live.recording_location or location.key
        recordings.add_ivs(session, kalpla, live, location)
        session.flush()
        return "applied"
    return "unchanged"


def _stream_ids(detail: dict[str, Any]) -> tuple[str, ...]:
    """The streams an event is about: its ``stream_id``, and a recording's streams."""
    ids = [detail.get("stream_id"), *(detail.get("recording_session_stream_ids") or [])]
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, str) and i))
