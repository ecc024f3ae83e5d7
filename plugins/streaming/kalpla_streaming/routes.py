"""Routes of the streaming plugin, under ``/api/v1/streaming/``. Thin: the services decide."""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from flask import Response, current_app, request
from flask.views import MethodView

from kalpla_core.toolkit import (
    APIError,
    Blueprint,
    PageArgs,
    any_institution,
    current_institution,
    current_user,
    db_session,
    find_file,
    kalpla,
    page_of,
    page_response,
    paginate,
    plugin_settings,
    require_enabled,
    utcnow,
)
from kalpla_streaming import attendance, hls, ivs_events, mediamtx, recordings, service, sns
from kalpla_streaming.keys import read_recording_token, same_secret
from kalpla_streaming.models import LiveSession
from kalpla_streaming.providers import PORT, ProviderContext, StreamingProvider
from kalpla_streaming.schemas import (
    AttendeeSchema,
    IngestGrantSchema,
    LiveSessionSchema,
    MediaMTXAuthSchema,
    MediaMTXEventSchema,
    PlaybackGrantSchema,
    RecordingArgs,
    StaffLiveSessionSchema,
    StreamingHookResultSchema,
    UpcomingArgs,
    public_view,
)
from kalpla_streaming.settings import DeploymentConfig

log = logging.getLogger("kalpla_streaming")

SECRET_HEADER = "X-Kalpla-Streaming-Secret"  # noqa: S105 (a header name)

blp = Blueprint("streaming", __name__, description="Live classes: broadcasting, playback, "
                "attendance, and the callbacks of the streaming providers.")


def _config() -> DeploymentConfig:
    return current_app.extensions["kalpla_streaming"]


def _ctx(live: LiveSession) -> ProviderContext:
    settings = plugin_settings(service.PLUGIN, live.institution_id) or {}
    return ProviderContext(session=db_session(), settings=settings,
                           secret_key=kalpla().settings.secret_key, config=_config(),
                           now=utcnow())


def _provider(live: LiveSession) -> StreamingProvider:
    return kalpla().providers.get(PORT, live.provider, current_app)


def _session(session_id: str) -> LiveSession:
    return service.get_session(db_session(), session_id, current_institution().id)


def _staff_session(session_id: str) -> LiveSession:
    user = current_user()
    assert user is not None
    live = _session(session_id)
    service.require_staff(db_session(), kalpla(), user, live)
    return live


# --- sessions ---------------------------------------------------------------------------------

@blp.route("/sessions")
class Sessions(MethodView):
    @blp.arguments(UpcomingArgs, location="query")
    @blp.response(200, page_of(LiveSessionSchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any]) -> Any:
        """Upcoming and running live sessions of my courses (those I hold an active
        enrollment in, or instruct), soonest first."""
        user = current_user()
        assert user is not None
        stmt = service.upcoming_query(user, current_institution().id, utcnow())
        if args.get("course_id"):
            stmt = stmt.where(LiveSession.course_id == args["course_id"])
        return page_response(paginate(db_session(), stmt,
                                      [(LiveSession.scheduled_start, "asc"),
                                       (LiveSession.id, "asc")],
                                      args["limit"], args["cursor"]))


@blp.route("/sessions/<session_id>")
class SessionDetail(MethodView):
    @blp.response(200, StaffLiveSessionSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self, session_id: str) -> Any:
        """A live session; staff also see where it is broadcast and recorded."""
        user = current_user()
        assert user is not None
        live = _session(session_id)
        session = db_session()
        if service.is_staff(session, kalpla(), user, live):
            return live
        if not service.may_see(session, kalpla(), user, live):
            raise APIError(404, f"There is no live session {session_id!r}.", "not-found")
        return public_view(live)


@blp.route("/sessions/<session_id>/broadcast")
class Broadcast(MethodView):
    @blp.response(200, IngestGrantSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, session_id: str) -> Any:
        """The ingest endpoint and stream key (the session's instructors and admins)."""
        live = _staff_session(session_id)
        return service.broadcast(_ctx(live), kalpla(), _provider(live), live)


@blp.route("/sessions/<session_id>/rotate-key")
class RotateKey(MethodView):
    @blp.response(200, IngestGrantSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, session_id: str) -> Any:
        """A new stream key; the old one stops working."""
        live = _staff_session(session_id)
        return service.rotate_key(_ctx(live), kalpla(), _provider(live), live)


@blp.route("/sessions/<session_id>/stop")
class Stop(MethodView):
    @blp.response(200, StaffLiveSessionSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, session_id: str) -> Any:
        """Stop the stream and end the session."""
        live = _staff_session(session_id)
        return service.stop(_ctx(live), kalpla(), _provider(live), live)


