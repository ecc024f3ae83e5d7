"""Amazon IVS recordings as resources of their lesson: moto holds the IVS channel and the
recording bucket, laid out as IVS writes it; the playlists Kalpla serves are followed as a
player would, down to the segments' presigned URLs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kalpla_streaming import hls
from kalpla_streaming.keys import PLAYBACK_KEY_PURPOSE, new_p384_key_pair, recording_token, seal
from kalpla_streaming.models import LiveSession, PlaybackKeyPair
from sqlalchemy import func, select
from streaming_aws import recording_event, stream_event
from streaming_support import EVENTBRIDGE_SECRET, School, ok, problem, school

from kalpla_core.db import utcnow
from kalpla_core.storage.models import StoredFile

pytestmark = pytest.mark.plugins("streaming")

BUCKET = "school-recordings"
PREFIX = "ivs/v1/123456789012/AbCdEf/2026/11/26/12/0/Rec1"
HLS = "application/vnd.apple.mpegurl"
MASTER = b"""#EXTM3U
#EXT-X-VERSION:3
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720,CODECS="avc1.4D401F,mp4a.40.2"
720p30/playlist.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=480x270,CODECS="avc1.4D401E,mp4a.40.2"
360p30/playlist.m3u8
"""


def _variant(count: int) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    for n in range(count):
        lines += ["#EXTINF:10.0,", f"{n}.ts"]
    return ("\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n").encode()


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws() -> Iterator[None]:
    from moto import mock_aws

    with mock_aws():
        yield


CHANNEL = "arn:aws:ivs:us-east-1:123456789012:channel/AbCdEf"


def _school(make_app: Any) -> School:
    s = school(make_app, "ivs", {"ivs_recording_bucket": None}, aws_region="us-east-1",
               aws_endpoint_url=None, aws_max_attempts=1)
    # As if made before: moto has neither ImportPlaybackKeyPair nor recording configurations.
    pair = new_p384_key_pair()
    with s.kalpla.db.session() as db:
        db.add(PlaybackKeyPair(
            institution_id=s.school.id, arn="arn:aws:ivs:us-east-1:123456789012:playback-key/K",
            public_key_pem=pair.public_pem,
            private_key_encrypted=seal(s.kalpla.settings.secret_key, PLAYBACK_KEY_PURPOSE,
                                       pair.private_pem),
            recording_configuration_arn="arn:aws:ivs:us-east-1:123456789012:"
                                        "recording-configuration/Rc1",
            recording_bucket=BUCKET))
    return s


def _s3(s: School) -> Any:
    from kalpla_core.aws import aws_client

    return aws_client(s.kalpla, "s3")


def _write_recording(s: School, prefix: str = PREFIX) -> dict[str, bytes]:
    """The objects IVS writes for a recording with two renditions."""
    objects = {f"{prefix}/media/hls/master.m3u8": MASTER,
               f"{prefix}/events/recording-ended.json": b'{"recording_status": "end"}'}
    for rendition in ("720p30", "360p30"):
        objects[f"{prefix}/media/hls/{rendition}/playlist.m3u8"] = _variant(2)
        for n in range(2):
            objects[f"{prefix}/media/hls/{rendition}/{n}.ts"] = f"{rendition}-{n}".encode() * 50
    objects[f"{prefix}/media/thumbnails/thumb0.jpg"] = b"\xff\xd8thumb"
    client = _s3(s)
    client.create_bucket(Bucket=BUCKET)
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return objects


def _eventbridge(s: School, event: dict[str, Any]) -> Any:
    return s.client.post("/api/v1/streaming/webhooks/ivs", json=event,
                         headers={"X-Kalpla-Streaming-Secret": EVENTBRIDGE_SECRET})


def _ended_session(s: School) -> tuple[str, Any]:
    """Broadcast, go live for 45 minutes, end; the channel's ARN and the end."""
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    # moto's channel ids are random; IVS writes recordings under the channel's id.
    with s.kalpla.db.session() as db:
        live = db.get(LiveSession, s.session_id)
        assert live is not None and live.channel_arn is not None
        live.channel_arn = arn = CHANNEL
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    ok(_eventbridge(s, stream_event(arn, "Stream Start", start)))
    ok(_eventbridge(s, stream_event(arn, "Stream End", start + timedelta(minutes=45))))
    return arn, start + timedelta(minutes=45)


