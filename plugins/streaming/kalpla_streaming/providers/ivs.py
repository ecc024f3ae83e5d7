"""Amazon IVS: a private (authorized), low-latency channel per session (or per course, with
``channel_scope`` "course").

Per institution, once: a P-384 key pair generated here, its public half imported into IVS
(``ImportPlaybackKeyPair``) and its private half kept encrypted; with ``ivs_recording_bucket``
set, a recording configuration writing to that S3 bucket. Per session, on its first
broadcast: ``CreateChannel`` (which also makes the stream key). Viewers get the channel's
playback URL with a token signed ES384 by the institution's key, carrying the claims IVS
checks (``aws:channel-arn``, ``aws:access-control-allow-origin``, ``aws:viewer-id``, ``exp``).

Calls go through the app's IVS client (``toolkit.aws_client("ivs", config=…)``), whose
botocore retries (standard mode: throttling, 5xx and connection errors, with jittered
exponential back-off) are the only retries: ``KALPLA_STREAMING_AWS_ATTEMPTS`` attempts in
all, first included. A call that still fails is answered 503 (throttled, unreachable) or 502
(IVS failed or refused). When a call fails half-way through setting a session up, what this
call created on AWS is deleted again and nothing is kept locally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select

from kalpla_core.toolkit import APIError, Course
from kalpla_streaming import channels
from kalpla_streaming.keys import (
    PLAYBACK_KEY_PURPOSE,
    STREAM_KEY_PURPOSE,
    ivs_token,
    new_p384_key_pair,
    seal,
    unseal,
)
from kalpla_streaming.models import Channel, LiveSession, PlaybackKeyPair
from kalpla_streaming.providers import ChannelRow, Playback, ProviderContext

log = logging.getLogger("kalpla_streaming.ivs")

THROTTLING = frozenset({"ThrottlingException", "TooManyRequestsException", "Throttling",
                        "RequestLimitExceeded"})
# IVS refuses tokens carrying aws:viewer-id (ours all do) whose exp is more than ten minutes
# ahead. A course's channel carries each of its sessions in turn and a token is bound to the
# channel, not the session: its tokens last three minutes, so one given for a class cannot
# start the next class's stream on the same channel much later.
MAX_TOKEN_TTL = 600
COURSE_TOKEN_TTL = 180
CHANNEL_FIELDS = ("channel_arn", "stream_key_arn", "ingest_endpoint", "playback_url",
                  "stream_key_encrypted")


class HideStreamKeys(logging.Filter):
    """botocore logs every response body at DEBUG; drop those carrying IVS stream keys
    (CreateChannel, CreateStreamKey, GetStreamKey), whatever the deployment's log level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot be formatted is not ours to judge
            return True
        return "streamKey" not in text


HIDE_STREAM_KEYS = HideStreamKeys()
# Loggers that write response bodies (a filter acts only on records made by its own logger).
BODY_LOGGERS = ("botocore.parsers", "botocore.endpoint")


def client_options(attempts: int) -> dict[str, Any]:
    """botocore options of the IVS client: its standard-mode retries are the only ones, so
    ``attempts`` is the total number of tries of a call (the first included)."""
    return {"retries": {"mode": "standard", "total_max_attempts": attempts}}