@blp.route("/sessions/<session_id>/playback")
class PlaybackView(MethodView):
    @blp.response(200, PlaybackGrantSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, session_id: str) -> Any:
        """A playback URL with a short-lived token bound to me (students with an active
        enrollment, the course's staff, admins); once the session has ended, a link to its
        recording (``recording_file_id``, a file of the lesson; 409 until there is one)."""
        user = current_user()
        assert user is not None
        live = _session(session_id)
        # The core checked the request's institution; this is the session's own.
        require_enabled(service.PLUGIN, live.institution_id)
        service.require_viewer(db_session(), kalpla(), user, live)
        result = service.playback(_ctx(live), _provider(live), live, user)
        return {"url": result.url, "token": result.token.token if result.token else None,
                "expires_at": result.until, "recording_file_id": result.recording_file_id}


@blp.route("/sessions/<session_id>/heartbeat")
class Heartbeat(MethodView):
    @blp.response(200, AttendeeSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, session_id: str) -> Any:
        """I am still watching (every 30 seconds or so): counts towards my attendance."""
        user = current_user()
        assert user is not None
        live = _session(session_id)
        session = db_session()
        service.require_viewer(session, kalpla(), user, live)
        percent = attendance.percent_for(kalpla(), session, live.institution_id)
        return attendance.heartbeat(session, kalpla(), live, user.id, utcnow(), percent)


@blp.route("/sessions/<session_id>/attendance")
class AttendanceList(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(AttendeeSchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any], session_id: str) -> Any:
        """Who watched, for how long, and who completed (the session's staff)."""
        live = _staff_session(session_id)
        from kalpla_streaming.models import Attendance

        return page_response(paginate(db_session(), attendance.attendance_query(live),
                                      [(Attendance.id, "asc")], args["limit"], args["cursor"]))


# --- recordings in the IVS bucket ---------------------------------------------------------------

HLS_BODY = {"application/vnd.apple.mpegurl": {"schema": {"type": "string"}}}


@blp.route("/recordings/<path:name>")
@any_institution
class RecordingPlaylist(MethodView):
    @blp.arguments(RecordingArgs, location="query")
    @blp.doc(responses={"200": {"description": "The playlist, every URI in it a link",
                                "content": HLS_BODY}})
    def get(self, args: dict[str, Any], name: str) -> Any:
        """A playlist of an Amazon IVS recording (a lesson's ``ivs-recording`` file), through
        the signed link its download URL is: the renditions' playlists it names are signed
        links to this route, its segments presigned S3 URLs. 403 when the link is altered,
        expired or another playlist's, 404 once the file is deleted or its institution no
        longer has the plugin enabled."""
        if not hls.is_playlist_name(name):
            raise APIError(404, "There is no such recording.", "not-found")
        # The token names the playlist it links to: a rendition's link cannot be turned
        # into the master playlist's, whose links would be fresh ones.
        key = read_recording_token(kalpla().settings.secret_key, args["token"], name)
        if key is None:
            raise APIError(403, "The link is not valid or has expired.", "forbidden")
        file_id = find_file(db_session(), provider=recordings.IVS_STORAGE, storage_key=key)
        # Any institution's link comes here: the recording's own must still have the plugin.
        if not service.recording_served(db_session(), kalpla(), file_id):
            raise APIError(404, "There is no such recording.", "not-found")
        storage = kalpla().providers.get("storage", recordings.IVS_STORAGE, current_app)
        try:
            text = storage.playlist(key, name)
        except LookupError:
            raise APIError(404, "There is no such recording.", "not-found") from None
        except (ClientError, BotoCoreError, hls.PlaylistError) as exc:
            log.warning("recording playlist %s not served: %s", name, exc)
            raise APIError(502, "The recording cannot be read.",
                           "streaming-provider-error") from None
        return Response(text, mimetype="application/vnd.apple.mpegurl",
                        headers={"Cache-Control": "private, no-store"})


# --- MediaMTX callbacks -----------------------------------------------------------------------

def _check_hook_secret(required: bool) -> None:
    """The shared secret, from the header or (for the auth URL) the query."""
    expected = _config().hook_secret
    if expected is None:
        if required:
            raise APIError(404, f"Nothing is found at {request.path}.")
        return
    given = request.headers.get(SECRET_HEADER) or request.args.get("secret")
    if not same_secret(given, expected):
        raise APIError(401, "The media server's shared secret is missing or wrong.",
                       "unauthorized")


