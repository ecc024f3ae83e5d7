"""Signed JWT access tokens (ES256) with a published JWKS and key rotation.

The active key signs; retired keys keep verifying (and stay in the JWKS) until every token they
signed has expired, then they are dropped.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.crypto import SecretBox
from kalpla_core.identity.models import SigningKey

ALGORITHM = "ES256"
ISSUER = "kalpla"
AUDIENCE = "kalpla-api"


class TokenError(Exception):
    """The token is missing, malformed, badly signed, expired or revoked."""


@dataclass
class KeyRing:
    """Signing keys of one app, read from the database and cached until rotation."""

    secret: str
    access_ttl: int

    def __post_init__(self) -> None:
        self._box = SecretBox(self.secret, "signing-keys")
        self._cache: dict[str, SigningKey] | None = None

    def _load(self, session: Session) -> dict[str, SigningKey]:
        if self._cache is None:
            keys = session.scalars(select(SigningKey)).all()
            for key in keys:
                session.expunge(key)
            self._cache = {k.kid: k for k in keys}
        return self._cache

    def invalidate(self) -> None:
        self._cache = None

    def _active(self, session: Session) -> SigningKey:
        active = [k for k in self._load(session).values() if k.retired_at is None]
        if not active:
            self.rotate(session)
            active = [k for k in self._load(session).values() if k.retired_at is None]
        return max(active, key=lambda k: k.created_at)

    def rotate(self, session: Session) -> str:
        """Create a new active key and retire the current one; returns the new key id."""
        now = datetime.now(UTC)
        for key in session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))):
            key.retired_at = now
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        kid = secrets.token_hex(8)
        session.add(SigningKey(kid=kid, algorithm=ALGORITHM,
                               private_key_encrypted=self._box.encrypt(pem),
                               public_pem=public_pem, created_at=now))
        # Drop keys retired longer ago than any token they signed can live.
        horizon = now - timedelta(seconds=self.access_ttl + 60)
        for key in session.scalars(select(SigningKey).where(SigningKey.retired_at < horizon)):
            session.delete(key)
        session.flush()
        self.invalidate()
        return kid

    def issue(self, session: Session, subject: str, claims: dict[str, Any] | None = None,
              ttl: int | None = None) -> str:
        key = self._active(session)
        now = datetime.now(UTC)
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now,
                   "exp": now + timedelta(seconds=ttl or self.access_ttl),
                   "jti": secrets.token_hex(12), **(claims or {})}
        private = serialization.load_pem_private_key(
            self._box.decrypt(key.private_key_encrypted), password=None)
        return jwt.encode(payload, private, algorithm=ALGORITHM,  # type: ignore[arg-type]
                          headers={"kid": key.kid})

    def recognises(self, session: Session, token: str) -> bool:
        """Whether ``token`` claims to be signed by one of our keys (issuer and key id),
        before any verification: other authenticators handle foreign tokens."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == ISSUER or header.get("kid") in self._load(session)

    def verify(self, session: Session, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        kid = header.get("kid")
        key = self._load(session).get(kid) if isinstance(kid, str) else None
        if key is None:
            # A key rotated in by another process: read the table again once.
            self.invalidate()
            key = self._load(session).get(kid) if isinstance(kid, str) else None
        if key is None or header.get("alg") != ALGORITHM:
            raise TokenError("unknown signing key")
        try:
            return jwt.decode(token, key.public_pem, algorithms=[ALGORITHM], audience=AUDIENCE,
                              issuer=ISSUER, options={"require": ["exp", "iat", "sub"]})
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc

    def jwks(self, session: Session) -> dict[str, Any]:
        keys = []
        for key in sorted(self._load(session).values(), key=lambda k: k.created_at):
            public = serialization.load_pem_public_key(key.public_pem.encode())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
            jwk.update({"kid": key.kid, "alg": key.algorithm, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}
