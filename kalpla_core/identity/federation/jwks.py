"""Public keys of an external issuer, fetched from its JWKS URL over HTTP and cached.

A token signed with a key id we have not seen makes us fetch the set again once (the issuer
may have rotated its keys). When that fetch does not know the key either, further unknown key
ids are refused without fetching for ``penalty`` seconds, so forged key ids cannot make every
request hit the issuer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jwt
import requests

log = logging.getLogger("kalpla.identity.federation")

# Asymmetric algorithms only: a JWKS never holds the shared secrets HS* would need, and
# "none" is never acceptable.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512")


class JWKSError(Exception):
    """The key set could not be fetched or does not hold the key a token names."""


class JWKSCache:
    def __init__(self, url: str, *, max_age: float = 3600.0, penalty: float = 10.0,
                 timeout: float = 5.0, http: requests.Session | None = None) -> None:
        self.url = url
        self.max_age = max_age
        self.penalty = penalty
        self.timeout = timeout
        self.fetches = 0
        self._http = http or requests.Session()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._penalty_until = 0.0
        self._lock = threading.Lock()

    def key(self, kid: str) -> jwt.PyJWK:
        """The verification key named ``kid``, fetching the set when needed."""
        with self._lock:
            now = time.monotonic()
            if self._fetched_at is None or now - self._fetched_at > self.max_age:
                self._fetch()
            key = self._keys.get(kid)
            if key is not None:
                return key
            if now < self._penalty_until:
                raise JWKSError(f"unknown key id {kid!r}")
            self._fetch()
            key = self._keys.get(kid)
            if key is None:
                self._penalty_until = time.monotonic() + self.penalty
                raise JWKSError(f"unknown key id {kid!r}")
            return key

    def _fetch(self) -> None:
        self.fetches += 1
        try:
            response = self._http.get(self.url, timeout=self.timeout)
            response.raise_for_status()
            data: Any = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.warning("fetching the key set %s failed: %s", self.url, exc)
            raise JWKSError("the issuer's key set is unavailable") from None
        keys: dict[str, jwt.PyJWK] = {}
        for entry in data.get("keys", []) if isinstance(data, dict) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type or algorithm we cannot use; others may still serve
        self._keys = keys
        self._fetched_at = time.monotonic()


def signing_key(cache: JWKSCache, token: str) -> tuple[jwt.PyJWK, str]:
    """The key and algorithm that must have signed ``token``, per its header and the set."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise JWKSError("the token is malformed") from None
    kid, alg = header.get("kid"), header.get("alg")
    if not isinstance(kid, str) or alg not in ALGORITHMS:
        raise JWKSError("the token names no usable key or algorithm")
    key = cache.key(kid)
    # A key published for one algorithm never verifies another (algorithm confusion).
    if key.algorithm_name != alg:
        raise JWKSError("the token's algorithm does not match its key")
    return key, alg