def _files_at(s: School, key: str) -> int:
    with s.kalpla.db.session() as db:
        return db.scalar(select(func.count()).select_from(StoredFile)
                         .where(StoredFile.storage_key == key)) or 0


def _local(url: str) -> str:
    """The path and query of a Kalpla URL, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _uris(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_recording_becomes_a_resource_of_the_lesson_once(make_app, aws):
    s = _school(make_app)
    objects = _write_recording(s)
    arn, end = _ended_session(s)
    event = recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)
    assert ok(_eventbridge(s, event)) == {"applied": True}
    file_id = s.live().recording_file_id
    assert file_id is not None
    meta = ok(s.client.get(f"/api/v1/files/{file_id}", headers=s.auth(s.instructor)))
    media = sum(len(body) for key, body in objects.items() if "/media/" in key)
    assert {k: meta[k] for k in ("provider", "purpose", "status", "lesson_id", "course_id",
                                 "filename", "content_type", "size")} == {
        "provider": "ivs-recording", "purpose": "resource", "status": "ready",
        "lesson_id": s.lesson_id, "course_id": s.course_id,
        "filename": "Recording — Live Q&A.m3u8", "content_type": HLS, "size": media}

    # Delivered again, or another "Recording End" of the same session: still one file.
    assert ok(_eventbridge(s, event)) == {"applied": False}
    again = recording_event(arn, end + timedelta(minutes=3), BUCKET, PREFIX)
    assert ok(_eventbridge(s, again)) == {"applied": False}
    assert _files_at(s, f"s3://{BUCKET}/{PREFIX}") == 1
    assert s.live().recording_file_id == file_id
    session = ok(s.get(f"/sessions/{s.session_id}", s.enrolled))
    assert (session["recording_file_id"], session["has_recording"]) == (file_id, True)


def test_enrolled_students_follow_the_recording_down_to_its_segments(make_app, aws):
    import requests

    s = _school(make_app)
    objects = _write_recording(s)
    arn, end = _ended_session(s)
    ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)))
    file_id = s.live().recording_file_id

    # The session's playback now points at the recording; so does the file's download.
    body = ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))
    assert body["recording_file_id"] == file_id and body["token"] is None
    base = s.kalpla.settings.base_url
    assert body["url"].startswith(f"{base}/api/v1/streaming/recordings/master.m3u8?token=")
    link = ok(s.client.get(f"/api/v1/files/{file_id}/download", headers=s.auth(s.enrolled)))
    assert link["url"].startswith(f"{base}/api/v1/streaming/recordings/master.m3u8?token=")

    master = s.client.get(_local(link["url"]))
    assert master.status_code == 200 and master.mimetype == HLS
    assert master.headers["Cache-Control"] == "private, no-store"
    variants = _uris(master.get_data(as_text=True))
    assert len(variants) == 2
    assert all(v.startswith(f"{base}/api/v1/streaming/recordings/") and "?token=" in v
               for v in variants)
    assert [urlsplit(v).path.rsplit("/", 2)[-2] for v in variants] == ["720p30", "360p30"]

    variant = s.client.get(_local(variants[0]))
    assert variant.status_code == 200
    text = variant.get_data(as_text=True)
    assert "#EXT-X-ENDLIST" in text and "#EXTINF:10.0," in text
    segments = _uris(text)
    assert len(segments) == 2
    for n, url in enumerate(segments):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert parts.scheme == "https" and BUCKET in f"{parts.netloc}{parts.path}"
        assert parts.path.endswith(f"{PREFIX}/media/hls/720p30/{n}.ts")
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
        # moto answers the presigned GET as S3 would.
        assert requests.get(url, timeout=5).content == \
            objects[f"{PREFIX}/media/hls/720p30/{n}.ts"]


def test_only_readers_of_the_lesson_get_the_recording(make_app, aws):
    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)
    ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)))
    file_id = s.live().recording_file_id
    download = f"/api/v1/files/{file_id}/download"
    ok(s.client.get(download, headers=s.auth(s.enrolled)))
    ok(s.client.get(download, headers=s.auth(s.instructor)))
    assert problem(s.client.get(download, headers=s.auth(s.student)), 403)["type"] == \
        "urn:kalpla:problem:not-enrolled"
    problem(s.client.get(download, headers=s.auth(None)), 401)
    assert s.client.get(download, headers=s.auth(s.outsider)).status_code in (403, 404)
    problem(s.post(f"/sessions/{s.session_id}/playback", s.student), 403)
    problem(s.post(f"/sessions/{s.session_id}/playback", None), 401)
    problem(s.post(f"/sessions/{s.session_id}/playback", s.outsider), 404)


def test_altered_expired_or_deleted_links_serve_nothing(make_app, aws):
    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)
    ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)))
    file_id = s.live().recording_file_id
    url = ok(s.client.get(f"/api/v1/files/{file_id}/download",
                          headers=s.auth(s.enrolled)))["url"]
    token = parse_qs(urlsplit(url).query)["token"][0]
    recordings = "/api/v1/streaming/recordings"
    problem(s.client.get(f"{recordings}/master.m3u8?token={token[:-2]}xx"), 403)
    problem(s.client.get(f"{recordings}/master.m3u8"), 422)
    problem(s.client.get(f"{recordings}/../master.m3u8?token={token}"), 404)
    # The master playlist's token is for the master playlist only.
    problem(s.client.get(f"{recordings}/1080p60/playlist.m3u8?token={token}"), 403)
    problem(s.client.get(f"{recordings}/720p30/0.ts?token={token}"), 404)  # not a playlist

    # Expired: a link's token lasts what the download asked (minutes for a playlist).
    key = f"s3://{BUCKET}/{PREFIX}"
    stale = recording_token(s.kalpla.settings.secret_key, key=key,
                            now=utcnow() - timedelta(minutes=10), ttl=300, name="master.m3u8")
    problem(s.client.get(f"{recordings}/master.m3u8?token={stale}"), 403)
    fresh = recording_token(s.kalpla.settings.secret_key, key=key, now=utcnow(), ttl=300,
                            name="master.m3u8")
    assert s.client.get(f"{recordings}/master.m3u8?token={fresh}").status_code == 200
    unbound = recording_token(s.kalpla.settings.secret_key, key=key, now=utcnow(), ttl=300)
    problem(s.client.get(f"{recordings}/master.m3u8?token={unbound}"), 403)

    # Deleted by the course's staff: the objects go with it, and its links stop working.
    assert s.client.delete(f"/api/v1/files/{file_id}",
                           headers=s.auth(s.instructor)).status_code == 204
    listed = _s3(s).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    assert listed.get("KeyCount", 0) == 0
    problem(s.client.get(_local(url)), 404)
    assert s.live().recording_file_id is None


def test_recording_links_serve_nothing_once_the_plugin_is_disabled(make_app, aws):
    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)
    ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)))
    url = ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))["url"]
    variants = _uris(ok_text(s.client.get(_local(url))))
    r = s.client.delete("/api/v1/institutions/school/plugins/streaming",
                        headers=s.factories.auth(s.admin, s.school))
    assert r.status_code == 204
    problem(s.client.get(_local(url)), 404)
    problem(s.client.get(_local(variants[0])), 404)


def test_a_renditions_link_cannot_renew_itself_through_the_master_playlist(make_app, aws):
    # The links inside a playlist last hours; were a rendition's token good for the master
    # playlist too, each fetch of it would hand out fresh hours, and a link would never end.
    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)
    ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)))
    file_id = s.live().recording_file_id
    url = ok(s.client.get(f"/api/v1/files/{file_id}/download",
                          headers=s.auth(s.enrolled)))["url"]
    variants = _uris(ok_text(s.client.get(_local(url))))
    token = parse_qs(urlsplit(variants[0]).query)["token"][0]
    recordings = "/api/v1/streaming/recordings"
    assert s.client.get(f"{recordings}/720p30/playlist.m3u8?token={token}").status_code == 200
    problem(s.client.get(f"{recordings}/master.m3u8?token={token}"), 403)
    problem(s.client.get(f"{recordings}/360p30/playlist.m3u8?token={token}"), 403)


def ok_text(response: Any) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.get_data(as_text=True))


def test_recordings_elsewhere_than_the_channels_folder_are_ignored(make_app, aws):
    """Deleting a recording's file deletes everything under its prefix: an event naming
    another bucket, another channel's folder or a folder above a recording is ignored."""
    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)
    _s3(s).create_bucket(Bucket="someone-elses")
    _s3(s).put_object(Bucket="someone-elses", Key=f"{PREFIX}/media/hls/master.m3u8", Body=MASTER)
    other = "ivs/v1/123456789012/Other/2026/11/26/12/0/Rec1"
    _write_recording(s, other)
    for bucket, prefix in (("someone-elses", PREFIX), (BUCKET, other),
                           (BUCKET, "ivs/v1/123456789012/AbCdEf"),
                           (BUCKET, "ivs/v1/123456789012/AbCdEf/2026/11"),
                           (BUCKET, f"{PREFIX}/media"),
                           (BUCKET, "ivs/v1/123456789012/AbCdEf/2026/11/26/12/../Rec1"),
                           (BUCKET, "ivs/v1/999999999999/AbCdEf/2026/11/26/12/0/Rec1"),
                           ([BUCKET], PREFIX), (BUCKET, [PREFIX]), (None, None)):
        event = recording_event(arn, end + timedelta(minutes=2), bucket, prefix)
        assert ok(_eventbridge(s, event)) == {"applied": False}, (bucket, prefix)
        assert s.live().recording_file_id is None
    assert ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET,
                                              f"/{PREFIX}/"))) == {"applied": True}
    assert _files_at(s, f"s3://{BUCKET}/{PREFIX}") == 1


