"""Amazon SNS HTTP(S) messages: signature verification and subscription confirmation.
No Flask here.

SNS signs each message with the private key of the certificate at ``SigningCertURL``:
``SignatureVersion`` 1 is RSA with SHA-1, 2 is RSA with SHA-256 (PKCS #1 v1.5), over the
"string to sign" — the message's fields, each as ``name\\nvalue\\n``, in this order:

- ``Notification``: Message, MessageId, Subject (only when present), Timestamp, TopicArn,
  Type;
- ``SubscriptionConfirmation`` and ``UnsubscribeConfirmation``: Message, MessageId,
  SubscribeURL, Timestamp, Token, TopicArn, Type.

The certificate is fetched only from a URL matching the configured pattern (by default
``https://sns.<region>.amazonaws.com/…``), so a forged message cannot point at a certificate
of its own; fetched certificates are cached in the process.
"""

from __future__ import annotations

import base64
import re
import threading
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
FETCH_TIMEOUT = 5
MAX_CERT_BYTES = 64 * 1024


class SNSError(Exception):
    """The message is not an authentic SNS message (the reason is for the log)."""


def string_to_sign(message: Mapping[str, Any]) -> str:
    kind = message.get("Type")
    names = SIGNED_FIELDS.get(str(kind))
    if names is None:
        raise SNSError(f"unknown message type {kind!r}")
    out = []
    for name in names:
        if name == "Subject" and message.get(name) is None:
            continue
        value = message.get(name)
        if not isinstance(value, str):
            raise SNSError(f"field {name} is missing")
        out.append(f"{name}\n{value}\n")
    return "".join(out)


def fetch(url: str) -> bytes:
    """GET ``url`` (a certificate, a subscription URL), size-limited."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as resp:  # noqa: S310 (checked)
        return resp.read(MAX_CERT_BYTES)


class CertificateCache:
    def __init__(self, fetcher: Callable[[str], bytes] = fetch) -> None:
        self._fetch = fetcher
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> x509.Certificate:
        with self._lock:
            cert = self._certs.get(url)
        if cert is None:
            try:
                cert = x509.load_pem_x509_certificate(self._fetch(url))
            except (OSError, ValueError) as exc:
                raise SNSError(f"cannot load the signing certificate: {exc}") from None
            with self._lock:
                if len(self._certs) > 100:
                    self._certs.clear()
                self._certs[url] = cert
        return cert


def trusted_url(url: Any, pattern: str) -> bool:
    return isinstance(url, str) and re.match(pattern, url) is not None


def verify(message: Mapping[str, Any], pattern: str, certs: CertificateCache,
           now: datetime | None = None) -> None:
    """Raise :class:`SNSError` unless ``message`` carries a valid SNS signature."""
    algorithm = HASHES.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        raise SNSError(f"unsupported SignatureVersion {message.get('SignatureVersion')!r}")
    cert_url = message.get("SigningCertURL")
    if not trusted_url(cert_url, pattern):
        raise SNSError(f"untrusted SigningCertURL {cert_url!r}")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except ValueError:
        raise SNSError("the signature is not base64") from None
    data = string_to_sign(message).encode()
    cert = certs.get(str(cert_url))
    now = now or datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SNSError("the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SNSError("the signing certificate has no RSA key")
    try:
        key.verify(signature, data, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise SNSError("the signature does not match") from None


def confirm_subscription(message: Mapping[str, Any], pattern: str,
                         fetcher: Callable[[str], bytes] = fetch) -> None:
    """Visit the ``SubscribeURL`` of a verified confirmation message (from SNS's host only)."""
    url = message.get("SubscribeURL")
    if not trusted_url(url, pattern):
        raise SNSError(f"untrusted SubscribeURL {url!r}")
    try:
        fetcher(str(url))
    except OSError as exc:
        raise SNSError(f"confirming the subscription failed: {exc}") from None