class IVSProvider:
    name = "ivs"

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        return self._client()

    @classmethod
    def for_app(cls, app: Any) -> IVSProvider:
        from kalpla_core.toolkit import aws_client

        kalpla = app.extensions["kalpla"]
        options = client_options(app.extensions["kalpla_streaming"].aws_attempts)
        for name in BODY_LOGGERS:
            logging.getLogger(name).addFilter(HIDE_STREAM_KEYS)  # added once per process
        return cls(lambda: aws_client("ivs", kalpla, options))

    # --- calls ----------------------------------------------------------------------------

    def _call(self, ctx: ProviderContext, operation: str, *, ignore: frozenset[str] = frozenset(),
              **params: Any) -> dict[str, Any]:
        """One IVS call (botocore retried it as configured); a problem when it failed for
        good. Error codes in ``ignore`` answer an empty result."""
        try:
            return getattr(self._client(), operation)(**params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            meta = exc.response.get("ResponseMetadata", {})
            status = meta.get("HTTPStatusCode", 0)
            if code in ignore:
                return {}
            log.warning("IVS %s failed after %d attempt(s): %s (HTTP %s)", operation,
                        meta.get("RetryAttempts", 0) + 1, code, status)
            if code in THROTTLING or status == 429:
                raise APIError(503, "The video service is busy; try again shortly.",
                               "streaming-provider-busy",
                               headers={"Retry-After": "5"}) from None
            raise APIError(502, f"The video service could not {_verb(operation)}.",
                           "streaming-provider-error") from None
        except BotoCoreError as exc:  # unreachable, timed out (after botocore's retries)
            log.warning("IVS %s failed: %s", operation, type(exc).__name__)
            raise APIError(503, "The video service cannot be reached; try again shortly.",
                           "streaming-provider-unavailable",
                           headers={"Retry-After": "5"}) from None

    def _undo(self, ctx: ProviderContext, undo: list[tuple[str, dict[str, Any]]]) -> None:
        """Delete, newest first, what a failed set-up created on AWS (best effort: each
        failure is logged and the rest still run)."""
        for operation, params in reversed(undo):
            try:
                self._call(ctx, operation, ignore=frozenset({"ResourceNotFoundException"}),
                           **params)
            except APIError:
                log.error("IVS clean-up %s of %s failed; delete it by hand", operation,
                          params.get("arn"))

    # --- the institution's key pair and recording configuration ---------------------------

    def _keys(self, ctx: ProviderContext, institution_id: str,
              undo: list[tuple[str, dict[str, Any]]]) -> PlaybackKeyPair:
        row = ctx.session.scalar(select(PlaybackKeyPair).where(
            PlaybackKeyPair.institution_id == institution_id))
        if row is None:
            pair = new_p384_key_pair()
            out = self._call(ctx, "import_playback_key_pair", publicKeyMaterial=pair.public_pem,
                             name=f"kalpla-{institution_id}",
                             tags={"kalpla:institution": institution_id})
            arn = out["keyPair"]["arn"]
            undo.append(("delete_playback_key_pair", {"arn": arn}))
            row = PlaybackKeyPair(institution_id=institution_id, arn=arn,
                                  public_key_pem=pair.public_pem,
                                  private_key_encrypted=seal(ctx.secret_key,
                                                             PLAYBACK_KEY_PURPOSE,
                                                             pair.private_pem))
            ctx.session.add(row)
        bucket = ctx.settings.get("ivs_recording_bucket")
        if bucket and row.recording_configuration_arn is None:
            out = self._call(ctx, "create_recording_configuration",
                             name=f"kalpla-{institution_id}",
                             destinationConfiguration={"s3": {"bucketName": bucket}},
                             tags={"kalpla:institution": institution_id})
            arn = out["recordingConfiguration"]["arn"]
            undo.append(("delete_recording_configuration", {"arn": arn}))
            row.recording_configuration_arn, row.recording_bucket = arn, bucket
        return row

    # --- the port -------------------------------------------------------------------------

    def open_channel(self, ctx: ProviderContext, live: ChannelRow) -> None:
        if live.channel_arn is not None and live.stream_key_encrypted is not None:
            return
        before = {name: getattr(live, name) for name in CHANNEL_FIELDS}
        undo: list[tuple[str, dict[str, Any]]] = []
        try:
            keys = self._keys(ctx, live.institution_id, undo)
            params: dict[str, Any] = {
                "latencyMode": "LOW", "authorized": True,
                "type": ctx.settings.get("ivs_channel_type", "STANDARD"), **_naming(live)}
            if keys.recording_configuration_arn:
                params["recordingConfigurationArn"] = keys.recording_configuration_arn
            out = self._call(ctx, "create_channel", **params)
            channel, key = out["channel"], out["streamKey"]
            undo.append(("delete_channel", {"arn": channel["arn"]}))
            live.channel_arn = channel["arn"]
            live.ingest_endpoint = f"rtmps://{channel['ingestEndpoint']}:443/app/"
            live.playback_url = channel["playbackUrl"]
            live.stream_key_arn = key["arn"]
            live.stream_key_encrypted = seal(ctx.secret_key, STREAM_KEY_PURPOSE, key["value"])
            ctx.session.flush()
        except BaseException:
            for name, value in before.items():
                setattr(live, name, value)
            for obj in list(ctx.session.new):
                if isinstance(obj, PlaybackKeyPair):
                    ctx.session.expunge(obj)
            self._undo(ctx, undo)
            raise

    def rotate_key(self, ctx: ProviderContext, live: ChannelRow) -> None:
        """IVS keeps one stream key per channel: delete the old, create a new one."""
        listed = self._call(ctx, "list_stream_keys", channelArn=live.channel_arn)
        for old in listed.get("streamKeys", []):
            self._call(ctx, "delete_stream_key", arn=old["arn"],
                       ignore=frozenset({"ResourceNotFoundException"}))
        key = self._call(ctx, "create_stream_key", channelArn=live.channel_arn)["streamKey"]
        live.stream_key_arn = key["arn"]
        live.stream_key_encrypted = seal(ctx.secret_key, STREAM_KEY_PURPOSE, key["value"])

    def stop(self, ctx: ProviderContext, live: ChannelRow) -> None:
        self._call(ctx, "stop_stream", channelArn=live.channel_arn,
                   ignore=frozenset({"ChannelNotBroadcasting"}))

    def playback(self, ctx: ProviderContext, live: LiveSession, channel: ChannelRow,
                 viewer_id: str) -> Playback:
        """The live stream only: an ended session's recording is a file of its lesson. The
        token lasts ``playback_token_ttl``, at most ten minutes (three on a course's
        channel); players ask the playback route again for a fresh one."""
        assert channel.channel_arn is not None and channel.playback_url is not None
        keys = ctx.session.scalar(select(PlaybackKeyPair).where(
            PlaybackKeyPair.institution_id == live.institution_id))
        assert keys is not None  # made with the channel
        private = unseal(ctx.secret_key, PLAYBACK_KEY_PURPOSE, keys.private_key_encrypted)
        shared = isinstance(channel, Channel)
        ttl = min(int(ctx.settings["playback_token_ttl"]),
                  COURSE_TOKEN_TTL if shared else MAX_TOKEN_TTL)
        token = ivs_token(private, channel_arn=channel.channel_arn, viewer_id=viewer_id,
                          allowed_origin=ctx.settings.get("ivs_allowed_origin", "*"),
                          now=ctx.now, ttl=ttl,
                          session_version=channels.viewer_version(live) if shared else None)
        return Playback(f"{channel.playback_url}?token={quote(token.token)}", token)

    def revoke_viewer(self, channel_arn: str, viewer_id: str, version: int) -> bool:
        """Stop the viewer's playback sessions on the channel whose token carries a
        viewer-session version up to ``version``, and refuse those tokens from now on
        (``StartViewerSessionRevocation``). False when the channel is gone (nothing to
        revoke); botocore's errors once its retries are spent."""
        try:
            self._client().start_viewer_session_revocation(
                channelArn=channel_arn, viewerId=viewer_id,
                viewerSessionVersionsLessThanOrEqualTo=version)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return False
            raise
        return True

    def prune_channels(self, ctx: ProviderContext, *, dry_run: bool = False) -> list[str]:
        """Delete the channels Kalpla made whose session is gone (its lesson or course was
        deleted) or cancelled (tagged ``kalpla:session``), or whose course is gone (tagged
        ``kalpla:channel``); returns their ARNs. Channels of sessions and courses that still
        exist are kept, even before their creation was committed."""
        pruned: list[str] = []
        token: str | None = None
        while True:
            page = self._call(ctx, "list_channels", **({"nextToken": token} if token else {}))
            for channel in page.get("channels", []):
                tags = channel.get("tags") or {}
                session_id, channel_id = tags.get("kalpla:session"), tags.get("kalpla:channel")
                live = ctx.session.get(LiveSession, session_id) if session_id else None
                if session_id is None and channel_id is None:
                    continue  # not ours
                if session_id is not None and live is not None and live.status != "cancelled":
                    continue
                if channel_id is not None and _course_channel_kept(ctx, channel_id, tags):
                    continue
                pruned.append(channel["arn"])
                if dry_run:
                    continue
                self._call(ctx, "delete_channel", arn=channel["arn"],
                           ignore=frozenset({"ResourceNotFoundException"}))
                if live is not None and live.channel_arn == channel["arn"]:
                    for name in CHANNEL_FIELDS:
                        setattr(live, name, None)
            token = page.get("nextToken")
            if not token:
                return pruned


def _course_channel_kept(ctx: ProviderContext, channel_id: str, tags: dict[str, Any]) -> bool:
    """A course's channel is kept while its row exists, or else while its course does: a
    first broadcast makes the IVS channel before its row is committed, so no row may only
    mean one not yet to be seen (the row goes with the course)."""
    if ctx.session.get(Channel, channel_id) is not None:
        return True
    course_id = tags.get("kalpla:course")
    return course_id is not None and ctx.session.get(Course, course_id) is not None


def _naming(channel: ChannelRow) -> dict[str, Any]:
    """The IVS channel's name and tags: a session's own, or its course's."""
    if isinstance(channel, Channel):
        return {"name": f"kalpla-course-{channel.course_id}",
                "tags": {"kalpla:channel": channel.id, "kalpla:course": channel.course_id,
                         "kalpla:institution": channel.institution_id}}
    return {"name": f"kalpla-{channel.id}",
            "tags": {"kalpla:session": channel.id, "kalpla:institution": channel.institution_id}}


def _verb(operation: str) -> str:
    return operation.replace("_", " ")