def test_the_configured_bucket_counts_when_the_configuration_kept_none(make_app, aws):
    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)
    with s.kalpla.db.session() as db:  # a configuration made before its bucket was kept
        keys = db.scalar(select(PlaybackKeyPair))
        assert keys is not None
        keys.recording_bucket = None
    event = recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)
    assert ok(_eventbridge(s, event)) == {"applied": False}
    r = s.client.put("/api/v1/institutions/school/plugins/streaming",
                     headers=s.factories.auth(s.admin, s.school),
                     json={"settings": {"provider": "ivs", "ivs_recording_bucket": BUCKET}})
    assert r.status_code == 200, r.get_data(as_text=True)
    event = recording_event(arn, end + timedelta(minutes=3), BUCKET, PREFIX)
    assert ok(_eventbridge(s, event)) == {"applied": True}


def test_no_master_playlist_means_no_file(make_app, aws):
    s = _school(make_app)
    _s3(s).create_bucket(Bucket=BUCKET)
    arn, end = _ended_session(s)
    ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)))
    assert s.live().recording_file_id is None
    assert problem(s.post(f"/sessions/{s.session_id}/playback", s.enrolled), 409)["type"] == \
        "urn:kalpla:problem:recording-not-ready"


def test_an_unreadable_bucket_makes_the_event_come_again(make_app, aws, monkeypatch):
    from botocore.exceptions import EndpointConnectionError
    from kalpla_streaming.providers.storage import IVSRecordingStorage

    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)
    event = recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)

    def down(self: Any, key: str) -> Any:
        raise EndpointConnectionError(endpoint_url="https://s3.amazonaws.com")

    with monkeypatch.context() as patched:
        patched.setattr(IVSRecordingStorage, "stat", down)
        r = _eventbridge(s, event)
        assert problem(r, 503)["type"] == "urn:kalpla:problem:recording-unavailable"
    assert s.live().recording_file_id is None
    assert ok(_eventbridge(s, event)) == {"applied": True}  # the same event, delivered again
    assert s.live().recording_file_id is not None


