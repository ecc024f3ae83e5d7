"""A small but real OpenID Connect provider for the tests, on 127.0.0.1 in a thread.

It serves a discovery document, a JWKS, an authorization endpoint that signs in
``next_user`` at once and redirects back with a code, and a token endpoint that checks the
client secret (HTTP Basic or form), the redirect URI and the PKCE verifier (S256) before it
issues an RS256-signed ID token carrying the nonce of the authorization request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return jwk


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str | None
    method: str | None
    user: dict[str, Any]
    used: bool = False


@dataclass
class OIDCProvider:
    """State of the provider; tests change ``next_user`` and the tampering hooks."""

    client_id: str = "kalpla-test-client"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    kid: str = "test-key-1"
    next_user: dict[str, Any] = field(default_factory=dict)
    # Hooks for negative tests: change the claims before signing, or the signed token.
    claims_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    token_hook: Callable[[str], str] | None = None
    issuer: str = ""
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    secrets_issued: list[str] = field(default_factory=list)  # every token and code handed out

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
        }

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return _json(400, {"error": "unauthorized_client"})
        if "openid" not in query.get("scope", "").split():
            return _json(400, {"error": "invalid_scope"})
        code = secrets.token_urlsafe(24)
        self.secrets_issued.append(code)
        self.grants[code] = Grant(query["client_id"], query["redirect_uri"], query.get("nonce"),
                                  query.get("code_challenge"),
                                  query.get("code_challenge_method"), dict(self.next_user))
        params = {"code": code, "state": query.get("state", "")}
        return 302, {"Location": f"{query['redirect_uri']}?{urlencode(params)}"}, b""

    def token(self, headers: Any, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.token_requests.append(dict(form))
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if client_id != self.client_id or secret != self.client_secret:
            return _json(401, {"error": "invalid_client"})
        grant = self.grants.get(form.get("code", ""))
        if form.get("grant_type") != "authorization_code" or grant is None or grant.used:
            return _json(400, {"error": "invalid_grant"})
        grant.used = True
        if form.get("redirect_uri") != grant.redirect_uri:
            return _json(400, {"error": "invalid_grant"})
        verifier = form.get("code_verifier", "")
        expected = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if grant.method != "S256" or not verifier or expected != grant.challenge:
            return _json(400, {"error": "invalid_grant"})
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + 300,
                  "nonce": grant.nonce, **grant.user}
        if self.claims_hook:
            claims = self.claims_hook(claims)
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        if self.token_hook:
            id_token = self.token_hook(id_token)
        access_token = secrets.token_urlsafe(24)
        self.secrets_issued += [id_token, access_token]
        return _json(200, {"access_token": access_token, "token_type": "Bearer",
                           "expires_in": 300, "id_token": id_token})


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", "Cache-Control": "no-store"}, \
        json.dumps(body).encode()


def _handler(provider: OIDCProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _send(self, result: tuple[int, dict[str, str], bytes]) -> None:
            status, headers, body = result
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/.well-known/openid-configuration":
                self._send(_json(200, provider.discovery()))
            elif url.path == "/jwks":
                self._send(_json(200, {"keys": [public_jwk(provider.key, provider.kid)]}))
            elif url.path == "/authorize":
                self._send(provider.authorize(query))
            else:
                self._send(_json(404, {"error": "not_found"}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if urlsplit(self.path).path == "/token":
                self._send(provider.token(self.headers, form))
            else:
                self._send(_json(404, {"error": "not_found"}))

    return Handler


@contextmanager
def running_provider() -> Iterator[OIDCProvider]:
    provider = OIDCProvider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    provider.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
