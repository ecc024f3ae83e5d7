"""Encryption at rest for secrets (signing keys, TOTP secrets, provider keys).

Keys are derived from ``KALPLA_SECRET_KEY`` with HKDF and a purpose label, so one purpose's
ciphertext cannot be replayed as another's and the root secret is never used directly.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["InvalidToken", "SecretBox", "derive_key"]


def derive_key(secret: str, purpose: str, length: int = 32) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=b"kalpla",
                info=purpose.encode())
    return hkdf.derive(secret.encode())


class SecretBox:
    """Authenticated encryption (Fernet) for one purpose."""

    def __init__(self, secret: str, purpose: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret, purpose)))

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._fernet.encrypt(plaintext)

    def decrypt(self, token: bytes) -> bytes:
        return self._fernet.decrypt(token)
