"""One channel per course (``channel_scope: course``): the sessions of a course share it, one
of them live at a time, and the providers' events go to the right session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from botocore.stub import Stubber
from kalpla_streaming import routes
from kalpla_streaming.channels import viewer_version
from kalpla_streaming.keys import rtmp_token
from kalpla_streaming.models import Channel, LiveSession
from kalpla_streaming.providers.ivs import COURSE_TOKEN_TTL
from sqlalchemy import delete, func, select
from streaming_aws import (
    channel_arn,
    channel_response,
    key_pair_response,
    stream_event,
)
from streaming_support import EVENTBRIDGE_SECRET, HOOK_SECRET, School, ok, problem, school

from kalpla_core.courses.models import Course
from kalpla_core.db import utcnow
from kalpla_core.storage.models import StoredFile

pytestmark = pytest.mark.plugins("streaming")

T0 = utcnow().replace(microsecond=0) - timedelta(hours=5)


def _at(monkeypatch: pytest.MonkeyPatch, minutes: float) -> datetime:
    """Kalpla's clock at T0 + ``minutes``."""
    when = T0 + timedelta(minutes=minutes)
    monkeypatch.setattr(routes, "utcnow", lambda: when)
    return when


def _session(s: School, session_id: str) -> LiveSession:
    with s.kalpla.db.session() as db:
        found = db.get(LiveSession, session_id)
        assert found is not None
        db.expunge(found)
        return found


def _notify(s: School, event: str, path: str, at: datetime) -> Any:
    return s.client.post("/api/v1/streaming/mediamtx/events",
                         json={"event": event, "path": path, "occurred_at": at.isoformat()},
                         headers={"X-Kalpla-Streaming-Secret": HOOK_SECRET})


def _auth(s: School, action: str, path: str, **fields: str) -> int:
    body = {"user": "", "password": "", "token": "", "ip": "203.0.113.7", "action": action,
            "path": path, "protocol": "rtmp", "id": None, "query": "", **fields}
    return s.client.post(f"/api/v1/streaming/mediamtx/auth?secret={HOOK_SECRET}",
                         json=body).status_code


# --- rtmp -------------------------------------------------------------------------------------

def test_a_courses_sessions_share_one_path_one_live_at_a_time(make_app, monkeypatch):
    # Tokens signed on the test's clock (hours ago) must still be unexpired on the real one.
    s = school(make_app, "rtmp", {"channel_scope": "course", "playback_token_ttl": 86400})
    first = s.session_id
    second = s.schedule(title="Second class")

    _at(monkeypatch, 0)
    a = ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    _at(monkeypatch, 1)
    b = ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
    assert a == b  # one path, one key
    path = urlsplit(a["ingest_endpoint"]).path.lstrip("/")
    with s.kalpla.db.session() as db:
        (channel,) = db.scalars(select(Channel)).all()
        assert (channel.course_id, channel.rtmp_path) == (s.course_id, path)
    assert path not in (f"live/{first}", f"live/{second}")
    assert _session(s, first).channel_id == _session(s, second).channel_id == channel.id

    # The first class takes the channel back and goes live on it.
    _at(monkeypatch, 2)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    assert _auth(s, "publish", path, password=a["stream_key"]) == 200
    assert ok(_notify(s, "ready", path, _at(monkeypatch, 5))) == {"applied": True}
    assert (_session(s, first).status, _session(s, second).status) == ("live", "scheduled")

    # Meanwhile the second is refused the channel, and has nothing to watch yet.
    _at(monkeypatch, 10)
    body = problem(s.post(f"/sessions/{second}/broadcast", s.instructor), 409)
    assert body["type"] == "urn:kalpla:problem:channel-busy" and body["session_id"] == first
    problem(s.post(f"/sessions/{second}/rotate-key", s.admin), 409)
    assert problem(s.post(f"/sessions/{second}/playback", s.enrolled), 409)["type"] == \
        "urn:kalpla:problem:not-on-air"

    # Readers of the path need a token of the session on it now.
    token = ok(s.post(f"/sessions/{first}/playback", s.enrolled))["token"]
    assert _auth(s, "read", path, query=f"jwt={token}") == 200
    other = rtmp_token(s.kalpla.settings.secret_key, session_id=second, path=path,
                       viewer_id=s.enrolled.id, now=T0 + timedelta(minutes=10), ttl=86400)
    assert _auth(s, "read", path, query=f"jwt={other.token}") == 403

    # The first ends; the second claims the channel and goes live.
    assert ok(_notify(s, "not_ready", path, _at(monkeypatch, 50))) == {"applied": True}
    _at(monkeypatch, 60)
    assert ok(s.post(f"/sessions/{second}/broadcast", s.instructor))["stream_key"] == \
        a["stream_key"]
    assert _auth(s, "read", path, query=f"jwt={token}") == 403  # the first's token
    # A late notification of the first stream (it happened before the claim) is the first's.
    late = _notify(s, "not_ready", path, T0 + timedelta(minutes=50, seconds=10))
    assert ok(late) == {"applied": False}
    assert _session(s, second).status == "scheduled"
    assert ok(_notify(s, "ready", path, _at(monkeypatch, 65))) == {"applied": True}
    assert ok(_notify(s, "not_ready", path, _at(monkeypatch, 95))) == {"applied": True}

    # Each has its own recording: the path's window of its own class.
    done = {sid: _session(s, sid) for sid in (first, second)}
    assert [(d.status, d.started_at, d.ended_at) for d in done.values()] == [
        ("ended", T0 + timedelta(minutes=5), T0 + timedelta(minutes=50)),
        ("ended", T0 + timedelta(minutes=65), T0 + timedelta(minutes=95))]
    with s.kalpla.db.session() as db:
        keys = {f.id: f.storage_key for f in db.scalars(select(StoredFile))}
    assert set(keys) == {d.recording_file_id for d in done.values()}
    assert keys[done[first].recording_file_id] != keys[done[second].recording_file_id]
    assert all(f"path={path.replace('/', '%2F')}" in key for key in keys.values())


