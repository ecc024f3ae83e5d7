"""The self-hosted provider over HTTP: scheduling, broadcasting, playback, MediaMTX's
authentication and notifications as the media server makes them, attendance."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
from kalpla_streaming import routes
from kalpla_streaming.keys import RTMP_TOKEN_PURPOSE
from streaming_support import HOOK_SECRET, School, ok, problem, school

from kalpla_core.crypto import derive_key
from kalpla_core.db import utcnow

pytestmark = pytest.mark.plugins("streaming")


@pytest.fixture
def s(make_app: Any) -> School:
    return school(make_app, "rtmp", {"rtmp_ingest_url": "rtmp://media.school.test:1935",
                                     "rtmp_playback_url": "https://media.school.test:8888",
                                     "playback_token_ttl": 120})


def _auth(s: School, action: str, path: str | None = None, **fields: str) -> Any:
    """MediaMTX's authHTTPAddress request, as the media server sends it."""
    body = {"user": "", "password": "", "token": "", "ip": "203.0.113.7", "action": action,
            "path": path if path is not None else f"live/{s.session_id}",
            "protocol": "rtmp" if action == "publish" else "hls",
            "id": None, "query": "", **fields}
    return s.client.post(f"/api/v1/streaming/mediamtx/auth?secret={HOOK_SECRET}", json=body)


def _notify(s: School, event: str, at: Any = None, secret: str = HOOK_SECRET,
            path: str | None = None) -> Any:
    body: dict[str, Any] = {"event": event, "path": path or f"live/{s.session_id}"}
    if at is not None:
        body["occurred_at"] = at.isoformat()
    return s.client.post("/api/v1/streaming/mediamtx/events", json=body,
                         headers={"X-Kalpla-Streaming-Secret": secret})


def _token(s: School, user: Any) -> str:
    body = ok(s.post(f"/sessions/{s.session_id}/playback", user))
    return body["token"]


# --- scheduling and listing -------------------------------------------------------------------

def test_a_live_lesson_schedules_a_session_listed_for_its_students_and_instructors(s):
    for user in (s.enrolled, s.instructor):
        items = ok(s.get("/sessions", user))["items"]
        assert [i["id"] for i in items] == [s.session_id]
        assert items[0]["status"] == "scheduled" and items[0]["lesson_id"] == s.lesson_id
        assert "stream_key" not in items[0] and "ingest_endpoint" not in items[0]
    assert ok(s.get("/sessions", s.student))["items"] == []
    assert ok(s.get("/sessions", s.outsider))["items"] == []
    problem(s.get("/sessions", None), 401)


def test_upcoming_sessions_are_paginated_soonest_first(s):
    first = s.session_id
    later = s.schedule(utcnow() + timedelta(days=2), title="Later")
    sooner = s.schedule(utcnow() + timedelta(minutes=10), title="Sooner")
    s.schedule(utcnow() - timedelta(days=2), minutes=30, title="Past")  # over: not listed
    page = ok(s.get("/sessions?limit=2", s.enrolled))
    assert [i["id"] for i in page["items"]] == [sooner, first]
    rest = ok(s.get(f"/sessions?limit=2&cursor={page['next_cursor']}", s.enrolled))
    assert [i["id"] for i in rest["items"]] == [later] and rest["next_cursor"] is None


