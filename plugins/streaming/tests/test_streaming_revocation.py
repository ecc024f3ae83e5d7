"""Viewers of a session that left its course's IVS channel are revoked
(``StartViewerSessionRevocation``, answered by botocore's Stubber or a fake IVS behind the
client's send hook), so their tokens — bound to the channel — cannot play the next session."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from botocore.stub import Stubber
from kalpla_streaming import revocation, routes
from kalpla_streaming.channels import viewer_version
from kalpla_streaming.models import LiveSession
from sqlalchemy import select
from streaming_aws import (
    FakeIVS,
    channel_arn,
    channel_response,
    key_pair_response,
    stream_event,
)
from streaming_support import EVENTBRIDGE_SECRET, School, ok, problem, school

from kalpla_core.db import utcnow
from kalpla_core.jobs.models import Job

pytestmark = pytest.mark.plugins("streaming")

T0 = utcnow().replace(microsecond=0) - timedelta(hours=5)
# Where a call nothing answered would go: a closed local port, never AWS.
NOWHERE = "http://127.0.0.1:9"
ARN = channel_arn("Course1")
REVOKE = "start_viewer_session_revocation"


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _school(make_app: Any, scope: str = "course", **streaming: Any) -> School:
    s = school(make_app, "ivs", {"channel_scope": scope}, aws_region="us-east-1",
               aws_endpoint_url=NOWHERE, streaming=streaming)
    # A second student of the course, to tell one session's viewers from another's.
    ok(s.client.post(f"/api/v1/courses/{s.course_id}/enrollments",
                     headers=s.auth(s.student)), 201)
    return s


def _client(s: School) -> Any:
    with s.app.app_context():
        return s.kalpla.providers.get("streaming", "ivs", s.app).client


@pytest.fixture
def ivs(make_app: Any) -> Iterator[tuple[School, Stubber]]:
    s = _school(make_app)
    with Stubber(_client(s)) as stub:
        yield s, stub


def _at(monkeypatch: pytest.MonkeyPatch, minutes: float) -> datetime:
    when = T0 + timedelta(minutes=minutes)
    monkeypatch.setattr(routes, "utcnow", lambda: when)
    return when


def _session(s: School, session_id: str) -> LiveSession:
    with s.kalpla.db.session() as db:
        found = db.get(LiveSession, session_id)
        assert found is not None
        db.expunge(found)
        return found


def _jobs(s: School) -> list[tuple[str, dict[str, Any], str, Any, str | None]]:
    """The revocation jobs, oldest first, once every queued job has run."""
    assert s.kalpla.jobs.wait(30)
    with s.kalpla.db.session() as db:
        rows = db.scalars(select(Job).where(Job.name == revocation.JOB)
                          .order_by(Job.created_at, Job.id))
        return [(j.status, dict(j.params), j.institution_id or "", j.result, j.error)
                for j in rows]


def _token_claims(s: School, session_id: str, user: Any) -> dict[str, Any]:
    grant = ok(s.post(f"/sessions/{session_id}/playback", user))
    return jwt.decode(grant["token"], options={"verify_signature": False})


def _expect_revocations(stub: Stubber, viewers: list[str], version: int) -> None:
    for viewer in sorted(viewers):
        stub.add_response(REVOKE, {}, {"channelArn": ARN, "viewerId": viewer,
                                       "viewerSessionVersionsLessThanOrEqualTo": version})


def _eventbridge(s: School, event: dict[str, Any]) -> Any:
    return s.client.post("/api/v1/streaming/webhooks/ivs", json=event,
                         headers={"X-Kalpla-Streaming-Secret": EVENTBRIDGE_SECRET})


def _setup(s: School, stub: Stubber) -> None:
    stub.add_response("import_playback_key_pair", key_pair_response(), None)
    stub.add_response("create_channel", channel_response(ARN), None)


def test_a_claim_revokes_the_previous_sessions_viewers_and_an_end_its_own(ivs, monkeypatch):
    s, stub = ivs
    first = s.session_id
    second = s.schedule(title="Second class")
    _setup(s, stub)
    _at(monkeypatch, 0)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    stub.assert_no_pending_responses()
    assert _jobs(s) == []  # nobody held the channel before

    # Two students watch the first class; their tokens carry its claim's version.
    _at(monkeypatch, 0.5)
    v1 = viewer_version(_session(s, first))
    for user in (s.enrolled, s.student):
        claims = _token_claims(s, first, user)
        assert (claims["aws:viewer-id"], claims["aws:viewer-session-version"]) == (user.id, v1)

    # The second class takes the channel before the first went on air: the first's viewers
    # are revoked up to its version, once the claim is committed.
    _expect_revocations(stub, [s.enrolled.id, s.student.id], v1)
    _at(monkeypatch, 1)
    ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
    assert _jobs(s) == [("succeeded", {"session_id": first, "channel_arn": ARN, "version": v1},
                         s.school.id, {"revoked": 2, "channel_gone": False}, None)]
    stub.assert_no_pending_responses()

    # One student watches the second; a higher version, which the first's revocation spares.
    _at(monkeypatch, 2)
    v2 = viewer_version(_session(s, second))
    assert v2 > v1
    assert _token_claims(s, second, s.enrolled)["aws:viewer-session-version"] == v2
    problem(s.post(f"/sessions/{first}/playback", s.student), 409)  # not on air

    # The second ends on the channel: its one viewer is revoked.
    assert ok(_eventbridge(s, stream_event(ARN, "Stream Start", T0 + timedelta(minutes=3),
                                           stream_id="st-B"))) == {"applied": True}
    _expect_revocations(stub, [s.enrolled.id], v2)
    assert ok(_eventbridge(s, stream_event(ARN, "Stream End", T0 + timedelta(minutes=30),
                                           stream_id="st-B"))) == {"applied": True}
    assert _jobs(s)[1:] == [("succeeded",
                             {"session_id": second, "channel_arn": ARN, "version": v2},
                             s.school.id, {"revoked": 1, "channel_gone": False}, None)]
    stub.assert_no_pending_responses()

    # A repeat of the end changes nothing; the first takes the channel back from the ended
    # second, whose viewers were revoked when it ended: no further call.
    ok(_eventbridge(s, stream_event(ARN, "Stream End", T0 + timedelta(minutes=30),
                                    stream_id="st-B")))
    _at(monkeypatch, 40)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    assert len(_jobs(s)) == 2
    assert viewer_version(_session(s, first)) > v2  # its new tokens outlive both revocations


def test_stopping_a_session_on_its_course_channel_revokes_its_viewers(ivs, monkeypatch):
    s, stub = ivs
    _setup(s, stub)
    _at(monkeypatch, 0)
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    _token_claims(s, s.session_id, s.student)
    version = viewer_version(_session(s, s.session_id))
    stub.add_response("stop_stream", {}, {"channelArn": ARN})
    _expect_revocations(stub, [s.student.id], version)
    assert ok(s.post(f"/sessions/{s.session_id}/stop", s.instructor))["status"] == "ended"
    assert [job[0] for job in _jobs(s)] == ["succeeded"]
    stub.assert_no_pending_responses()
    ok(s.post(f"/sessions/{s.session_id}/stop", s.instructor))  # again: nothing more
    assert len(_jobs(s)) == 1


def test_sessions_with_channels_of_their_own_revoke_nothing(make_app, monkeypatch):
    s = _school(make_app, scope="session")
    first = s.session_id
    second = s.schedule(title="Second class")
    with Stubber(_client(s)) as stub:  # an unexpected call fails the request or the job
        stub.add_response("import_playback_key_pair", key_pair_response(), None)
        for minutes, session_id, name in ((0, first, "A1"), (1, second, "B1")):
            _at(monkeypatch, minutes)
            stub.add_response("create_channel", channel_response(channel_arn(name)), None)
            ok(s.post(f"/sessions/{session_id}/broadcast", s.instructor))
            claims = _token_claims(s, session_id, s.enrolled)
            assert "aws:viewer-session-version" not in claims
        stub.add_response("stop_stream", {}, {"channelArn": channel_arn("A1")})
        ok(s.post(f"/sessions/{first}/stop", s.instructor))
        stub.assert_no_pending_responses()
    assert _jobs(s) == []


def test_self_hosted_course_paths_revoke_nothing(make_app, monkeypatch):
    s = school(make_app, "rtmp", {"channel_scope": "course"})
    first = s.session_id
    second = s.schedule(title="Second class")
    _at(monkeypatch, 0)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    ok(s.post(f"/sessions/{first}/playback", s.enrolled))
    _at(monkeypatch, 1)
    ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
    ok(s.post(f"/sessions/{second}/stop", s.instructor))
    assert _jobs(s) == []


def test_revocations_go_in_batches_and_a_failure_fails_the_job(ivs, monkeypatch, caplog):
    s, stub = ivs
    monkeypatch.setattr(revocation, "BATCH", 1)  # a batch per viewer: three reads
    first = s.session_id
    second = s.schedule(title="Second class")
    _setup(s, stub)
    _at(monkeypatch, 0)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    viewers = sorted([s.enrolled.id, s.student.id, s.instructor.id])
    for user in (s.enrolled, s.student, s.instructor):
        _token_claims(s, first, user)
    version = viewer_version(_session(s, first))
    reads: list[str] = []
    original = revocation.viewers

    def counted(session: Any, session_id: str, after: str, limit: int) -> list[str]:
        reads.append(after)
        return original(session, session_id, after, limit)

    monkeypatch.setattr(revocation, "viewers", counted)
    stub.add_response(REVOKE, {}, {"channelArn": ARN, "viewerId": viewers[0],
                                   "viewerSessionVersionsLessThanOrEqualTo": version})
    stub.add_client_error(REVOKE, "InternalServerException", http_status_code=500,
                          expected_params={"channelArn": ARN, "viewerId": viewers[1],
                                           "viewerSessionVersionsLessThanOrEqualTo": version})
    stub.add_response(REVOKE, {}, {"channelArn": ARN, "viewerId": viewers[2],
                                   "viewerSessionVersionsLessThanOrEqualTo": version})
    _at(monkeypatch, 1)
    with caplog.at_level(logging.ERROR, logger="kalpla_streaming.revocation"):
        ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
        (job,) = _jobs(s)
    stub.assert_no_pending_responses()
    assert reads == ["", viewers[0], viewers[1], viewers[2]]
    assert job[0] == "failed" and job[4] == (
        f"1 of 3 viewer(s) of session {first} could not be revoked on its course's IVS "
        "channel.")
    assert [r.getMessage() for r in caplog.records] == [
        f"IVS viewer {viewers[1]} of session {first} on {ARN} not revoked: "
        "InternalServerException"]


def test_a_channel_gone_leaves_nothing_to_revoke(ivs, monkeypatch):
    s, stub = ivs
    first = s.session_id
    second = s.schedule(title="Second class")
    _setup(s, stub)
    _at(monkeypatch, 0)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    for user in (s.enrolled, s.student):
        _token_claims(s, first, user)
    stub.add_client_error(REVOKE, "ResourceNotFoundException", http_status_code=404)
    _at(monkeypatch, 1)
    ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
    assert [(j[0], j[3]) for j in _jobs(s)] == [
        ("succeeded", {"revoked": 0, "channel_gone": True})]
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_throttled_revocation_is_retried_by_botocore_then_fails(make_app, monkeypatch,
                                                                  attempts):
    slept: list[float] = []
    monkeypatch.setattr("botocore.endpoint.time", types.SimpleNamespace(sleep=slept.append))
    s = _school(make_app, aws_attempts=attempts)
    first = s.session_id
    second = s.schedule(title="Second class")
    fake = FakeIVS(_client(s))
    fake.answer("ImportPlaybackKeyPair", key_pair_response())
    fake.answer("CreateChannel", channel_response(ARN))
    _at(monkeypatch, 0)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    _token_claims(s, first, s.enrolled)
    fake.calls.clear()
    fake.answer("StartViewerSessionRevocation", status=429, error="ThrottlingException",
                times=attempts)
    _at(monkeypatch, 1)
    ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
    ((status, *_rest),) = _jobs(s)
    assert status == "failed"
    assert fake.calls == ["StartViewerSessionRevocation"] * attempts and fake.pending() == {}
    assert len(slept) == attempts - 1  # botocore backed off between its attempts
