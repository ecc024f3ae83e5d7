"""Secrets of the plugin: stream keys kept encrypted, P-384 playback key pairs, and the
playback tokens signed for viewers."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kalpla_core.toolkit import InvalidToken, SecretBox, derive_key

STREAM_KEY_PURPOSE = "kalpla_streaming.stream_key"
PLAYBACK_KEY_PURPOSE = "kalpla_streaming.playback_private_key"
RTMP_TOKEN_PURPOSE = "kalpla_streaming.rtmp_playback_token"  # noqa: S105 (a label)
RTMP_AUDIENCE = "kalpla-streaming"
RECORDING_TOKEN_PURPOSE = "kalpla_streaming.recording_token"  # noqa: S105 (a label)
RECORDING_AUDIENCE = "kalpla-streaming-recording"


def new_stream_key() -> str:
    return "sk_" + secrets.token_urlsafe(32)


def seal(secret_key: str, purpose: str, value: str) -> str:
    return SecretBox(secret_key, purpose).encrypt(value.encode()).decode()


def unseal(secret_key: str, purpose: str, sealed: str) -> str:
    return SecretBox(secret_key, purpose).decrypt(sealed.encode()).decode()


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; nothing matches a missing secret."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class KeyPair:
    public_pem: str
    private_pem: str


def new_p384_key_pair() -> KeyPair:
    private = ec.generate_private_key(ec.SECP384R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    return KeyPair(public_pem, private_pem)


@dataclass(frozen=True)
class PlaybackToken:
    token: str
    expires_at: datetime


def ivs_token(private_pem: str, *, channel_arn: str, viewer_id: str, allowed_origin: str,
              now: datetime, ttl: int, session_version: int | None = None) -> PlaybackToken:
    """A token IVS accepts for a private channel: ES384 over the claims it checks. With
    ``session_version``, revoking the viewer's sessions up to a version covers this token
    only if its version is at most that one."""
    expires = now + timedelta(seconds=ttl)
    claims: dict[str, Any] = {
        "aws:channel-arn": channel_arn, "aws:access-control-allow-origin": allowed_origin,
        "aws:viewer-id": viewer_id, "exp": int(expires.timestamp())}
    if session_version is not None:
        claims["aws:viewer-session-version"] = session_version
    return PlaybackToken(jwt.encode(claims, private_pem, algorithm="ES384"),
                         expires.replace(microsecond=0))


def _rtmp_key(secret_key: str) -> bytes:
    return derive_key(secret_key, RTMP_TOKEN_PURPOSE)


def rtmp_token(secret_key: str, *, session_id: str, path: str, viewer_id: str, now: datetime,
               ttl: int) -> PlaybackToken:
    """A token the media server's auth callback accepts for reading ``path``."""
    expires = now + timedelta(seconds=ttl)
    claims = {"sub": viewer_id, "sid": session_id, "path": path, "aud": RTMP_AUDIENCE,
              "iat": int(now.timestamp()), "exp": int(expires.timestamp())}
    return PlaybackToken(jwt.encode(claims, _rtmp_key(secret_key), algorithm="HS256"),
                         expires.replace(microsecond=0))


def read_rtmp_token(secret_key: str, token: str) -> dict[str, Any] | None:
    """The claims of a valid, unexpired token, else None."""
    try:
        return jwt.decode(token, _rtmp_key(secret_key), algorithms=["HS256"],
                          audience=RTMP_AUDIENCE, options={"require": ["exp", "sub", "sid"]})
    except jwt.PyJWTError:
        return None


def recording_token(secret_key: str, *, key: str, now: datetime, ttl: int,
                    name: str | None = None) -> str:
    """A link's token to a recording (a file's storage key): whoever holds it may fetch that
    recording until it expires, as long as the file exists. ``name`` binds it to one playlist
    of the recording, so a link to a rendition cannot fetch the master playlist (whose links
    are fresh) and outlive its expiry."""
    claims: dict[str, Any] = {"key": key, "aud": RECORDING_AUDIENCE,
                              "iat": int(now.timestamp()),
                              "exp": int((now + timedelta(seconds=ttl)).timestamp())}
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, derive_key(secret_key, RECORDING_TOKEN_PURPOSE), algorithm="HS256")


def read_recording_token(secret_key: str, token: str, name: str | None = None) -> str | None:
    """The storage key of a valid, unexpired recording token, else None; with ``name``, only
    a token bound to that playlist is valid."""
    try:
        claims = jwt.decode(token, derive_key(secret_key, RECORDING_TOKEN_PURPOSE),
                            algorithms=["HS256"], audience=RECORDING_AUDIENCE,
                            options={"require": ["exp", "key"]})
    except jwt.PyJWTError:
        return None
    if name is not None and claims.get("name") != name:
        return None
    key = claims.get("key")
    return key if isinstance(key, str) else None


__all__ = ["InvalidToken", "KeyPair", "PlaybackToken", "ivs_token", "new_p384_key_pair",
           "new_stream_key", "read_recording_token", "read_rtmp_token", "recording_token",
           "rtmp_token", "same_secret", "seal", "unseal"]