def test_rescheduling_the_lesson_moves_the_session(s):
    starts = utcnow() + timedelta(days=3)
    lesson = s.client.get(f"/api/v1/lessons/{s.lesson_id}", headers=s.auth(s.instructor))
    r = s.client.patch(f"/api/v1/lessons/{s.lesson_id}", json={"data": {
        "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(hours=1)).isoformat()}},
        headers={**s.auth(s.instructor), "If-Match": lesson.headers["ETag"]})
    ok(r)
    assert s.live().scheduled_start == starts


def test_a_live_lesson_needs_a_valid_schedule(s):
    module = ok(s.client.post(f"/api/v1/courses/{s.course_id}/modules", json={"title": "M"},
                              headers=s.auth(s.instructor)), 201)
    now = utcnow()
    r = s.client.post(f"/api/v1/modules/{module['id']}/lessons", json={
        "title": "Backwards", "kind": "live",
        "data": {"starts_at": now.isoformat(), "ends_at": (now - timedelta(1)).isoformat()}},
        headers=s.auth(s.instructor))
    assert "ends_at" in problem(r, 422)["errors"]["data"]


def test_session_detail_shows_staff_where_it_goes_and_hides_it_from_the_rest(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    staff = ok(s.get(f"/sessions/{s.session_id}", s.instructor))
    assert staff["ingest_endpoint"] == f"rtmp://media.school.test:1935/live/{s.session_id}"
    student = ok(s.get(f"/sessions/{s.session_id}", s.enrolled))
    assert student["status"] == "scheduled" and "ingest_endpoint" not in student
    assert not any("sk_" in str(v) for v in student.values())
    problem(s.get(f"/sessions/{s.session_id}", s.student), 404)
    problem(s.get(f"/sessions/{s.session_id}", s.outsider), 404)


# --- broadcasting -----------------------------------------------------------------------------

def test_only_the_instructors_and_admins_get_the_stream_key(s, caplog):
    caplog.set_level(logging.DEBUG)
    body = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    key = body["stream_key"]
    assert key.startswith("sk_") and len(key) > 40
    assert body["ingest_endpoint"] == f"rtmp://media.school.test:1935/live/{s.session_id}"
    assert body["publish_url"] == f"{body['ingest_endpoint']}?user=kalpla&pass={key}"
    # The same key again, for the admin too; encrypted at rest.
    assert ok(s.post(f"/sessions/{s.session_id}/broadcast", s.admin))["stream_key"] == key
    assert key not in (s.live().stream_key_encrypted or "")
    problem(s.post(f"/sessions/{s.session_id}/broadcast", s.mentor), 403)
    for user in (s.enrolled, s.student):
        problem(s.post(f"/sessions/{s.session_id}/broadcast", user), 403)
    problem(s.post(f"/sessions/{s.session_id}/broadcast", None), 401)
    problem(s.post(f"/sessions/{s.session_id}/broadcast", s.outsider), 404)
    assert _auth(s, "publish", password=key).status_code == 200
    assert key not in caplog.text


def test_rotating_the_key_retires_the_old_one(s):
    old = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))["stream_key"]
    new = ok(s.post(f"/sessions/{s.session_id}/rotate-key", s.instructor))["stream_key"]
    assert new != old
    assert _auth(s, "publish", password=old).status_code == 403
    assert _auth(s, "publish", password=new).status_code == 200
    problem(s.post(f"/sessions/{s.session_id}/rotate-key", s.enrolled), 403)


def test_stopping_ends_the_session_and_refuses_the_publisher(s):
    key = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))["stream_key"]
    ok(_notify(s, "ready"))
    problem(s.post(f"/sessions/{s.session_id}/stop", s.enrolled), 403)
    body = ok(s.post(f"/sessions/{s.session_id}/stop", s.instructor))
    assert body["status"] == "ended" and body["ended_at"] is not None
    assert ok(s.post(f"/sessions/{s.session_id}/stop", s.instructor))["ended_at"] == \
        body["ended_at"]
    assert _auth(s, "publish", password=key).status_code == 403
    problem(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor), 409)


# --- playback ---------------------------------------------------------------------------------

