"""The plugin's own pieces: deployment settings, institution settings, data hooks, tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from kalpla_streaming import recordings
from kalpla_streaming.keys import read_rtmp_token, rtmp_token
from kalpla_streaming.models import LiveSession
from kalpla_streaming.recordings import MAX_KEY, Window
from kalpla_streaming.settings import DEFAULT_SNS_CERT_URL, MAX_URL, DeploymentConfig
from streaming_support import ok, problem, school

from kalpla_core.db import utcnow

pytestmark = pytest.mark.plugins("streaming")

TOPIC_A = "arn:aws:sns:us-east-1:123456789012:ivs-events"
TOPIC_B = "arn:aws-cn:sns:cn-north-1:210987654321:ivs.events-2"


def test_deployment_settings_from_the_environment():
    config = DeploymentConfig.load(environ={
        "KALPLA_STREAMING_HOOK_SECRET": "h", "KALPLA_STREAMING_EVENTBRIDGE_SECRET": "e",
        "KALPLA_STREAMING_SNS_TOPIC_ARNS": f"{TOPIC_A}, {TOPIC_B}",
        "KALPLA_STREAMING_AWS_ATTEMPTS": "5"})
    assert (config.hook_secret, config.eventbridge_secret) == ("h", "e")
    assert config.sns_topic_arns == (TOPIC_A, TOPIC_B)
    assert DeploymentConfig.load(environ={}).sns_topic_arns == ()  # SNS closed
    assert config.aws_attempts == 5
    assert config.sns_cert_url_pattern == DEFAULT_SNS_CERT_URL
    # Overrides (create_app's "streaming" mapping) win over the environment.
    assert DeploymentConfig.load({"hook_secret": "o"},
                                 environ={"KALPLA_STREAMING_HOOK_SECRET": "h"}).hook_secret == "o"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("KALPLA_STREAMING_SNS_CERT_URL_PATTERN", "([", "SNS_CERT_URL_PATTERN"),
    ("KALPLA_STREAMING_AWS_ATTEMPTS", "0", "AWS_ATTEMPTS"),
    ("KALPLA_STREAMING_SNS_TOPIC_ARNS", f"{TOPIC_A},arn:a", "SNS_TOPIC_ARNS"),
    ("KALPLA_STREAMING_SNS_TOPIC_ARNS", "arn:aws:sns:us-east-1:12345:t", "SNS_TOPIC_ARNS"),
])
def test_invalid_deployment_settings_name_the_variable(variable, value, message):
    with pytest.raises(ValueError, match=message):
        DeploymentConfig.load(environ={variable: value})


def test_the_default_certificate_pattern_trusts_sns_hosts_only():
    import re

    for url in ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
                "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem"):
        assert re.match(DEFAULT_SNS_CERT_URL, url)
    for url in ("http://sns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com.evil.test/x.pem",
                "https://evil.test/sns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com@evil.test/x.pem"):
        assert not re.match(DEFAULT_SNS_CERT_URL, url)


def test_institution_settings_are_validated(make_app):
    s = school(make_app, "rtmp")
    admin = s.factories.auth(s.admin, s.school)
    r = s.client.put("/api/v1/institutions/school/plugins/streaming", headers=admin,
                     json={"settings": {"provider": "youtube", "attendance_percent": 0,
                                        "rtmp_ingest_url": "ftp://x"}})
    errors = problem(r, 422)["errors"]["settings"]
    assert {"provider", "attendance_percent", "rtmp_ingest_url"} <= set(errors)


def test_url_settings_are_urls_short_enough_for_the_keys_made_of_them(make_app):
    s = school(make_app, "rtmp")
    admin = s.factories.auth(s.admin, s.school)
    long = "http://media.school.test/" + "a" * 400
    r = s.client.put("/api/v1/institutions/school/plugins/streaming", headers=admin,
                     json={"settings": {"rtmp_recording_url": long, "rtmp_api_url": long,
                                        "rtmp_playback_url": "http://a b",
                                        "rtmp_ingest_url": "rtmp://x/?key=1",
                                        "ivs_recording_bucket": "Not_A_Bucket"}})
    errors = problem(r, 422)["errors"]["settings"]
    assert {"rtmp_recording_url", "rtmp_api_url", "rtmp_playback_url", "rtmp_ingest_url",
            "ivs_recording_bucket"} <= set(errors)
    longest = "http://media.school.test/" + "a" * (MAX_URL - 25)
    ok(s.client.put("/api/v1/institutions/school/plugins/streaming", headers=admin,
                    json={"settings": {"rtmp_recording_url": longest,
                                       "ivs_recording_bucket": "school.recordings-1"}}))
    # The longest recording key such a URL makes fits a file's storage key.
    live = LiveSession(id="a" * 32, title="t", started_at=utcnow() - timedelta(days=9999),
                       ended_at=utcnow())
    assert len(Window(longest, "live/" + "b" * 32, live.started_at, 10**9).key) <= MAX_KEY


def test_a_recording_key_too_long_for_its_column_is_not_kept():
    """Settings saved before URLs were limited: the recording is skipped, not a failure."""
    now = utcnow()
    live = LiveSession(id="a" * 32, title="t", started_at=now - timedelta(hours=1), ended_at=now)
    settings = {"rtmp_recording_url": "http://media.school.test/" + "a" * 450}
    assert recordings.add_rtmp(None, live, "live/x", settings) is None  # type: ignore[arg-type]
    assert live.recording_file_id is None


def test_rtmp_tokens_are_refused_when_tampered_or_expired():
    now = utcnow()
    token = rtmp_token("k" * 40, session_id="s1", path="live/s1", viewer_id="u1", now=now,
                       ttl=60).token
    assert read_rtmp_token("k" * 40, token)["sub"] == "u1"
    assert read_rtmp_token("other-secret" * 4, token) is None
    assert read_rtmp_token("k" * 40, token[:-2] + "xx") is None
    old = rtmp_token("k" * 40, session_id="s1", path="live/s1", viewer_id="u1",
                     now=now - timedelta(seconds=61), ttl=60).token
    assert read_rtmp_token("k" * 40, old) is None


def test_export_and_erase_cover_attendance(make_app):
    s = school(make_app, "rtmp")
    ok(s.post(f"/sessions/{s.session_id}/broadcast", s.instructor))
    ok(s.post(f"/sessions/{s.session_id}/playback", s.enrolled))
    pm = s.kalpla.plugins
    with s.kalpla.db.session() as db:
        sections: dict[str, Any] = dict(pm.call_each("kalpla_user_export", session=db,
                                                      user_id=s.enrolled.id))
        (row,) = sections["streaming"]["attendance"]
        assert row["session_id"] == s.session_id and row["joins"] == 1
        pm.call_each("kalpla_user_erase", session=db, user_id=s.enrolled.id)
        again = dict(pm.call_each("kalpla_user_export", session=db, user_id=s.enrolled.id))
        assert again["streaming"] == {"attendance": []}


def test_revision_s0002_downgrades_and_upgrades_again(make_app, empty_database_url):
    from sqlalchemy import inspect

    from kalpla_core import migrate

    kalpla = make_app(database_url=empty_database_url,
                      plugins=["streaming"]).extensions["kalpla"]
    migrate.upgrade(kalpla)
    assert migrate.differences(kalpla) == []
    migrate.downgrade(kalpla, "s0001")
    inspector = inspect(kalpla.db.engine)
    assert "streaming_channels" not in inspector.get_table_names()
    columns = {c["name"] for c in inspector.get_columns("streaming_sessions")}
    assert {"channel_id", "claimed_at", "stream_id", "recording_file_id"}.isdisjoint(columns)
    assert "recording_location" in columns
    migrate.upgrade(kalpla)
    assert migrate.differences(kalpla) == []


def test_revision_s0003_downgrades_and_upgrades_again(make_app, empty_database_url):
    from sqlalchemy import inspect

    from kalpla_core import migrate

    kalpla = make_app(database_url=empty_database_url,
                      plugins=["streaming"]).extensions["kalpla"]
    migrate.upgrade(kalpla)
    migrate.downgrade(kalpla, "s0002")
    columns = {c["name"] for c in inspect(kalpla.db.engine).get_columns(
        "streaming_playback_keys")}
    assert "recording_bucket" not in columns and "recording_configuration_arn" in columns
    migrate.upgrade(kalpla)
    assert migrate.differences(kalpla) == []