@blp.route("/mediamtx/auth")
@any_institution
class MediaMTXAuth(MethodView):
    @blp.arguments(MediaMTXAuthSchema)
    @blp.response(200, StreamingHookResultSchema)
    def post(self, data: dict[str, Any]) -> Any:
        """MediaMTX's external HTTP authentication: 200 lets the client publish or read,
        401/403 refuses."""
        _check_hook_secret(required=False)
        req = mediamtx.AuthRequest(**{k: data.get(k) or "" for k in (
            "action", "path", "user", "password", "token", "query", "ip", "protocol")},
            id=data.get("id"))
        verdict = mediamtx.authorize(db_session(), kalpla(), kalpla().settings.secret_key,
                                     req, utcnow(), _config().hook_secret)
        # Never log credentials: the action, path and reason only.
        log.info("media server %s of %r: %s (%s)", req.action, req.path,
                 "allowed" if verdict.allowed else "refused", verdict.reason)
        if verdict.allowed:
            return {"applied": True}
        if not (req.user or req.password or req.token or req.query):
            raise APIError(401, "Credentials are required.", "unauthorized")
        raise APIError(403, "Not allowed.", "forbidden")


@blp.route("/mediamtx/events")
@any_institution
class MediaMTXEvents(MethodView):
    @blp.arguments(MediaMTXEventSchema)
    @blp.response(200, StreamingHookResultSchema)
    def post(self, data: dict[str, Any]) -> Any:
        """The media server's ``runOnReady``/``runOnNotReady`` notifications (shared secret
        in ``X-Kalpla-Streaming-Secret``): ready moves the session live, not ready ends it."""
        _check_hook_secret(required=True)
        applied = mediamtx.notify(db_session(), kalpla(), data["event"], data["path"],
                                  data["occurred_at"] or utcnow(), data["id"])
        if applied is None:
            raise APIError(404, f"There is no live session at {data['path']!r}.", "not-found")
        return {"applied": applied}


# --- Amazon IVS events ------------------------------------------------------------------------

def _certificates() -> sns.CertificateCache:
    cache = current_app.extensions.get("kalpla_streaming_certs")
    if cache is None:
        cache = current_app.extensions["kalpla_streaming_certs"] = sns.CertificateCache()
    return cache


def _sns_event(message: dict[str, Any]) -> Any:
    """The IVS event inside a verified SNS notification of a configured topic (None for a
    confirmation). Anyone can subscribe this URL to a topic of their own AWS account and
    publish signed messages to it, so only the configured topics are taken: with none
    configured, the SNS path is closed."""
    config = _config()
    topic = message.get("TopicArn")
    if topic not in config.sns_topic_arns:
        log.warning("SNS message of topic %r refused: not in KALPLA_STREAMING_SNS_TOPIC_ARNS",
                    topic)
        raise APIError(403, "Messages of this topic are not accepted.", "unknown-topic")
    try:
        sns.verify(message, config.sns_cert_url_pattern, _certificates())
    except sns.SNSError as exc:
        log.warning("SNS message refused: %s", exc)
        raise APIError(403, "The SNS message signature is not valid.", "bad-signature") from None
    if message["Type"] == "SubscriptionConfirmation":
        try:
            sns.confirm_subscription(message, config.sns_cert_url_pattern)
        except sns.SNSError as exc:
            log.warning("SNS subscription not confirmed: %s", exc)
            raise APIError(502, "The subscription could not be confirmed.",
                           "confirmation-failed") from None
        log.info("SNS subscription to %s confirmed", message.get("TopicArn"))
        return None
    if message["Type"] != "Notification":
        return None
    try:
        return json.loads(message["Message"])
    except ValueError:
        raise APIError(422, "The notification's message is not JSON.", "validation") from None


@blp.route("/webhooks/ivs")
@any_institution
class IVSWebhook(MethodView):
    @blp.response(200, StreamingHookResultSchema)
    def post(self) -> Any:
        """Amazon IVS events from EventBridge: through an SNS HTTPS subscription (signature
        verified; subscription confirmations are confirmed) or an EventBridge API destination
        (shared secret in ``X-Kalpla-Streaming-Secret``). Stream start and end move the
        session live and ended; a recording's end records where it is."""
        try:
            body = json.loads(request.get_data(cache=False) or b"null")
        except ValueError:
            raise APIError(400, "The body is not JSON.", "bad-request") from None
        account: str | None = None
        if isinstance(body, dict) and "SignatureVersion" in body and "Type" in body:
            event = _sns_event(body)
            if event is None:
                return {"applied": False}
            # A topic's events are about channels of the topic's own account.
            account = ivs_events.account_of(str(body["TopicArn"])) or ""
        else:
            if not same_secret(request.headers.get(SECRET_HEADER), _config().eventbridge_secret):
                raise APIError(401, "The shared secret is missing or wrong.", "unauthorized")
            event = body
        try:
            outcome = ivs_events.handle(db_session(), kalpla(), event, account)
        except ivs_events.ForeignAccount as exc:
            log.warning("IVS event refused: %s", exc)
            raise APIError(403, "The event is about a channel of another AWS account than "
                           "its topic's.", "foreign-account") from None
        except ivs_events.EventError as exc:
            raise APIError(422, f"Not an IVS event: {exc}.", "validation") from None
        log.info("IVS event %s: %s", event.get("id"), outcome)
        return {"applied": outcome == "applied"}