def test_an_enrolled_student_gets_a_token_bound_to_them(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    before = utcnow()
    body = ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))
    url = urlparse(body["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == \
        f"https://media.school.test:8888/live/{s.session_id}/index.m3u8"
    assert parse_qs(url.query)["jwt"] == [body["token"]]
    key = derive_key(s.kalpla.settings.secret_key, RTMP_TOKEN_PURPOSE)
    claims = jwt.decode(body["token"], key, algorithms=["HS256"], audience="kalpla-streaming")
    assert claims["sub"] == s.enrolled.id and claims["sid"] == s.session_id
    assert claims["path"] == f"live/{s.session_id}"
    assert int(before.timestamp()) + 119 <= claims["exp"] <= int(utcnow().timestamp()) + 120
    # Staff watch too.
    ok(s.post(f"/sessions/{s.session_id}/playback", s.instructor))
    ok(s.post(f"/sessions/{s.session_id}/playback", s.admin))


def test_playback_is_refused_to_everyone_else(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    assert problem(s.post(f"/sessions/{s.session_id}/playback", s.student), 403)["type"] == \
        "urn:kalpla:problem:not-enrolled"
    problem(s.post(f"/sessions/{s.session_id}/playback", None), 401)
    problem(s.post(f"/sessions/{s.session_id}/playback", s.outsider), 404)


def test_playback_waits_for_the_channel(s):
    problem(s.post(f"/sessions/{s.session_id}/playback", s.enrolled), 409)


# --- MediaMTX authentication ------------------------------------------------------------------

def test_media_server_lets_in_exactly_the_right_publishers_and_readers(s):
    key = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))["stream_key"]
    token = _token(s, s.enrolled)
    allowed = [
        dict(action="publish", user="kalpla", password=key),
        dict(action="publish", query=f"user=kalpla&pass={key}"),
        dict(action="publish", query=f"key={key}"),
        dict(action="read", query=f"jwt={token}"),
        dict(action="read", query=f"token={token}"),
        dict(action="read", token=token),
    ]
    for fields in allowed:
        assert _auth(s, **fields).status_code == 200, fields
    refused = [
        dict(action="publish", password=key[:-1] + ("A" if key[-1] != "A" else "B")),
        dict(action="publish", password=token),  # a viewer cannot publish
        dict(action="publish", query=f"jwt={token}"),
        dict(action="read", password=key),  # the key is no playback token
        dict(action="read", query="jwt=not-a-token"),
        dict(action="playback", query=f"jwt={token}"),  # no recording while scheduled
        dict(action="api", user="kalpla", password=key),
        dict(action="metrics", query=f"jwt={token}"),
        dict(action="publish", path="live/unknown", password=key),
        dict(action="read", path="live/unknown", query=f"jwt={token}"),
        dict(action="publish", path=f"other/{s.session_id}", password=key),
    ]
    for fields in refused:
        r = _auth(s, **fields)
        assert r.status_code == 403, fields
        assert r.content_type == "application/problem+json"
    # No credentials at all: 401, so the client is asked for them.
    assert _auth(s, "publish").status_code == 401
    assert _auth(s, "read").status_code == 401


def test_a_token_for_another_session_or_expired_is_refused(s, monkeypatch):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    first = s.session_id
    token = _token(s, s.enrolled)
    s.schedule(title="Second")
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    assert _auth(s, "read", query=f"jwt={token}").status_code == 403
    assert _auth(s, "read", path=f"live/{first}", query=f"jwt={token}").status_code == 200
    # Expired: signed two minutes back with a 120 s lifetime.
    monkeypatch.setattr(routes, "utcnow", lambda: utcnow() - timedelta(seconds=125))
    stale = _token(s, s.enrolled)
    monkeypatch.undo()
    assert _auth(s, "read", query=f"jwt={stale}").status_code == 403


def test_a_viewer_who_lost_their_seat_is_refused_even_with_a_token(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    token = _token(s, s.enrolled)
    assert _auth(s, "read", query=f"jwt={token}").status_code == 200
    enrollment = ok(s.client.get("/api/v1/me/enrollments", headers=s.auth(s.enrolled)))
    (mine,) = [e for e in enrollment["items"] if e["course_id"] == s.course_id]
    ok(s.client.delete(f"/api/v1/enrollments/{mine['id']}", headers=s.auth(s.enrolled)))
    assert _auth(s, "read", query=f"jwt={token}").status_code == 403


def test_the_auth_callback_honours_its_secret_in_the_query_when_set(make_app):
    s = school(make_app, "rtmp")
    key = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))["stream_key"]
    body = {"action": "publish", "path": f"live/{s.session_id}", "password": key}
    assert s.client.post("/api/v1/streaming/mediamtx/auth?secret=wrong",
                         json=body).status_code == 401
    assert s.client.post(f"/api/v1/streaming/mediamtx/auth?secret={HOOK_SECRET}",
                         json=body).status_code == 200


# --- notifications ----------------------------------------------------------------------------

def test_ready_and_not_ready_move_the_session_once(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0)
    end = start + timedelta(minutes=50)
    assert ok(_notify(s, "ready", start)) == {"applied": True}
    assert s.live().status == "live" and s.live().started_at == start
    assert ok(_notify(s, "ready", start)) == {"applied": False}
    assert ok(_notify(s, "not_ready", end)) == {"applied": True}
    live = s.live()
    assert (live.status, live.started_at, live.ended_at) == ("ended", start, end)
    for event, at in (("not_ready", end), ("ready", start), ("ready", end),
                      ("not_ready", end + timedelta(minutes=5))):
        assert ok(_notify(s, event, at)) == {"applied": False}
    live = s.live()
    assert (live.status, live.started_at, live.ended_at) == ("ended", start, end)