def test_a_refused_oversized_playlist_closes_its_s3_body(make_app, monkeypatch):
    from kalpla_streaming.providers.storage import IVSRecordingStorage

    class Body:
        closed = False

        def read(self, size: int) -> bytes:
            return b"#" * size

        def close(self) -> None:
            self.closed = True

    body = Body()

    class Client:
        def get_object(self, **_: Any) -> dict[str, Any]:
            return {"Body": body}

    s = school(make_app, "ivs")
    monkeypatch.setattr(IVSRecordingStorage, "client", property(lambda self: Client()))
    with s.app.app_context():
        storage = s.kalpla.providers.get("storage", "ivs-recording", s.app)
        with pytest.raises(hls.PlaylistError, match="too large"):
            storage.playlist(f"s3://{BUCKET}/{PREFIX}", "master.m3u8")
    assert body.closed


# --- the playlist rewriting itself --------------------------------------------------------------

def _rewrite(text: str, directory: str = "") -> str:
    return hls.rewrite(text, directory, lambda name: f"P[{name}]", lambda name: f"O[{name}]")


def test_every_uri_is_replaced_attributes_included():
    text = ('#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n#EXT-X-MEDIA:TYPE=AUDIO,URI="audio/a.m3u8"\n'
            '#EXTINF:2.0,\n0.m4s\n\n#EXT-X-ENDLIST\n')
    assert _rewrite(text, "720p30") == (
        '#EXTM3U\n#EXT-X-MAP:URI="O[720p30/init.mp4]"\n'
        '#EXT-X-MEDIA:TYPE=AUDIO,URI="P[720p30/audio/a.m3u8]"\n'
        '#EXTINF:2.0,\nO[720p30/0.m4s]\n\n#EXT-X-ENDLIST\n')


