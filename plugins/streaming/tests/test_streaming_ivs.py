"""The Amazon IVS provider over HTTP. No call reaches AWS: botocore's Stubber answers the IVS
calls (moto answers the channel calls in the moto test), SNS messages are signed with a key
pair made here whose certificate a local server hands out, and playback tokens are checked
with PyJWT against the public key, as IVS checks them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jwt
import pytest
from botocore.stub import Stubber
from kalpla_streaming import routes
from kalpla_streaming.models import PlaybackKeyPair
from sqlalchemy import func, select
from streaming_aws import (
    LOCAL_PATTERN,
    TOPIC,
    Capture,
    FakeIVS,
    LocalServer,
    SNSSigner,
    channel_arn,
    channel_response,
    key_pair_response,
    local_server,
    recording_event,
    recording_response,
    stream_event,
)
from streaming_support import EVENTBRIDGE_SECRET, School, ok, problem, school

from kalpla_core.db import utcnow

pytestmark = pytest.mark.plugins("streaming")

ORIGIN = "https://learn.school.test"
BUCKET = "school-recordings"


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with local_server() as state:
        yield state


# Where a call the Stubber did not answer would go: a closed local port, never AWS.
NOWHERE = "http://127.0.0.1:9"


def _school(make_app: Any, endpoint: str | None = NOWHERE,
            streaming: dict[str, Any] | None = None, **settings: Any) -> School:
    """An institution on IVS; ``endpoint=None`` for moto, which answers AWS's own hosts."""
    return school(make_app, "ivs", {"ivs_allowed_origin": ORIGIN, "playback_token_ttl": 300,
                                    "ivs_recording_bucket": BUCKET, **settings},
                  aws_region="us-east-1", aws_endpoint_url=endpoint,
                  streaming={"sns_cert_url_pattern": LOCAL_PATTERN, "sns_topic_arns": TOPIC,
                             **(streaming or {})})


@pytest.fixture
def s(make_app: Any) -> School:
    return _school(make_app)


def ivs_client(s: School) -> Any:
    """The IVS client the provider calls through (its own retry configuration)."""
    with s.app.app_context():
        return s.kalpla.providers.get("streaming", "ivs", s.app).client


@pytest.fixture
def stub(s: School) -> Iterator[Stubber]:
    stubber = Stubber(ivs_client(s))
    with stubber:
        yield stubber


def _expect_setup(stub: Stubber, s: School, arn: str, material: Capture | None = None) -> None:
    """The calls of a first broadcast: key pair, recording configuration, channel."""
    inst = s.school.id
    stub.add_response("import_playback_key_pair", key_pair_response(), {
        "publicKeyMaterial": material or Capture(), "name": f"kalpla-{inst}",
        "tags": {"kalpla:institution": inst}})
    stub.add_response("create_recording_configuration", recording_response(), {
        "name": f"kalpla-{inst}", "destinationConfiguration": {"s3": {"bucketName": BUCKET}},
        "tags": {"kalpla:institution": inst}})
    stub.add_response("create_channel", channel_response(arn), {
        "name": f"kalpla-{s.session_id}", "latencyMode": "LOW", "authorized": True,
        "type": "STANDARD",
        "recordingConfigurationArn": recording_response()["recordingConfiguration"]["arn"],
        "tags": {"kalpla:session": s.session_id, "kalpla:institution": inst}})


def _eventbridge(s: School, event: dict[str, Any], secret: str = EVENTBRIDGE_SECRET) -> Any:
    return s.client.post("/api/v1/streaming/webhooks/ivs", json=event,
                         headers={"X-Kalpla-Streaming-Secret": secret})


def _sns(s: School, message: dict[str, Any]) -> Any:
    return s.client.post("/api/v1/streaming/webhooks/ivs", json=message, headers={
        "x-amz-sns-message-type": message["Type"], "Content-Type": "text/plain"})


def _key_rows(s: School) -> int:
    with s.kalpla.db.session() as db:
        return db.scalar(select(func.count()).select_from(PlaybackKeyPair)) or 0


# --- the whole flow ---------------------------------------------------------------------------