def test_reordered_notifications_end_in_the_same_state(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0)
    end = start + timedelta(minutes=50)
    ok(_notify(s, "not_ready", end))
    ok(_notify(s, "ready", start))
    live = s.live()
    assert (live.status, live.started_at, live.ended_at) == ("ended", start, end)


def test_notifications_need_the_shared_secret(s):
    problem(_notify(s, "ready", secret="wrong"), 401)
    problem(s.client.post("/api/v1/streaming/mediamtx/events",
                          json={"event": "ready", "path": f"live/{s.session_id}"}), 401)
    assert s.live().status == "scheduled"
    problem(_notify(s, "ready", path="live/unknown"), 404)


# --- attendance -------------------------------------------------------------------------------

def _at(monkeypatch: Any, when: Any) -> None:
    monkeypatch.setattr(routes, "utcnow", lambda: when)


def _progress(s: School, user: Any) -> dict[str, Any]:
    body = ok(s.client.get(f"/api/v1/courses/{s.course_id}/progress", headers=s.auth(user)))
    (line,) = [ln for ln in body["lessons"] if ln["lesson_id"] == s.lesson_id]
    return line["progress"] or {}


def _watch(s: School, monkeypatch: Any, user: Any, start: Any, seconds: int) -> None:
    """Playback at ``start``, then a heartbeat every 30 s for ``seconds``."""
    _at(monkeypatch, start)
    ok(s.post(f"/sessions/{s.session_id}/playback", user))
    for t in range(30, seconds + 1, 30):
        _at(monkeypatch, start + timedelta(seconds=t))
        ok(s.post(f"/sessions/{s.session_id}/heartbeat", user))


def test_watching_enough_of_the_live_time_completes_the_lesson(s, monkeypatch):
    other = s.factories.user(roles={s.school: ["student"]})
    ok(s.client.post(f"/api/v1/courses/{s.course_id}/enrollments", headers=s.auth(other)), 201)
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0) - timedelta(hours=2)
    ok(_notify(s, "ready", start))
    _watch(s, monkeypatch, s.enrolled, start, 40 * 60)  # 40 of 60 minutes: 67 %
    _watch(s, monkeypatch, other, start, 30 * 60)  # 50 %
    assert _progress(s, s.enrolled).get("completed") is not True  # not ended yet
    ok(_notify(s, "not_ready", start + timedelta(minutes=60)))
    done = _progress(s, s.enrolled)
    assert done["completed"] is True and done["completed_by"] == "plugin:streaming"
    assert _progress(s, other).get("completed") is not True
    rows = {a["user_id"]: a for a in
            ok(s.get(f"/sessions/{s.session_id}/attendance", s.instructor))["items"]}
    assert rows[s.enrolled.id]["live_seconds"] == 40 * 60
    assert rows[s.enrolled.id]["completed_at"] is not None
    assert rows[other.id]["live_seconds"] == 30 * 60 and rows[other.id]["completed_at"] is None

    # The other student catches up on the recording: 6 more minutes reach 60 %.
    _watch(s, monkeypatch, other, start + timedelta(hours=1, minutes=30), 6 * 60)
    assert _progress(s, other)["completed"] is True
    rows = {a["user_id"]: a for a in
            ok(s.get(f"/sessions/{s.session_id}/attendance", s.admin))["items"]}
    assert rows[other.id]["recording_seconds"] == 6 * 60


def test_gaps_and_rapid_heartbeats_earn_nothing_extra(s, monkeypatch):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0)
    _at(monkeypatch, start)
    ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))
    for t in (1, 2, 3, 30, 600, 630):  # a gap of 570 s is not counted
        _at(monkeypatch, start + timedelta(seconds=t))
        body = ok(s.post(f"/sessions/{s.session_id}/heartbeat", s.enrolled))
    assert body["live_seconds"] == 30 + 30
    assert body["joins"] == 1