@pytest.mark.parametrize("uri", ["https://elsewhere.test/0.ts", "/abs/0.ts", "../../../0.ts",
                                 "../../x.m3u8", "0.ts?x=1", "a b.ts"])
def test_uris_leaving_the_recording_make_the_playlist_invalid(uri):
    with pytest.raises(hls.PlaylistError):
        _rewrite(f"#EXTM3U\n#EXTINF:2.0,\n{uri}\n", "720p30")


def test_uris_are_resolved_inside_the_recording():
    assert hls.resolve("720p30", "../360p30/0.ts") == "360p30/0.ts"
    assert hls.resolve("", "720p30/playlist.m3u8") == "720p30/playlist.m3u8"


def test_a_playlist_must_be_one():
    with pytest.raises(hls.PlaylistError):
        _rewrite("<html>not a playlist</html>\n")
    assert hls.is_playlist_name("720p30/playlist.m3u8")
    assert not hls.is_playlist_name("../master.m3u8")
    assert not hls.is_playlist_name("720p30/0.ts")


def test_watching_the_recording_completes_the_lesson(make_app, aws, monkeypatch):
    from kalpla_streaming import routes

    s = _school(make_app)
    _write_recording(s)
    arn, end = _ended_session(s)  # 45 minutes live; 60 % is 27 minutes
    ok(_eventbridge(s, recording_event(arn, end + timedelta(minutes=2), BUCKET, PREFIX)))
    later = utcnow().replace(microsecond=0)
    monkeypatch.setattr(routes, "utcnow", lambda: later)
    assert ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))["recording_file_id"]
    for t in range(30, 27 * 60 + 1, 30):
        monkeypatch.setattr(routes, "utcnow", lambda t=t: later + timedelta(seconds=t))
        row = ok(s.post(f"/sessions/{s.session_id}/heartbeat", s.enrolled))
    assert row["recording_seconds"] == 27 * 60 and row["completed_at"] is not None
    progress = ok(s.client.get(f"/api/v1/courses/{s.course_id}/progress",
                               headers=s.auth(s.enrolled)))
    (line,) = [ln for ln in progress["lessons"] if ln["lesson_id"] == s.lesson_id]
    assert line["progress"]["completed"] is True
