"""Settings: per institution (the plugin's settings schema), per deployment (secrets of the
provider callbacks) and the data of a ``live`` lesson."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

DEFAULT_SNS_CERT_URL = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
# arn:<partition>:sns:<region>:<account>:<topic>; the account is the one its events' channels
# must be of.
SNS_TOPIC_ARN = r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}$"
# Keys and columns are built from the media server's URLs: a recording's key
# (<rtmp_recording_url>/get?path=…&start=…, about 110 characters more) must fit a file's
# storage_key (500), a playback URL (<rtmp_playback_url>/<path>/index.m3u8) its column.
MAX_URL = 300


def _url(schemes: tuple[str, ...], **kwargs: Any) -> fields.String:
    """A media server URL: the scheme's, no query or fragment (Kalpla appends its own)."""
    pattern = rf"^(?:{'|'.join(schemes)})://[^\s?#]+$"
    return fields.String(validate=[validate.Length(max=MAX_URL),
                                   validate.URL(schemes=set(schemes), require_tld=False),
                                   validate.Regexp(pattern)], **kwargs)


class StreamingSettings(Schema):
    """What an institution chooses when it enables the plugin."""

    provider = fields.String(load_default="rtmp", validate=validate.OneOf(("rtmp", "ivs")))
    channel_scope = fields.String(
        load_default="session", validate=validate.OneOf(("session", "course")),
        metadata={"description": "session: a channel (rtmp: path and key) per live session; "
                  "course: one per course, shared by its sessions, one of them live at a "
                  "time (for sessions set up from now on)"})
    attendance_percent = fields.Integer(load_default=60, validate=validate.Range(1, 100),
                                        metadata={"description": "Share of the live time a "
                                                  "student must watch to complete the lesson"})
    playback_token_ttl = fields.Integer(load_default=300, validate=validate.Range(30, 86400))
    # rtmp: where the media server (MediaMTX) takes streams and serves them (HLS).
    rtmp_ingest_url = _url(("rtmp", "rtmps"), load_default="rtmp://localhost:1935")
    rtmp_playback_url = _url(("http", "https"), load_default="http://localhost:8888")
    rtmp_recording_url = _url(("http", "https"), load_default="http://localhost:9996",
                              metadata={"description": "MediaMTX's playback server "
                                        "(recordings)"})
    rtmp_record = fields.Boolean(load_default=True, metadata={
        "description": "MediaMTX records the live paths (record: yes): an ended session's "
                       "recording becomes a resource of its lesson"})
    rtmp_api_url = _url(("http", "https"), load_default=None, allow_none=True,
                        metadata={"description": "MediaMTX's control API: when set, "
                                  "stopping a session disconnects its publisher"})
    # ivs
    ivs_channel_type = fields.String(
        load_default="STANDARD",
        validate=validate.OneOf(("BASIC", "STANDARD", "ADVANCED_SD", "ADVANCED_HD")))
    ivs_allowed_origin = fields.String(load_default="*", validate=validate.Length(1, 200))
    ivs_recording_bucket = fields.String(
        load_default=None, allow_none=True,
        validate=validate.Regexp(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                                 error="Not an S3 bucket name."))


class LiveLessonData(Schema):
    """The ``data`` of a lesson of kind ``live``: when it is scheduled."""

    starts_at = fields.AwareDateTime(required=True, default_timezone=None)
    ends_at = fields.AwareDateTime(required=True, default_timezone=None)

    @validates_schema
    def _window(self, data: dict[str, Any], **_: Any) -> None:
        if data["ends_at"] <= data["starts_at"]:
            raise ValidationError("Must be after starts_at.", "ends_at")


@dataclass(frozen=True)
class DeploymentConfig:
    """Secrets and limits of the callbacks providers make; from ``KALPLA_STREAMING_*``
    variables, or a ``streaming`` mapping in ``create_app``'s config (tests, embedding).

    ``hook_secret`` authenticates the media server's publish/unpublish notifications,
    ``eventbridge_secret`` the EventBridge API destination's header; SNS messages are taken
    only from the topics in ``sns_topic_arns`` (none when unset: anyone can subscribe the
    webhook to a topic of their own) with a ``SigningCertURL`` matching
    ``sns_cert_url_pattern``."""

    hook_secret: str | None = None
    eventbridge_secret: str | None = None
    sns_cert_url_pattern: str = DEFAULT_SNS_CERT_URL
    sns_topic_arns: tuple[str, ...] = ()
    # Tries of an IVS call in all (botocore's standard retries, the only ones).
    aws_attempts: int = 3

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> DeploymentConfig:
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for name in ("hook_secret", "eventbridge_secret", "sns_cert_url_pattern",
                     "sns_topic_arns", "aws_attempts"):
            value = env.get(f"KALPLA_STREAMING_{name.upper()}")
            if value:
                raw[name] = value
        raw.update(overrides or {})
        if isinstance(raw.get("sns_topic_arns"), str):
            raw["sns_topic_arns"] = tuple(a.strip() for a in raw["sns_topic_arns"].split(",")
                                          if a.strip())
        config = cls(**{**raw, "aws_attempts": int(raw.get("aws_attempts", 3)),
                        "sns_topic_arns": tuple(raw.get("sns_topic_arns", ()))})
        try:
            re.compile(config.sns_cert_url_pattern)
        except re.error as exc:
            raise ValueError(f"KALPLA_STREAMING_SNS_CERT_URL_PATTERN is not a valid regular "
                             f"expression: {exc}") from None
        wrong = [t for t in config.sns_topic_arns if not re.match(SNS_TOPIC_ARN, t)]
        if wrong:
            raise ValueError(f"KALPLA_STREAMING_SNS_TOPIC_ARNS holds what is not an SNS topic's "
                             f"ARN: {', '.join(wrong)}")
        if config.aws_attempts < 1:
            raise ValueError("KALPLA_STREAMING_AWS_ATTEMPTS must be at least 1")
        return config