def test_attendance_share_is_a_setting_and_the_list_is_for_staff(make_app, monkeypatch):
    s = school(make_app, "rtmp", {"attendance_percent": 25})
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0) - timedelta(hours=2)
    ok(_notify(s, "ready", start))
    _watch(s, monkeypatch, s.enrolled, start, 15 * 60)
    ok(_notify(s, "not_ready", start + timedelta(minutes=60)))
    assert _progress(s, s.enrolled)["completed"] is True
    for user in (s.enrolled, s.mentor):
        problem(s.get(f"/sessions/{s.session_id}/attendance", user), 403)
    problem(s.post(f"/sessions/{s.session_id}/heartbeat", s.student), 403)


# --- enablement -------------------------------------------------------------------------------

def test_disabled_for_the_institution_everything_answers_404(s):
    key = ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))["stream_key"]
    token = _token(s, s.enrolled)
    admin_headers = s.factories.auth(s.admin, s.school)
    r = s.client.delete("/api/v1/institutions/school/plugins/streaming", headers=admin_headers)
    assert r.status_code == 204
    for path in ("/sessions", f"/sessions/{s.session_id}"):
        problem(s.get(path, s.enrolled), 404)
    for path in ("broadcast", "playback", "heartbeat", "stop"):
        problem(s.post(f"/sessions/{s.session_id}/{path}", s.instructor), 404)
    assert _auth(s, "publish", password=key).status_code == 403
    assert _auth(s, "read", query=f"jwt={token}").status_code == 403
    problem(_notify(s, "ready"), 404)


# --- sessions follow their lessons ------------------------------------------------------------

def test_a_lesson_no_longer_live_cancels_its_session(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    etag = s.client.get(f"/api/v1/lessons/{s.lesson_id}",
                        headers=s.auth(s.instructor)).headers["ETag"]
    ok(s.client.patch(f"/api/v1/lessons/{s.lesson_id}", json={"kind": "text", "body": "Notes"},
                      headers={**s.auth(s.instructor), "If-Match": etag}))
    assert s.live().status == "cancelled"
    assert ok(s.get("/sessions", s.enrolled))["items"] == []
    problem(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor), 409)
    problem(s.post(f"/sessions/{s.session_id}/playback", s.enrolled), 409)
    assert _auth(s, "read", query="jwt=x").status_code == 403


def test_enabling_the_plugin_gives_existing_live_lessons_their_sessions(s):
    from kalpla_streaming.models import LiveSession

    with s.kalpla.db.session() as db:  # as if the lesson was made while the plugin was off
        db.delete(db.get(LiveSession, s.session_id))
    admin = s.factories.auth(s.admin, s.school)
    assert s.client.delete("/api/v1/institutions/school/plugins/streaming",
                           headers=admin).status_code == 204
    ok(s.client.put("/api/v1/institutions/school/plugins/streaming",
                    json={"settings": {"provider": "rtmp"}}, headers=admin))
    (item,) = ok(s.get("/sessions", s.enrolled))["items"]
    assert item["lesson_id"] == s.lesson_id and item["status"] == "scheduled"


def test_lists_run_a_bounded_number_of_queries(s, monkeypatch):
    from kalpla_core.testing import count_queries

    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))

    def counts() -> tuple[int, int]:
        with count_queries(s.kalpla.db.engine) as upcoming:
            ok(s.get("/sessions", s.enrolled))
        with count_queries(s.kalpla.db.engine) as attendees:
            ok(s.get(f"/sessions/{s.session_id}/attendance", s.instructor))
        return upcoming.count, attendees.count

    few = counts()
    for i in range(6):
        s.schedule(utcnow() + timedelta(hours=2 + i), title=f"More {i}")
    busiest = s.session_id
    for _ in range(6):
        viewer = s.factories.user(roles={s.school: ["student"]})
        ok(s.client.post(f"/api/v1/courses/{s.course_id}/enrollments",
                         headers=s.auth(viewer)), 201)
        ok(s.post(f"/sessions/{busiest}/broadcast", s.instructor))
        ok(s.post(f"/sessions/{busiest}/playback", viewer))
    s.session_id = busiest
    assert counts() == few