def test_mentor_broadcasts_students_watch_events_move_the_session(s, stub, server):
    arn = channel_arn()
    material = Capture()
    _expect_setup(stub, s, arn, material)
    body = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    assert body == {"ingest_endpoint":
                    "rtmps://f99084460c35.global-contribute.live-video.net:443/app/",
                    "stream_key": "sk_us-east-1_StreamKeyValue1", "publish_url": None}
    # The second time, nothing is called: the channel is there.
    assert ok(s.post(f"/sessions/{s.session_id}/broadcast", s.admin)) == body
    with s.kalpla.db.session() as db:
        (keys,) = db.scalars(select(PlaybackKeyPair)).all()
        assert keys.public_key_pem == material.value and "PRIVATE" not in keys.public_key_pem
        assert "PRIVATE" not in keys.private_key_encrypted
        assert keys.recording_bucket == BUCKET  # where "Recording End" events may point
    live = s.live()
    assert live.channel_arn == arn and "StreamKeyValue1" not in (live.stream_key_encrypted or "")

    # An enrolled student's token verifies against the imported public key, as IVS checks it.
    before = int(utcnow().timestamp())
    playback = ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))
    assert playback["url"] == f"{channel_response(arn)['channel']['playbackUrl']}" \
                              f"?token={playback['token']}"
    assert jwt.get_unverified_header(playback["token"])["alg"] == "ES384"
    claims = jwt.decode(playback["token"], material.value, algorithms=["ES384"])
    assert claims["aws:channel-arn"] == arn
    assert claims["aws:access-control-allow-origin"] == ORIGIN
    assert claims["aws:viewer-id"] == s.enrolled.id
    assert before + 300 <= claims["exp"] <= int(utcnow().timestamp()) + 300
    assert isinstance(claims["exp"], int)

    problem(s.post(f"/sessions/{s.session_id}/playback", s.student), 403)
    problem(s.post(f"/sessions/{s.session_id}/playback", None), 401)
    problem(s.post(f"/sessions/{s.session_id}/playback", s.outsider), 404)
    problem(s.post(f"/sessions/{s.session_id}/broadcast", s.enrolled), 403)

    # Stream start through SNS, end through an EventBridge API destination.
    start = utcnow().replace(microsecond=0) - timedelta(minutes=30)
    end = start + timedelta(minutes=25)
    signer = SNSSigner(server)
    started = stream_event(arn, "Stream Start", start)
    assert ok(_sns(s, signer.notification(started))) == {"applied": True}
    assert s.live().status == "live"
    ended = stream_event(arn, "Stream End", end)
    assert ok(_eventbridge(s, ended)) == {"applied": True}
    live = s.live()
    assert (live.status, live.started_at, live.ended_at) == ("ended", start, end)
    # Repeats (same ids, either way) and a late start change nothing more.
    assert ok(_sns(s, signer.notification(started))) == {"applied": False}
    assert ok(_eventbridge(s, ended)) == {"applied": False}
    assert ok(_eventbridge(s, stream_event(arn, "Stream Start", end + timedelta(minutes=1)))) \
        == {"applied": False}
    assert ok(_eventbridge(s, stream_event(arn, "Stream End", end + timedelta(minutes=3)))) \
        == {"applied": False}
    live = s.live()
    assert (live.status, live.started_at, live.ended_at) == ("ended", start, end)

    # The recording cannot be read in S3 (unreachable here): the event is refused, so that
    # it comes again, and nothing of it is kept; until then there is no recording to play.
    recorded = recording_event(arn, end + timedelta(minutes=1), BUCKET,
                               "ivs/v1/123456789012/AbCdEf123456/2026/11/26/12/0/rec1")
    assert problem(_eventbridge(s, recorded), 503)["type"] == \
        "urn:kalpla:problem:recording-unavailable"
    live = s.live()
    assert live.recording_location is None and live.recording_file_id is None
    assert ok(s.get(f"/sessions/{s.session_id}", s.enrolled))["has_recording"] is False
    assert problem(s.post(f"/sessions/{s.session_id}/playback", s.enrolled), 409)["type"] == \
        "urn:kalpla:problem:recording-not-ready"
    stub.assert_no_pending_responses()