def test_concurrent_first_broadcasts_of_a_courses_sessions_make_one_channel(make_app):
    import threading

    s = school(make_app, "rtmp", {"channel_scope": "course"})
    sessions = [s.session_id, *(s.schedule(title=f"Class {n}") for n in range(3))]
    results: list[Any] = []
    barrier = threading.Barrier(len(sessions))

    def broadcast(session_id: str) -> None:
        client = s.app.test_client()
        barrier.wait()
        results.append(client.post(f"/api/v1/streaming/sessions/{session_id}/broadcast",
                                   headers=s.auth(s.instructor)))

    threads = [threading.Thread(target=broadcast, args=(sid,)) for sid in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * len(sessions)
    assert len({r.get_json()["stream_key"] for r in results}) == 1
    with s.kalpla.db.session() as db:
        assert db.scalar(select(func.count()).select_from(Channel)) == 1


def test_stopping_a_session_that_lost_the_channel_leaves_the_stream_alone(make_app,
                                                                          monkeypatch):
    from streaming_aws import local_server

    with local_server() as api:
        s = school(make_app, "rtmp", {"channel_scope": "course", "rtmp_api_url": api.base})
        first = s.session_id
        second = s.schedule(title="Second class")
        _at(monkeypatch, 0)
        ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
        _at(monkeypatch, 1)
        ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
        assert ok(s.post(f"/sessions/{first}/stop", s.instructor))["status"] == "ended"
        assert api.requests == []  # the channel is the second's: nobody was kicked
        assert _session(s, second).status == "scheduled"


def test_other_courses_have_channels_of_their_own(make_app):
    s = school(make_app, "rtmp", {"channel_scope": "course"})
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    course = ok(s.client.post("/api/v1/courses", json={"slug": "live-102", "title": "Two"},
                              headers=s.auth(s.instructor)), 201)
    s.course_id = course["id"]
    s.schedule(title="Elsewhere")
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    with s.kalpla.db.session() as db:
        assert db.scalar(select(func.count()).select_from(Channel)) == 2


def test_by_default_each_session_has_a_channel_of_its_own(make_app):
    plain = school(make_app, "rtmp")
    body = ok(plain.post(f"/sessions/{plain.session_id}/broadcast", plain.instructor))
    assert body["ingest_endpoint"].endswith(f"/live/{plain.session_id}")
    assert _session(plain, plain.session_id).channel_id is None


# --- ivs --------------------------------------------------------------------------------------

NOWHERE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing")):
        monkeypatch.setenv(name, value)


@pytest.fixture
def ivs(make_app: Any) -> Iterator[tuple[School, Stubber]]:
    s = school(make_app, "ivs", {"channel_scope": "course"}, aws_region="us-east-1",
               aws_endpoint_url=NOWHERE)
    with s.app.app_context():
        client = s.kalpla.providers.get("streaming", "ivs", s.app).client
    with Stubber(client) as stub:
        yield s, stub


def _eventbridge(s: School, event: dict[str, Any]) -> Any:
    return s.client.post("/api/v1/streaming/webhooks/ivs", json=event,
                         headers={"X-Kalpla-Streaming-Secret": EVENTBRIDGE_SECRET})


def test_one_ivs_channel_per_course_and_events_follow_their_stream(ivs, monkeypatch):
    s, stub = ivs
    first = s.session_id
    second = s.schedule(title="Second class")
    arn = channel_arn("Course1")
    stub.add_response("import_playback_key_pair", key_pair_response(), None)
    stub.add_response("create_channel", channel_response(arn), {
        "name": f"kalpla-course-{s.course_id}", "latencyMode": "LOW", "authorized": True,
        "type": "STANDARD", "tags": {"kalpla:channel": _AnyId(), "kalpla:course": s.course_id,
                                     "kalpla:institution": s.school.id}})
    _at(monkeypatch, 0)
    a = ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    _at(monkeypatch, 1)
    assert ok(s.post(f"/sessions/{second}/broadcast", s.instructor)) == a  # no second channel
    _at(monkeypatch, 2)
    ok(s.post(f"/sessions/{first}/broadcast", s.instructor))
    stub.assert_no_pending_responses()

    start = stream_event(arn, "Stream Start", T0 + timedelta(minutes=5), stream_id="st-A")
    assert ok(_eventbridge(s, start)) == {"applied": True}
    assert _session(s, first).status == "live" and _session(s, first).stream_id == "st-A"
    grant = ok(s.post(f"/sessions/{first}/playback", s.enrolled))
    # A token is bound to the course's channel, which the next class takes over: it lasts
    # three minutes, not the institution's playback_token_ttl (300 s).
    exp = jwt.decode(grant["token"], options={"verify_signature": False})["exp"]
    assert exp == int((T0 + timedelta(minutes=2)).timestamp()) + COURSE_TOKEN_TTL
    assert datetime.fromisoformat(grant["expires_at"]).timestamp() == exp
    # Its end revokes its viewers' tokens (see test_streaming_revocation.py).
    stub.add_response("start_viewer_session_revocation", {}, {
        "channelArn": arn, "viewerId": s.enrolled.id,
        "viewerSessionVersionsLessThanOrEqualTo": viewer_version(_session(s, first))})
    ok(_eventbridge(s, stream_event(arn, "Stream End", T0 + timedelta(minutes=50),
                                    stream_id="st-A")))
    assert s.kalpla.jobs.wait(30)
    stub.assert_no_pending_responses()
    _at(monkeypatch, 60)
    ok(s.post(f"/sessions/{second}/broadcast", s.instructor))
    # A late repeat of the first stream's end, dated after the claim: its stream says whose.
    late = stream_event(arn, "Stream End", T0 + timedelta(minutes=70), stream_id="st-A")
    assert ok(_eventbridge(s, late)) == {"applied": False}
    assert _session(s, second).status == "scheduled"
    assert ok(_eventbridge(s, stream_event(arn, "Stream Start", T0 + timedelta(minutes=65),
                                           stream_id="st-B"))) == {"applied": True}
    assert _session(s, second).status == "live"
    assert _session(s, first).ended_at == T0 + timedelta(minutes=50)


class _AnyId:
    """Matches a 32-character id in a Stubber's expected parameters."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and len(other) == 32

    __hash__ = None  # type: ignore[assignment]


def test_channels_of_courses_that_are_gone_are_pruned(make_app):
    from kalpla_streaming.keys import PLAYBACK_KEY_PURPOSE, new_p384_key_pair, seal
    from kalpla_streaming.models import PlaybackKeyPair
    from kalpla_streaming.providers import ProviderContext
    from moto import mock_aws

    with mock_aws():
        s = school(make_app, "ivs", {"channel_scope": "course", "ivs_recording_bucket": None},
                   aws_region="us-east-1", aws_endpoint_url=None)
        pair = new_p384_key_pair()  # as if imported before: moto has no ImportPlaybackKeyPair
        with s.kalpla.db.session() as db:
            db.add(PlaybackKeyPair(
                institution_id=s.school.id, arn="arn:aws:ivs:us-east-1:123456789012:"
                "playback-key/K", public_key_pem=pair.public_pem,
                private_key_encrypted=seal(s.kalpla.settings.secret_key, PLAYBACK_KEY_PURPOSE,
                                           pair.private_pem)))
        ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
        with s.app.app_context():
            provider = s.kalpla.providers.get("streaming", "ivs", s.app)
            assert _session(s, s.session_id).channel_arn is None  # the course's, not its own
            with s.kalpla.db.session() as db:
                arn = db.scalars(select(Channel.channel_arn)).one() or ""
            channel = provider.client.get_channel(arn=arn)["channel"]
            assert channel["name"] == f"kalpla-course-{s.course_id}"
            assert channel["tags"]["kalpla:course"] == s.course_id

            def prune() -> list[str]:
                with s.kalpla.db.session() as db:
                    ctx = ProviderContext(session=db, settings={},
                                          secret_key=s.kalpla.settings.secret_key,
                                          config=s.app.extensions["kalpla_streaming"],
                                          now=utcnow())
                    return provider.prune_channels(ctx)

            assert prune() == []  # the course is there
            # A course's channel whose row is not to be seen, the course still there: what
            # a prune sees while a first broadcast has made the IVS channel and not yet
            # committed its row. Deleting it would leave the row with a dead channel.
            with s.kalpla.db.session() as db:
                db.delete(db.scalars(select(Channel)).one())
            assert prune() == []
            assert [c["arn"] for c in provider.client.list_channels()["channels"]] == [arn]
            with s.kalpla.db.session() as db:  # the course is deleted
                db.execute(delete(Course).where(Course.id == s.course_id))
            assert prune() == [arn]
            assert provider.client.list_channels()["channels"] == []