def test_after_the_end_playback_is_the_recording(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    live_token = _token(s, s.enrolled)
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    ok(_notify(s, "ready", start))
    ok(_notify(s, "not_ready", start + timedelta(minutes=45)))
    session = ok(s.get(f"/sessions/{s.session_id}", s.enrolled))
    file_id = session["recording_file_id"]
    assert file_id and session["has_recording"] is True
    body = ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))
    assert body["recording_file_id"] == file_id and body["token"] is None
    # The recording is the playback server's window of the session, from start to end.
    url = urlparse(body["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == "http://localhost:9996/get"
    query = parse_qs(url.query)
    jwt_value = query.pop("jwt")[0]
    assert query == {"path": [f"live/{s.session_id}"], "start": [start.strftime(
        "%Y-%m-%dT%H:%M:%SZ")], "duration": ["2700"], "format": ["mp4"]}
    assert _auth(s, "playback", query=url.query).status_code == 200
    # The playback server's list of the path, with the link's token.
    assert _auth(s, "playback", query=f"path=live/{s.session_id}&jwt={jwt_value}") \
        .status_code == 200
    # Another window, another path, a live viewer's token: refused.
    other = url.query.replace("duration=2700", "duration=9000")
    assert _auth(s, "playback", query=other).status_code == 403
    assert _auth(s, "playback", path="live/elsewhere", query=url.query).status_code == 403
    assert _auth(s, "playback", query=f"jwt={live_token}").status_code == 403
    assert _auth(s, "read", query=f"jwt={jwt_value}").status_code == 403
    problem(s.post(f"/sessions/{s.session_id}/playback", s.student), 403)

    # The same link comes from the core's download of the file, for whoever reads the lesson.
    meta = ok(s.client.get(f"/api/v1/files/{file_id}", headers=s.auth(s.enrolled)))
    assert (meta["filename"], meta["content_type"], meta["purpose"], meta["lesson_id"]) == \
        ("Recording — Live Q&A.mp4", "video/mp4", "resource", s.lesson_id)
    link = ok(s.client.get(f"/api/v1/files/{file_id}/download", headers=s.auth(s.enrolled)))
    assert link["url"].startswith("http://localhost:9996/get?") and link["expires_in"] == 3600
    problem(s.client.get(f"/api/v1/files/{file_id}/download", headers=s.auth(s.student)), 403)
    problem(s.client.get(f"/api/v1/files/{file_id}/download", headers=s.auth(None)), 401)
    # A student of another institution: refused (the core's file routes answer 403 here).
    assert s.client.get(f"/api/v1/files/{file_id}/download",
                        headers=s.auth(s.outsider)).status_code in (403, 404)

    # Repeated notifications make no second file; deleting the file ends its links.
    ok(_notify(s, "not_ready", start + timedelta(minutes=45)))
    assert s.live().recording_file_id == file_id
    etag = {"If-Match": s.client.get(f"/api/v1/files/{file_id}",
                                     headers=s.auth(s.instructor)).headers.get("ETag", "*")}
    r = s.client.delete(f"/api/v1/files/{file_id}", headers={**s.auth(s.instructor), **etag})
    assert r.status_code == 204, r.get_data(as_text=True)
    assert _auth(s, "playback", query=url.query).status_code == 403
    assert s.live().recording_file_id is None


def test_recordings_are_not_served_once_the_plugin_is_disabled(s):
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    ok(_notify(s, "ready", start))
    ok(_notify(s, "not_ready", start + timedelta(minutes=45)))
    url = urlparse(ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))["url"])
    assert _auth(s, "playback", query=url.query).status_code == 200
    r = s.client.delete("/api/v1/institutions/school/plugins/streaming",
                        headers=s.factories.auth(s.admin, s.school))
    assert r.status_code == 204
    assert _auth(s, "playback", query=url.query).status_code == 403
    problem(s.post(f"/sessions/{s.session_id}/playback", s.enrolled), 404)


def test_no_recording_when_the_institution_does_not_record(make_app):
    s = school(make_app, "rtmp", {"rtmp_record": False})
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    ok(_notify(s, "ready", start))
    ok(_notify(s, "not_ready", start + timedelta(minutes=30)))
    assert problem(s.post(f"/sessions/{s.session_id}/playback", s.enrolled), 409)["type"] == \
        "urn:kalpla:problem:recording-not-ready"