def test_playback_tokens_last_at_most_the_ten_minutes_ivs_takes(make_app):
    # IVS refuses a token with aws:viewer-id whose exp is more than ten minutes ahead.
    s = _school(make_app, playback_token_ttl=3600)
    with Stubber(ivs_client(s)) as stub:
        _expect_setup(stub, s, channel_arn())
        ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    before = int(utcnow().timestamp())
    token = ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))["token"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert before + 600 <= exp <= int(utcnow().timestamp()) + 600


def test_reordered_events_end_in_the_same_state(s, stub):
    arn = channel_arn()
    _expect_setup(stub, s, arn)
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    end = start + timedelta(minutes=40)
    assert ok(_eventbridge(s, stream_event(arn, "Stream End", end))) == {"applied": True}
    assert ok(_eventbridge(s, stream_event(arn, "Stream Start", start))) == {"applied": True}
    live = s.live()
    assert (live.status, live.started_at, live.ended_at) == ("ended", start, end)


def test_rotating_and_stopping_call_ivs(s, stub, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    arn = channel_arn()
    _expect_setup(stub, s, arn)
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    old_key = arn.replace(":channel/", ":stream-key/")
    stub.add_response("list_stream_keys", {"streamKeys": [{"arn": old_key, "channelArn": arn}]},
                      {"channelArn": arn})
    stub.add_response("delete_stream_key", {}, {"arn": old_key})
    stub.add_response("create_stream_key", {"streamKey": {
        "arn": f"{old_key}2", "value": "sk_us-east-1_Rotated", "channelArn": arn}},
        {"channelArn": arn})
    body = ok(s.post(f"/sessions/{s.session_id}/rotate-key", s.instructor))
    assert body["stream_key"] == "sk_us-east-1_Rotated"
    assert ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))["stream_key"] == \
        "sk_us-east-1_Rotated"
    # Stopping a channel that is not broadcasting is no error.
    stub.add_client_error("stop_stream", "ChannelNotBroadcasting", http_status_code=404,
                          expected_params={"channelArn": arn})
    assert ok(s.post(f"/sessions/{s.session_id}/stop", s.instructor))["status"] == "ended"
    stub.assert_no_pending_responses()
    # Stream keys are never logged by Kalpla.
    assert "StreamKeyValue1" not in caplog.text and "sk_us-east-1_Rotated" not in caplog.text


# --- failures ---------------------------------------------------------------------------------

def test_throttling_is_answered_503_and_nothing_is_left_behind(s, stub):
    inst = s.school.id
    stub.add_response("import_playback_key_pair", key_pair_response(), {
        "publicKeyMaterial": Capture(), "name": f"kalpla-{inst}",
        "tags": {"kalpla:institution": inst}})
    stub.add_response("create_recording_configuration", recording_response(), None)
    stub.add_client_error("create_channel", "ThrottlingException", http_status_code=429)
    stub.add_response("delete_recording_configuration", {},
                      {"arn": recording_response()["recordingConfiguration"]["arn"]})
    stub.add_response("delete_playback_key_pair", {}, {"arn": key_pair_response()["keyPair"]
                                                       ["arn"]})
    r = s.post(f"/sessions/{s.session_id}/broadcast", s.instructor)
    body = problem(r, 503)
    assert body["type"] == "urn:kalpla:problem:streaming-provider-busy"
    assert r.headers["Retry-After"] == "5"
    stub.assert_no_pending_responses()
    assert _key_rows(s) == 0
    live = s.live()
    assert live.channel_arn is None and live.stream_key_encrypted is None


def test_a_refusal_is_answered_502_with_clean_up(s, stub):
    stub.add_response("import_playback_key_pair", key_pair_response(), None)
    stub.add_response("create_recording_configuration", recording_response(), None)
    stub.add_client_error("create_channel", "ValidationException", http_status_code=400)
    stub.add_response("delete_recording_configuration", {}, None)
    stub.add_response("delete_playback_key_pair", {}, None)
    assert problem(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor), 502)["type"] \
        == "urn:kalpla:problem:streaming-provider-error"
    stub.assert_no_pending_responses()
    assert _key_rows(s) == 0


