"""The ``s3`` provider against moto: presigned POST uploads with their policy, confirmation
by ``head_object``, server-side encryption, presigned downloads, deletion; and the boto3
client factory. Nothing reaches AWS: fake credentials, ``mock_aws`` around every call."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from moto import mock_aws

from kalpla_core.aws import aws_client, new_client
from kalpla_core.config import ConfigError, load_settings
from kalpla_core.testing import Factories
from tests.courses.structure_support import World, create_course, enroll, ok, problem, world

REGION = "eu-west-1"
BUCKET = "kalpla-test-files"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 with a bucket, under fake credentials only."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                 "KALPLA_AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def _default_encryption(s3: Any, algorithm: str, key_id: str | None = None) -> None:
    """What S3 does to every new object since 2023 (SSE-S3) or a bucket's KMS default;
    moto applies a bucket's default encryption but ignores the fields of a POST upload."""
    rule: dict[str, Any] = {"SSEAlgorithm": algorithm}
    if key_id:
        rule["KMSMasterKeyID"] = key_id
    s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": rule}]})


def _s3_app(make_app: Any, **config: Any) -> Any:
    return make_app(plugins=[], storage="s3", s3_bucket=BUCKET, aws_region=REGION,
                    aws_endpoint_url=None, **config)


@pytest.fixture
def app(make_app: Any, s3: Any) -> Any:
    _default_encryption(s3, "AES256")
    return _s3_app(make_app)


def _ask(client: Any, w: World, course_id: str, data: bytes = VIDEO, **fields: Any) -> Any:
    body = {"course_id": course_id, "purpose": "video", "filename": "Week 1.mp4",
            "content_type": "video/mp4", "size": len(data), **fields}
    return client.post("/api/v1/files", json=body, headers=w.auth(w.instructor))


def _post(upload: dict[str, Any], data: bytes, **field_changes: str) -> requests.Response:
    """Send the file as a browser form would: the given fields first, the file last."""
    assert upload["method"] == "POST"
    fields = {**upload["fields"], **field_changes}
    return requests.post(upload["url"], data=fields, timeout=5,
                         files={"file": ("Week 1.mp4", data, fields["Content-Type"])})


def _confirm(client: Any, w: World, file_id: str) -> Any:
    return client.post(f"/api/v1/files/{file_id}/confirm", headers=w.auth(w.instructor))


def _policy(upload: dict[str, Any]) -> dict[str, Any]:
    policy = upload["fields"]["policy"]
    return json.loads(base64.b64decode(policy + "=" * (-len(policy) % 4)))


def _head(s3: Any, key: str) -> dict[str, Any] | None:
    try:
        return s3.head_object(Bucket=BUCKET, Key=key)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("404", "NoSuchKey")
        return None