def test_a_recording_found_once_both_ends_are_known(s):
    """An end that comes before the start: the recording is made when the start comes."""
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    ok(_notify(s, "not_ready", start + timedelta(minutes=20)))
    assert s.live().recording_file_id is None
    ok(_notify(s, "ready", start))
    assert s.live().recording_file_id is not None


def test_the_recording_is_stated_from_the_playback_servers_list(make_app):
    from kalpla_streaming.providers.storage import RTMPRecordingStorage
    from kalpla_streaming.recordings import Window
    from streaming_aws import local_server

    with local_server() as server:
        s = school(make_app, "rtmp", {"rtmp_recording_url": server.base})
        start = utcnow().replace(microsecond=0) - timedelta(hours=2)
        server.files["/list"] = json.dumps([
            {"start": (start - timedelta(minutes=5)).isoformat(), "duration": 600.0,
             "url": f"{server.base}/get?x"}]).encode()
        storage = RTMPRecordingStorage(s.app)
        recorded = Window(server.base, f"live/{s.session_id}", start, 1200)
        found = storage.stat(recorded.key)
        assert found is not None and found.content_type == "video/mp4"
        # The playback server is asked with a token the auth callback takes for the list.
        asked = parse_qs(urlparse(server.requests[-1]).query)
        assert asked["path"] == [f"live/{s.session_id}"]
        assert storage.stat(Window(server.base, f"live/{s.session_id}",
                                   start + timedelta(hours=1), 600).key) is None
        assert storage.stat("not-a-recording-key") is None
        del server.files["/list"]  # MediaMTX answers 404 for a path without recordings
        assert storage.stat(recorded.key) is None


def test_concurrent_first_broadcasts_share_one_key(s):
    import threading

    results: list[Any] = []
    barrier = threading.Barrier(4)

    def broadcast() -> None:
        client = s.app.test_client()
        barrier.wait()
        results.append(client.post(f"/api/v1/streaming/sessions/{s.session_id}/broadcast",
                                   headers=s.auth(s.instructor)))

    threads = [threading.Thread(target=broadcast) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 4
    assert len({r.get_json()["stream_key"] for r in results}) == 1


def test_stopping_disconnects_the_publisher_through_mediamtx_api(make_app):
    import base64
    import json

    from streaming_aws import local_server

    with local_server() as api:
        s = school(make_app, "rtmp", {"rtmp_api_url": api.base})
        ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
        path = f"live/{s.session_id}"
        api.files["/v3/rtmpconns/list"] = json.dumps({"itemCount": 3, "pageCount": 1, "items": [
            {"id": "c-pub", "state": "publish", "path": path},
            {"id": "c-read", "state": "read", "path": path},
            {"id": "c-other", "state": "publish", "path": "live/someone-else"}]}).encode()
        api.files["/v3/rtmpsconns/list"] = json.dumps({"items": []}).encode()
        api.files["POST /v3/rtmpconns/kick/c-pub"] = b""
        assert ok(s.post(f"/sessions/{s.session_id}/stop", s.instructor))["status"] == "ended"
        assert [r for r in api.requests if r.startswith("POST")] == \
            ["POST /v3/rtmpconns/kick/c-pub"]
        # Kalpla calls the API with the institution's own credentials, which the auth
        # callback allows for the api action (and nobody else). Never with the hook secret:
        # rtmp_api_url is the institution's setting, and the hook secret authenticates every
        # institution's media server callbacks.
        sent = {base64.b64decode(a.split()[1]).decode() for a in api.authorizations}
        assert len(sent) == 1 and HOOK_SECRET not in next(iter(sent))
        user, password = next(iter(sent)).split(":")
        assert user == f"kalpla-{s.school.id}"
        assert _auth(s, "api", user=user, password=password).status_code == 200
        assert _auth(s, "api", user=user, password="guess").status_code == 403
        assert _auth(s, "api", user="admin", password=password).status_code == 403
        # One institution's credentials are not another's.
        assert _auth(s, "api", user=f"kalpla-{s.other.id}", password=password).status_code \
            == 403


def test_stop_answers_502_when_mediamtx_api_is_down(make_app):
    from streaming_aws import local_server

    with local_server() as api:
        s = school(make_app, "rtmp", {"rtmp_api_url": api.base})  # serves no API: 404s
        ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
        problem(s.post(f"/sessions/{s.session_id}/stop", s.instructor), 502)
        assert s.live().status == "scheduled"