# --- retries: botocore's, and only botocore's -------------------------------------------------

@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's sleeps between attempts, recorded instead of slept."""
    import types

    slept: list[float] = []
    monkeypatch.setattr("botocore.endpoint.time", types.SimpleNamespace(sleep=slept.append))
    return slept


def _fake_ivs(s: School) -> FakeIVS:
    fake = FakeIVS(ivs_client(s))
    fake.answer("ImportPlaybackKeyPair", key_pair_response())
    fake.answer("CreateRecordingConfiguration", recording_response())
    return fake


@pytest.mark.parametrize("attempts", [1, 4])
def test_a_throttled_call_is_tried_exactly_the_configured_times_then_503(make_app, backoffs,
                                                                          attempts):
    s = _school(make_app, streaming={"aws_attempts": attempts})
    fake = _fake_ivs(s)
    fake.answer("CreateChannel", status=429, error="ThrottlingException", times=attempts)
    fake.answer("DeleteRecordingConfiguration", status=204)
    fake.answer("DeletePlaybackKeyPair", status=204)
    r = s.post(f"/sessions/{s.session_id}/broadcast", s.instructor)
    assert problem(r, 503)["type"] == "urn:kalpla:problem:streaming-provider-busy"
    assert fake.calls == ["ImportPlaybackKeyPair", "CreateRecordingConfiguration",
                          *["CreateChannel"] * attempts,
                          "DeleteRecordingConfiguration", "DeletePlaybackKeyPair"]
    assert len(backoffs) == attempts - 1  # botocore backed off between its attempts
    assert fake.pending() == {}
    assert _key_rows(s) == 0 and s.live().channel_arn is None


def test_a_failing_service_is_tried_the_configured_times_then_502(make_app, backoffs):
    s = _school(make_app, streaming={"aws_attempts": 3})
    fake = _fake_ivs(s)
    fake.answer("CreateChannel", status=500, error="InternalServerException", times=3)
    fake.answer("DeleteRecordingConfiguration", status=204)
    fake.answer("DeletePlaybackKeyPair", status=204)
    assert problem(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor), 502)["type"] \
        == "urn:kalpla:problem:streaming-provider-error"
    assert fake.calls.count("CreateChannel") == 3 and fake.pending() == {}

    # A refusal is not retried; a passing error is, and then the set-up is made afresh.
    fake.calls.clear()
    fake.answer("ImportPlaybackKeyPair", key_pair_response())
    fake.answer("CreateRecordingConfiguration", recording_response())
    fake.answer("CreateChannel", status=400, error="ValidationException")
    fake.answer("DeleteRecordingConfiguration", status=204)
    fake.answer("DeletePlaybackKeyPair", status=204)
    problem(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor), 502)
    assert fake.calls.count("CreateChannel") == 1
    fake.answer("ImportPlaybackKeyPair", key_pair_response())
    fake.answer("CreateRecordingConfiguration", recording_response())
    fake.answer("CreateChannel", status=500, error="InternalServerException")
    fake.answer("CreateChannel", channel_response(channel_arn()))
    assert ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))["stream_key"]
    assert fake.pending() == {} and _key_rows(s) == 1
    assert s.live().channel_arn == channel_arn()


def test_a_failure_after_the_channel_was_made_deletes_it(s, stub, monkeypatch):
    arn = channel_arn()
    _expect_setup(stub, s, arn)
    stub.add_response("delete_channel", {}, {"arn": arn})
    stub.add_response("delete_recording_configuration", {}, None)
    stub.add_response("delete_playback_key_pair", {}, None)

    from kalpla_streaming.keys import STREAM_KEY_PURPOSE, seal

    def seal_but_not_stream_keys(secret: str, purpose: str, value: str) -> str:
        if purpose == STREAM_KEY_PURPOSE:
            raise RuntimeError("the stream key cannot be sealed")
        return seal(secret, purpose, value)

    monkeypatch.setattr("kalpla_streaming.providers.ivs.seal", seal_but_not_stream_keys)
    problem(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor), 500)
    stub.assert_no_pending_responses()
    assert _key_rows(s) == 0 and s.live().channel_arn is None