def test_presigned_post_upload_confirm_download_delete(app, client, factories, s3):
    w = world(factories)
    course_id = create_course(client, w, publish=True)
    enroll(app, w.enrolled, course_id)

    asked = ok(_ask(client, w, course_id), 201)
    assert asked["provider"] == "s3" and asked["status"] == "pending"
    upload = asked["upload"]
    key = f"uploads/{w.school.id}/{asked['id']}"
    assert upload["method"] == "POST" and upload["expires_in"] == 900
    assert BUCKET in upload["url"] and upload["headers"] == {}
    assert upload["fields"]["key"] == key
    assert upload["fields"]["Content-Type"] == "video/mp4"
    assert upload["fields"]["x-amz-server-side-encryption"] == "AES256"
    assert upload["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"  # SigV4
    policy = _policy(upload)
    conditions = policy["conditions"]
    assert ["content-length-range", 1, len(VIDEO)] in conditions
    assert {"Content-Type": "video/mp4"} in conditions
    assert {"x-amz-server-side-encryption": "AES256"} in conditions
    assert {"key": key} in conditions and {"bucket": BUCKET} in conditions
    expiration = time.mktime(time.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ"))
    assert 0 < expiration - time.mktime(time.gmtime()) <= 900

    assert _post(upload, VIDEO).status_code == 204  # intercepted by moto
    head = _head(s3, key)
    assert head is not None and head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == len(VIDEO)

    ready = ok(_confirm(client, w, asked["id"]))
    assert ready["status"] == "ready" and ready["sha256"] is None
    # Copied to its final key, which the upload policy does not cover, encrypted alike;
    # the upload key is emptied.
    final = f"{w.school.id}/ready/{asked['id']}"
    assert _head(s3, key) is None
    head = _head(s3, final)
    assert head is not None and head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == len(VIDEO)

    # A student of the course may not download a video no lesson uses; its staff may.
    problem(client.get(f"/api/v1/files/{asked['id']}/download", headers=w.auth(w.enrolled)),
            403)
    link = ok(client.get(f"/api/v1/files/{asked['id']}/download",
                         headers=w.auth(w.instructor)))
    assert link["expires_in"] == 3600  # video plays for a while
    parts = urlsplit(link["url"])
    query = parse_qs(parts.query)
    assert parts.path.endswith(f"/{final}")
    assert query["X-Amz-Expires"] == ["3600"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["response-content-type"] == ["video/mp4"]
    assert query["response-content-disposition"][0].startswith('inline; filename="Week 1.mp4"')
    got = requests.get(link["url"], timeout=5)
    assert got.status_code == 200 and got.content == VIDEO

    assert client.delete(f"/api/v1/files/{asked['id']}",
                         headers=w.auth(w.instructor)).status_code == 204
    assert _head(s3, final) is None  # removed once the deletion committed
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_a_too_large_upload_is_refused(app, client, factories, s3):
    w = world(factories)
    course_id = create_course(client, w)
    asked = ok(_ask(client, w, course_id, VIDEO[:1000]), 201)
    key = f"uploads/{w.school.id}/{asked['id']}"
    assert ["content-length-range", 1, 1000] in _policy(asked["upload"])["conditions"]
    sent = _post(asked["upload"], VIDEO[:1001])
    if sent.status_code == 204:
        # moto (5.x) does not enforce POST policies, S3 answers 400 EntityTooLarge; the
        # confirmation catches it either way.
        body = problem(_confirm(client, w, asked["id"]), 422)
        assert body["errors"] == {"size": ["1001 bytes were stored; 1000 were declared."]}
    else:
        assert sent.status_code == 400
    assert _head(s3, key) is None
    assert ok(client.get(f"/api/v1/files/{asked['id']}",
                         headers=w.auth(w.instructor)))["status"] == "pending"


def test_another_type_than_declared_is_refused_on_confirm(app, client, factories, s3):
    w = world(factories)
    asked = ok(_ask(client, w, create_course(client, w)), 201)
    sent = _post(asked["upload"], VIDEO, **{"Content-Type": "text/html"})
    if sent.status_code == 204:  # moto ignores the policy's Content-Type condition
        body = problem(_confirm(client, w, asked["id"]), 422)
        assert body["errors"]["content_type"] == [
            "The object was stored as text/html; video/mp4 was declared."]
    else:
        assert sent.status_code == 403
    assert _head(s3, f"uploads/{w.school.id}/{asked['id']}") is None


def test_an_object_without_the_required_encryption_is_refused(make_app, s3):
    app = _s3_app(make_app)  # the bucket encrypts nothing by default here
    client = app.test_client()
    w = world(Factories(app))
    asked = ok(_ask(client, w, create_course(client, w)), 201)
    assert _post(asked["upload"], VIDEO).status_code == 204
    body = problem(_confirm(client, w, asked["id"]), 422)
    assert body["errors"] == {"encryption": ["The object is not encrypted with AES256."]}
    assert _head(s3, f"uploads/{w.school.id}/{asked['id']}") is None


def test_kms_encryption_with_a_key_of_our_choice(make_app, s3):
    key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    _default_encryption(s3, "aws:kms", key_id)
    app = _s3_app(make_app, s3_sse="aws:kms", s3_kms_key_id=key_id)
    client = app.test_client()
    w = world(Factories(app))
    asked = ok(_ask(client, w, create_course(client, w)), 201)
    fields = asked["upload"]["fields"]
    assert fields["x-amz-server-side-encryption"] == "aws:kms"
    assert fields["x-amz-server-side-encryption-aws-kms-key-id"] == key_id
    conditions = _policy(asked["upload"])["conditions"]
    assert {"x-amz-server-side-encryption": "aws:kms"} in conditions
    assert {"x-amz-server-side-encryption-aws-kms-key-id": key_id} in conditions
    assert _post(asked["upload"], VIDEO).status_code == 204
    assert ok(_confirm(client, w, asked["id"]))["status"] == "ready"
    head = _head(s3, f"{w.school.id}/ready/{asked['id']}")  # the copy is encrypted alike
    assert head is not None and head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_id


def test_nothing_uploaded_is_reported(app, client, factories):
    w = world(factories)
    asked = ok(_ask(client, w, create_course(client, w)), 201)
    assert problem(_confirm(client, w, asked["id"]), 422)["type"] == \
        "urn:kalpla:problem:upload-missing"


# --- the client factory -----------------------------------------------------------------------

def _settings(**env: str) -> Any:
    return load_settings(environ={"KALPLA_SECRET_KEY": "k" * 40,
                                  "KALPLA_INSTANCE_PATH": "/tmp/kalpla-unused", **env})


def test_clients_take_region_retries_timeouts_and_endpoint_from_settings(s3):
    settings = _settings(KALPLA_AWS_REGION="ap-south-1", KALPLA_AWS_MAX_ATTEMPTS="5",
                         KALPLA_AWS_CONNECT_TIMEOUT="2", KALPLA_AWS_READ_TIMEOUT="40")
    client = new_client(settings, "sqs")
    config = client.meta.config
    assert client.meta.region_name == "ap-south-1"
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert (config.connect_timeout, config.read_timeout) == (2, 40)
    assert "ap-south-1" in client.meta.endpoint_url

    local = new_client(_settings(KALPLA_AWS_REGION=REGION,
                                 KALPLA_AWS_ENDPOINT_URL="http://127.0.0.1:4566"), "s3")
    assert local.meta.endpoint_url == "http://127.0.0.1:4566"
    url = local.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "a/b"},
                                       ExpiresIn=60)
    assert url.startswith(f"http://127.0.0.1:4566/{BUCKET}/a/b?")  # path-style
    assert "X-Amz-Signature=" in url

    defaults = new_client(_settings(KALPLA_AWS_REGION=REGION), "s3").meta.config
    assert defaults.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (defaults.connect_timeout, defaults.read_timeout) == (5, 30)


def test_one_client_per_service_and_app(app, s3):
    kalpla = app.extensions["kalpla"]
    assert aws_client(kalpla, "s3") is aws_client(kalpla, "s3")
    assert aws_client(kalpla, "s3") is not aws_client(kalpla, "sqs")
    with app.app_context():
        from kalpla_core import toolkit

        assert toolkit.aws_client("s3") is aws_client(kalpla, "s3")
        assert toolkit.storage().name == "s3" and toolkit.storage("local").name == "local"
        assert toolkit.storage().client is aws_client(kalpla, "s3")


def test_s3_settings_are_validated():
    assert _settings().s3_sse == "AES256" and _settings().s3_kms_key_id is None
    kms = _settings(KALPLA_S3_SSE="aws:kms", KALPLA_S3_KMS_KEY_ID="alias/kalpla")
    assert (kms.s3_sse, kms.s3_kms_key_id) == ("aws:kms", "alias/kalpla")
    bad = {
        "KALPLA_S3_SSE": {"KALPLA_S3_SSE": "DES"},
        "KALPLA_S3_KMS_KEY_ID": {"KALPLA_S3_KMS_KEY_ID": "alias/kalpla"},
        "KALPLA_AWS_MAX_ATTEMPTS": {"KALPLA_AWS_MAX_ATTEMPTS": "0"},
        "KALPLA_AWS_READ_TIMEOUT": {"KALPLA_AWS_READ_TIMEOUT": "soon"},
    }
    for name, env in bad.items():
        with pytest.raises(ConfigError, match=name):
            _settings(**env)
