"""AWS stand-ins for the streaming tests: an SNS signer with its own certificate served from a
local HTTP server, IVS responses for botocore's Stubber, EventBridge events."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from kalpla_streaming.sns import string_to_sign

LOCAL_PATTERN = r"^http://127\.0\.0\.1:\d+/"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ivs-events"
ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class LocalServer:
    """A tiny HTTP server on 127.0.0.1: serves ``files`` and records the paths asked for."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    base: str = ""


@contextmanager
def local_server() -> Iterator[LocalServer]:
    state = LocalServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            state.authorizations.append(self.headers.get("Authorization", ""))
            body = state.files.get(self.path.split("?")[0])
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def do_POST(self) -> None:
            state.requests.append(f"POST {self.path}")
            state.authorizations.append(self.headers.get("Authorization", ""))
            self.send_response(200 if f"POST {self.path}" in state.files else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


class SNSSigner:
    """Signs messages the way SNS does, with a key pair and self-signed certificate made here."""

    def __init__(self, server: LocalServer, path: str = "/SimpleNotificationService.pem",
                 valid: timedelta = timedelta(days=1)) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + valid)
                .sign(self.key, hashes.SHA256()))
        server.files[path] = cert.public_bytes(serialization.Encoding.PEM)
        self.cert_url = f"{server.base}{path}"
        self.server = server

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        message = {**message, "SignatureVersion": version, "SigningCertURL": self.cert_url}
        # SignatureVersion 1 is SHA-1 by definition.
        algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()  # noqa: S303
        signature = self.key.sign(string_to_sign(message).encode(), padding.PKCS1v15(),
                                  algorithm)
        return {**message, "Signature": base64.b64encode(signature).decode()}

    def notification(self, event: dict[str, Any], version: str = "2",
                     subject: str | None = None, topic: str = TOPIC) -> dict[str, Any]:
        message: dict[str, Any] = {
            "Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": topic,
            "Message": json.dumps(event), "Timestamp": _iso(datetime.now(UTC)),
            "UnsubscribeURL": f"{self.server.base}/unsubscribe"}
        if subject is not None:
            message["Subject"] = subject
        return self.sign(message, version)

    def confirmation(self, topic: str = TOPIC) -> dict[str, Any]:
        token = uuid.uuid4().hex
        return self.sign({
            "Type": "SubscriptionConfirmation", "MessageId": str(uuid.uuid4()),
            "Token": token, "TopicArn": topic,
            "Message": f"You have chosen to subscribe to the topic {topic}.",
            "SubscribeURL": f"{self.server.base}/confirm?Action=ConfirmSubscription"
                            f"&Token={token}",
            "Timestamp": _iso(datetime.now(UTC))})


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def stream_event(channel_arn: str, name: str, at: datetime, event_id: str | None = None,
                 stream_id: str = "st-1Abc") -> dict[str, Any]:
    """An "IVS Stream State Change" event as EventBridge delivers it."""
    return {
        "version": "0", "id": event_id or str(uuid.uuid4()),
        "detail-type": "IVS Stream State Change", "source": "aws.ivs", "account": ACCOUNT,
        "time": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION,
        "resources": [channel_arn],
        "detail": {"event_name": name, "channel_name": "kalpla", "stream_id": stream_id}}


def recording_event(channel_arn: str, at: datetime, bucket: str,
                    prefix: str) -> dict[str, Any]:
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "IVS Recording State Change",
        "source": "aws.ivs", "account": ACCOUNT,
        "time": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION,
        "resources": [channel_arn],
        "detail": {"channel_name": "kalpla", "stream_id": "st-1Abc",
                   "recording_status": "Recording End",
                   "recording_status_reason": "", "recording_s3_bucket_name": bucket,
                   "recording_s3_key_prefix": prefix, "recording_duration_ms": 3_000_000,
                   "recording_session_id": "rs-1", "recording_session_stream_ids": ["st-1Abc"]}}


# --- IVS responses for the Stubber ----------------------------------------------------------------

def channel_arn(channel_id: str = "AbCdEf123456") -> str:
    return f"arn:aws:ivs:{REGION}:{ACCOUNT}:channel/{channel_id}"


def key_pair_response(arn: str = f"arn:aws:ivs:{REGION}:{ACCOUNT}:playback-key/Kp1") -> dict:
    return {"keyPair": {"arn": arn, "name": "kalpla", "fingerprint": "ab:cd"}}


def recording_response(arn: str = f"arn:aws:ivs:{REGION}:{ACCOUNT}:recording-configuration/Rc1"
                       ) -> dict:
    return {"recordingConfiguration": {
        "arn": arn, "name": "kalpla", "state": "ACTIVE",
        "destinationConfiguration": {"s3": {"bucketName": "recordings"}}}}


def channel_response(arn: str, key_value: str = "sk_us-east-1_StreamKeyValue1") -> dict:
    return {
        "channel": {"arn": arn, "name": "kalpla", "latencyMode": "LOW", "type": "STANDARD",
                    "authorized": True,
                    "ingestEndpoint": "f99084460c35.global-contribute.live-video.net",
                    "playbackUrl": "https://f99084460c35.us-east-1.playback.live-video.net/"
                                   "api/video/v1/us-east-1.123456789012.channel.AbCd.m3u8"},
        "streamKey": {"arn": arn.replace(":channel/", ":stream-key/"), "value": key_value,
                      "channelArn": arn}}


class Capture:
    """Matches any value in a Stubber's expected parameters, and keeps it."""

    value: Any = None

    def __eq__(self, other: object) -> bool:
        self.value = other
        return True

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]


# --- IVS over botocore's own send path, for counting attempts -------------------------------------

class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


class FakeIVS:
    """Answers a client's IVS calls from its ``before-send`` hook: nothing leaves the process,
    yet botocore parses each answer and decides on retries as it would for AWS's, so every
    attempt of a call is seen (and counted) here."""

    def __init__(self, client: Any) -> None:
        self.calls: list[str] = []
        self._answers: dict[str, list[tuple[int, dict[str, Any], str | None]]] = {}
        client.meta.events.register("before-send.ivs", self._send)

    def answer(self, operation: str, body: dict[str, Any] | None = None, *, status: int = 200,
               error: str | None = None, times: int = 1) -> None:
        """Queue ``times`` answers to ``operation`` (``CreateChannel`` …): a body, or an error
        code with its HTTP status."""
        self._answers.setdefault(operation, []).extend(
            [(status, body or {}, error)] * times)

    def pending(self) -> dict[str, int]:
        return {op: len(queue) for op, queue in self._answers.items() if queue}

    def _send(self, request: Any, event_name: str, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        operation = event_name.rsplit(".", 1)[-1]
        self.calls.append(operation)
        queue = self._answers.get(operation)
        if not queue:
            raise AssertionError(f"unexpected IVS call {operation}")
        status, body, error = queue.pop(0)
        headers = {"Content-Type": "application/json"}
        if error is not None:
            headers["x-amzn-ErrorType"] = error
            body = {"message": f"{error} (test)"}
        return AWSResponse(request.url, status, headers, _Body(json.dumps(body).encode()))