def test_unreachable_ivs_is_a_503(s, stub, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    def down(*_: Any, **__: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://ivs.us-east-1.amazonaws.com")

    client = ivs_client(s)
    monkeypatch.setattr(client, "import_playback_key_pair", down)
    assert problem(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor), 503)["type"] \
        == "urn:kalpla:problem:streaming-provider-unavailable"
    assert _key_rows(s) == 0


# --- the webhook's checks ---------------------------------------------------------------------

def _with_channel(s: School, stub: Stubber) -> str:
    arn = channel_arn()
    _expect_setup(stub, s, arn)
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    return arn


def test_sns_signatures_are_verified_in_both_versions(s, stub, server):
    arn = _with_channel(s, stub)
    signer = SNSSigner(server)
    at = utcnow().replace(microsecond=0)
    v1 = signer.notification(stream_event(arn, "Stream Start", at), version="1",
                             subject="IVS event")
    assert ok(_sns(s, v1)) == {"applied": True}
    v2 = signer.notification(stream_event(arn, "Stream End", at + timedelta(minutes=9)))
    assert ok(_sns(s, v2)) == {"applied": True}
    assert s.live().status == "ended"


def test_forged_or_untrusted_sns_messages_are_refused(s, stub, server):
    arn = _with_channel(s, stub)
    signer = SNSSigner(server)
    event = stream_event(arn, "Stream Start", utcnow())
    good = signer.notification(event)

    tampered = {**good, "Message": good["Message"].replace("Stream Start", "Stream End")}
    problem(_sns(s, tampered), 403)
    problem(_sns(s, {**good, "Signature": "bm90IGEgc2lnbmF0dXJl"}), 403)
    problem(_sns(s, {**good, "SignatureVersion": "3"}), 403)
    # A certificate from elsewhere than the trusted host: not even fetched.
    other = SNSSigner(server, path="/other.pem")
    elsewhere = other.sign({k: v for k, v in good.items() if k != "Signature"})
    elsewhere["SigningCertURL"] = elsewhere["SigningCertURL"].replace("127.0.0.1", "localhost")
    problem(_sns(s, elsewhere), 403)
    assert "/other.pem" not in server.requests
    # Signed by another key than the certificate's.
    impostor = SNSSigner(server, path="/impostor.pem")
    forged = impostor.notification(event)
    forged["SigningCertURL"] = signer.cert_url
    problem(_sns(s, forged), 403)
    assert s.live().status == "scheduled"
    assert ok(_sns(s, good)) == {"applied": True}


def test_sns_subscription_is_confirmed(s, server):
    signer = SNSSigner(server)
    server.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    confirmation = signer.confirmation()
    assert ok(_sns(s, confirmation)) == {"applied": False}
    assert any(p.startswith("/confirm?") and confirmation["Token"] in p
               for p in server.requests)
    forged = {**confirmation, "Token": "other"}
    problem(_sns(s, forged), 403)


def test_sns_topics_can_be_restricted(make_app, server):
    s = school(make_app, "ivs", aws_region="us-east-1", aws_endpoint_url=NOWHERE,
               streaming={"sns_cert_url_pattern": LOCAL_PATTERN,
                          "sns_topic_arns": "arn:aws:sns:us-east-1:123456789012:only-this"})
    signer = SNSSigner(server)
    problem(_sns(s, signer.notification(stream_event(channel_arn(), "Stream Start",
                                                       utcnow()))), 403)


def test_sns_is_closed_until_topics_are_configured(make_app, server):
    """Anyone may subscribe the webhook to a topic of their own account and publish signed
    messages: with no topic configured, none is taken and no subscription is confirmed."""
    s = _school(make_app, streaming={"sns_topic_arns": ""})
    stubber = Stubber(ivs_client(s))
    with stubber:
        arn = _with_channel(s, stubber)
    signer = SNSSigner(server)
    server.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    body = problem(_sns(s, signer.confirmation()), 403)
    assert body["type"] == "urn:kalpla:problem:unknown-topic"
    problem(_sns(s, signer.notification(stream_event(arn, "Stream Start", utcnow()))), 403)
    assert s.live().status == "scheduled"
    assert not any(p.startswith("/confirm") for p in server.requests)


def test_unlisted_topics_are_neither_confirmed_nor_heard(s, stub, server):
    arn = _with_channel(s, stub)
    signer = SNSSigner(server)
    server.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    theirs = "arn:aws:sns:us-east-1:999999999999:attacker"
    problem(_sns(s, signer.confirmation(topic=theirs)), 403)
    problem(_sns(s, signer.notification(stream_event(arn, "Stream Start", utcnow()),
                                        topic=theirs)), 403)
    assert s.live().status == "scheduled"
    assert not any(p.startswith("/confirm") for p in server.requests)


def test_sns_events_must_be_of_the_topics_own_account(make_app, server):
    """A listed topic of one account cannot move a channel of another."""
    theirs = "arn:aws:sns:us-east-1:999999999999:ivs-events"
    s = _school(make_app, streaming={"sns_topic_arns": f"{TOPIC},{theirs}"})
    stubber = Stubber(ivs_client(s))
    with stubber:
        arn = _with_channel(s, stubber)
    signer = SNSSigner(server)
    body = problem(_sns(s, signer.notification(stream_event(arn, "Stream Start", utcnow()),
                                               topic=theirs)), 403)
    assert body["type"] == "urn:kalpla:problem:foreign-account"
    assert s.live().status == "scheduled"
    assert ok(_sns(s, signer.notification(stream_event(arn, "Stream Start", utcnow())))) == \
        {"applied": True}


def test_eventbridge_deliveries_need_the_secret(s, stub):
    arn = _with_channel(s, stub)
    event = stream_event(arn, "Stream Start", utcnow())
    problem(_eventbridge(s, event, secret="wrong"), 401)
    problem(s.client.post("/api/v1/streaming/webhooks/ivs", json=event), 401)
    assert s.live().status == "scheduled"
    problem(_eventbridge(s, {"source": "aws.s3", "id": "x"}), 422)
    problem(s.client.post("/api/v1/streaming/webhooks/ivs", data=b"{not json",
                          headers={"X-Kalpla-Streaming-Secret": EVENTBRIDGE_SECRET}), 400)
    # Unknown channels are acknowledged (EventBridge stops retrying) and ignored.
    assert ok(_eventbridge(s, stream_event(channel_arn("Unknown"), "Stream Start",
                                           utcnow()))) == {"applied": False}


def test_events_of_an_institution_that_disabled_the_plugin_are_ignored(s, stub):
    arn = _with_channel(s, stub)
    r = s.client.delete("/api/v1/institutions/school/plugins/streaming",
                        headers=s.factories.auth(s.admin, s.school))
    assert r.status_code == 204
    assert ok(_eventbridge(s, stream_event(arn, "Stream Start", utcnow()))) == \
        {"applied": False}
    assert s.live().status == "scheduled"
    problem(s.post(f"/sessions/{s.session_id}/playback", s.enrolled), 404)


# --- attendance -------------------------------------------------------------------------------

def test_attendance_completes_the_live_lesson(s, stub, monkeypatch):
    arn = _with_channel(s, stub)
    start = utcnow().replace(microsecond=0) - timedelta(hours=2)
    ok(_eventbridge(s, stream_event(arn, "Stream Start", start)))
    monkeypatch.setattr(routes, "utcnow", lambda: start)
    ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))
    for t in range(30, 20 * 60 + 1, 30):
        monkeypatch.setattr(routes, "utcnow", lambda t=t: start + timedelta(seconds=t))
        ok(s.post(f"/sessions/{s.session_id}/heartbeat", s.enrolled))
    ok(_eventbridge(s, stream_event(arn, "Stream End", start + timedelta(minutes=30))))
    progress = ok(s.client.get(f"/api/v1/courses/{s.course_id}/progress",
                               headers=s.auth(s.enrolled)))
    (line,) = [ln for ln in progress["lessons"] if ln["lesson_id"] == s.lesson_id]
    assert line["progress"]["completed"] is True  # 20 of 30 minutes: 67 % ≥ 60 %


# --- moto ---------------------------------------------------------------------------------------

def _imported_key_pair(s: School) -> Any:
    """The institution's key pair, as if imported before (moto has no ImportPlaybackKeyPair)."""
    from kalpla_streaming.keys import PLAYBACK_KEY_PURPOSE, new_p384_key_pair, seal

    pair = new_p384_key_pair()
    with s.kalpla.db.session() as db:
        db.add(PlaybackKeyPair(
            institution_id=s.school.id, arn="arn:aws:ivs:us-east-1:123456789012:playback-key/Kp1",
            public_key_pem=pair.public_pem,
            private_key_encrypted=seal(s.kalpla.settings.secret_key, PLAYBACK_KEY_PURPOSE,
                                       pair.private_pem)))
    return pair


def test_the_channel_ivs_gets_is_private_and_low_latency(make_app, caplog):
    import logging

    from moto import mock_aws

    with mock_aws():
        s = _school(make_app, None, ivs_recording_bucket=None, ivs_channel_type="BASIC")
        caplog.set_level(logging.DEBUG)  # after the app set the root logger's level
        pair = _imported_key_pair(s)
        body = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
        client = ivs_client(s)
        arn = s.live().channel_arn
        channel = client.get_channel(arn=arn)["channel"]
        assert channel["authorized"] is True and channel["latencyMode"] == "LOW"
        assert channel["type"] == "BASIC" and channel["name"] == f"kalpla-{s.session_id}"
        assert channel["tags"]["kalpla:session"] == s.session_id
        assert body["ingest_endpoint"] == f"rtmps://{channel['ingestEndpoint']}:443/app/"
        assert body["stream_key"] and "Response body" in caplog.text
        # botocore logs response bodies at DEBUG; not those holding stream keys.
        assert body["stream_key"] not in caplog.text
        token = ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))["token"]
        claims = jwt.decode(token, pair.public_pem, algorithms=["ES384"])
        assert claims["aws:channel-arn"] == arn
        assert claims["aws:viewer-id"] == s.enrolled.id


def test_channels_of_deleted_or_cancelled_sessions_are_pruned(make_app):
    from click.testing import CliRunner
    from moto import mock_aws

    from kalpla_core.cli import make_cli

    with mock_aws():
        s = _school(make_app, None, ivs_recording_bucket=None)
        _imported_key_pair(s)
        arns = {}
        for name in ("deleted", "cancelled", "kept"):
            s.schedule(title=name)
            ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
            arns[name] = (s.lesson_id, s.session_id, s.live().channel_arn)
        client = ivs_client(s)
        foreign = client.create_channel(name="not-kalpla")["channel"]["arn"]

        def lesson_headers(lesson_id: str) -> dict[str, str]:
            etag = s.client.get(f"/api/v1/lessons/{lesson_id}",
                                headers=s.auth(s.instructor)).headers["ETag"]
            return {**s.auth(s.instructor), "If-Match": etag}

        lesson_id = arns["deleted"][0]
        assert s.client.delete(f"/api/v1/lessons/{lesson_id}",
                               headers=lesson_headers(lesson_id)).status_code == 204
        lesson_id = arns["cancelled"][0]
        ok(s.client.patch(f"/api/v1/lessons/{lesson_id}", json={"kind": "text", "body": "x"},
                          headers=lesson_headers(lesson_id)))

        def cli() -> Any:  # the command line builds its own app
            return make_cli(create_app=lambda: make_app(plugins=["streaming"],
                                                        aws_region="us-east-1"))

        runner = CliRunner()
        dry = runner.invoke(cli(), ["streaming", "prune-channels", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert len(client.list_channels()["channels"]) == 4
        result = runner.invoke(cli(), ["streaming", "prune-channels"])
        assert result.exit_code == 0, result.output
        assert set(result.stdout.split()) == {arns["deleted"][2], arns["cancelled"][2]}
        left = {c["arn"] for c in client.list_channels()["channels"]}
        assert left == {arns["kept"][2], foreign}
        s.session_id = arns["cancelled"][1]
        assert s.live().channel_arn is None
