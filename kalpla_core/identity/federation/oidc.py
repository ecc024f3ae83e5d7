"""OpenID Connect login (authorization code flow with PKCE), through Authlib. No Flask here.

``begin`` builds the provider's authorization URL with a fresh ``state``, ``nonce`` and PKCE
verifier (S256), and returns them sealed in a short-lived encrypted blob that the route keeps
in a cookie: nothing is stored server-side, and the browser cannot read or alter it. ``finish``
opens the blob, checks ``state``, exchanges the code with the verifier and verifies the ID
token (signature against the provider's JWKS, ``iss``, ``aud``/``azp``, ``exp``, ``nonce``).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

import jwt
import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.orm import Session

from kalpla_core.audit.service import record
from kalpla_core.crypto import derive_key
from kalpla_core.http.problems import APIError
from kalpla_core.identity.federation.accounts import (
    ExternalIdentity,
    LinkRefused,
    is_verified,
    resolve_user,
    sign_in,
)
from kalpla_core.identity.federation.config import LOOPBACK_HOSTS, OIDCProvider
from kalpla_core.identity.federation.jwks import JWKSCache, JWKSError, signing_key
from kalpla_core.institutions.models import Institution

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla
    from kalpla_core.identity.accounts import LoginResult

log = logging.getLogger("kalpla.identity.federation")

FLOW_TTL = 600  # seconds a user has between /start and /callback
CLOCK_SKEW = 30  # seconds of leeway on the ID token's time claims
HTTP_TIMEOUT = 10.0


class OIDCError(Exception):
    """The login cannot go on; ``status`` and ``code`` are what the API answers."""

    def __init__(self, detail: str, code: str = "oidc-login-failed", status: int = 401) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status


@dataclass(frozen=True)
class CompletedLogin:
    identity: ExternalIdentity
    institution_id: str | None  # where a user created by this login becomes a student


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str
    jwks_uri: str


def _acceptable_url(url: object) -> bool:
    if not isinstance(url, str):
        return False
    parsed = urlparse(url)
    return bool(parsed.hostname) and (
        parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS))


class OIDCService:
    """The configured providers of one app, their discovered endpoints and key sets."""

    def __init__(self, providers: Iterable[OIDCProvider], secret: str, base_url: str,
                 *, timeout: float = HTTP_TIMEOUT) -> None:
        self.providers = {p.name: p for p in providers}
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret, "oidc-login-flow")))
        self._http = requests.Session()
        self._endpoints: dict[str, Endpoints] = {}
        self._jwks: dict[str, JWKSCache] = {}
        self._lock = threading.Lock()

    def provider(self, name: str) -> OIDCProvider:
        try:
            return self.providers[name]
        except KeyError:
            raise OIDCError(f"There is no identity provider {name!r}.", "not-found",
                            404) from None

    def redirect_uri(self, name: str) -> str:
        return f"{self.base_url}/api/v1/auth/oidc/{quote(name)}/callback"

    # --- the two legs of the flow ---------------------------------------------------------

    def begin(self, name: str, institution_id: str | None = None) -> tuple[str, str]:
        """The provider's authorization URL and the sealed flow state (for the cookie)."""
        provider = self.provider(name)
        endpoints = self.endpoints(provider)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters, within PKCE's 43–128
        with self._client(provider) as client:
            url, _ = client.create_authorization_url(
                endpoints.authorization, state=state, code_verifier=verifier, nonce=nonce)
        sealed = self._fernet.encrypt(json.dumps(
            {"p": name, "s": state, "n": nonce, "v": verifier, "i": institution_id}
        ).encode()).decode()
        return url, sealed

    def finish(self, name: str, sealed: str | None,
               params: Mapping[str, str]) -> CompletedLogin:
        """The verified identity the provider vouches for, from the callback's parameters."""
        provider = self.provider(name)
        flow = self._open(sealed)
        state = params.get("state") or ""
        if flow.get("p") != name or not hmac.compare_digest(state.encode(),
                                                              str(flow.get("s")).encode()):
            raise OIDCError("The login state does not match; start the login again.",
                            "oidc-state-mismatch")
        if params.get("error"):
            raise OIDCError(f"The identity provider refused the login ({params['error']}).",
                            "oidc-denied")
        code = params.get("code")
        if not code:
            raise OIDCError("The callback carries no authorization code.", "oidc-no-code")
        endpoints = self.endpoints(provider)
        token = self._exchange(provider, endpoints, code, flow["v"])
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OIDCError("The identity provider returned no ID token.", "oidc-no-id-token")
        claims = self._verify_id_token(provider, endpoints, id_token, flow["n"])
        name_claim = claims.get("name") or " ".join(
            str(claims[k]) for k in ("given_name", "family_name") if claims.get(k))
        verified = is_verified(claims["email_verified"]) if "email_verified" in claims \
            else provider.trust_email
        identity = ExternalIdentity(provider=f"oidc:{name}", subject=str(claims["sub"]),
                                    email=claims.get("email"), email_verified=verified,
                                    name=str(name_claim or ""))
        institution = flow.get("i")
        return CompletedLogin(identity, institution if isinstance(institution, str) else None)

    # --- pieces ---------------------------------------------------------------------------

    def _client(self, provider: OIDCProvider) -> OAuth2Session:
        return OAuth2Session(
            client_id=provider.client_id, client_secret=provider.client_secret,
            scope=" ".join(provider.scopes), redirect_uri=self.redirect_uri(provider.name),
            code_challenge_method="S256",
            token_endpoint_auth_method=provider.token_endpoint_auth_method,
            default_timeout=self.timeout)

    def _open(self, sealed: str | None) -> dict[str, Any]:
        if not sealed:
            raise OIDCError("No login is in progress in this browser; start the login again.",
                            "oidc-state-mismatch")
        try:
            data = json.loads(self._fernet.decrypt(sealed.encode(), ttl=FLOW_TTL))
        except (InvalidToken, ValueError):
            raise OIDCError("The login has expired or its state is invalid; start again.",
                            "oidc-state-mismatch") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str)
                                                 for k in ("p", "s", "n", "v")):
            raise OIDCError("The login state is invalid; start again.", "oidc-state-mismatch")
        return data

    def _exchange(self, provider: OIDCProvider, endpoints: Endpoints, code: str,
                  verifier: str) -> dict[str, Any]:
        try:
            with self._client(provider) as client:
                token = client.fetch_token(endpoints.token, grant_type="authorization_code",
                                           code=code, code_verifier=verifier)
        except OAuthError as exc:
            # The provider's error code is safe to show; its description may echo inputs.
            log.info("code exchange with %s refused: %s", provider.name, exc.error)
            raise OIDCError(f"The identity provider refused the code ({exc.error}).",
                            "oidc-exchange-failed") from None
        except (requests.RequestException, ValueError) as exc:
            log.warning("code exchange with %s failed: %s", provider.name, type(exc).__name__)
            raise OIDCError("The identity provider could not be reached.",
                            "oidc-provider-unavailable", 502) from None
        return dict(token)

    def _verify_id_token(self, provider: OIDCProvider, endpoints: Endpoints, id_token: str,
                         nonce: str) -> dict[str, Any]:
        try:
            key, alg = signing_key(self._key_set(provider, endpoints), id_token)
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=[alg], audience=provider.client_id,
                issuer=[provider.issuer, *provider.issuer_aliases], leeway=CLOCK_SKEW,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]})
        except (JWKSError, jwt.PyJWTError) as exc:
            log.info("ID token from %s refused: %s", provider.name, exc)
            raise OIDCError("The ID token is invalid.", "oidc-invalid-id-token") from None
        audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        # With several audiences, the token must have been issued to us (OIDC Core 3.1.3.7).
        if len(audience) > 1 and claims.get("azp") != provider.client_id:
            raise OIDCError("The ID token was issued to another client.",
                            "oidc-invalid-id-token")
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise OIDCError("The ID token does not answer this login (nonce).",
                            "oidc-invalid-id-token")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise OIDCError("The ID token names no subject.", "oidc-invalid-id-token")
        return claims

    def _key_set(self, provider: OIDCProvider, endpoints: Endpoints) -> JWKSCache:
        with self._lock:
            cache = self._jwks.get(provider.name)
            if cache is None:
                cache = self._jwks[provider.name] = JWKSCache(
                    endpoints.jwks_uri, timeout=self.timeout, http=self._http)
            return cache

    def endpoints(self, provider: OIDCProvider) -> Endpoints:
        """Configured endpoints, completed once from the discovery document when needed."""
        with self._lock:
            known = self._endpoints.get(provider.name)
        if known is not None:
            return known
        meta = self._discover(provider) if provider.needs_discovery else {}
        urls = {key: getattr(provider, key) or meta.get(key)
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri")}
        bad = [key for key, url in urls.items() if not _acceptable_url(url)]
        if bad:
            log.warning("provider %s has unusable endpoints: %s", provider.name, bad)
            raise OIDCError("The identity provider is misconfigured.",
                            "oidc-provider-unavailable", 502)
        endpoints = Endpoints(urls["authorization_endpoint"], urls["token_endpoint"],
                              urls["jwks_uri"])
        with self._lock:
            self._endpoints[provider.name] = endpoints
        return endpoints

    def _discover(self, provider: OIDCProvider) -> dict[str, Any]:
        try:
            response = self._http.get(provider.discovery_url, timeout=self.timeout)
            response.raise_for_status()
            meta = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.warning("discovery of %s failed: %s", provider.name, exc)
            raise OIDCError("The identity provider could not be reached.",
                            "oidc-provider-unavailable", 502) from None
        # The document must describe the configured issuer (OIDC Discovery 4.3).
        if not isinstance(meta, dict) or str(meta.get("issuer", "")).rstrip("/") \
                != provider.issuer.rstrip("/"):
            log.warning("discovery document of %s names another issuer", provider.name)
            raise OIDCError("The identity provider is misconfigured.",
                            "oidc-provider-unavailable", 502)
        return meta


def complete_login(session: Session, kalpla: Kalpla, service: OIDCService, name: str,
                   sealed: str | None, params: Mapping[str, str], *, user_agent: str = "",
                   ip: str = "", request_id: str = "") -> LoginResult:
    """The callback's work: verify the login, find, link or create the user (a created user
    becomes a student of the institution chosen at the start), and sign them in. A refusal
    is audited (committed, as the request rolls back) and raised as an APIError."""
    try:
        login = service.finish(name, sealed, params)
        institution_id = login.institution_id
        if institution_id is not None and session.get(Institution, institution_id) is None:
            institution_id = None  # removed since the login started
        user = resolve_user(session, kalpla, login.identity, institution_id=institution_id,
                            make_student=True, ip=ip, request_id=request_id)
    except (OIDCError, LinkRefused) as exc:
        if exc.status != 404:
            record(session, "login.failed", target_type="oidc", target_id=name, ip=ip,
                   request_id=request_id, method=f"oidc:{name}", reason=exc.code)
            session.commit()
        raise APIError(exc.status, exc.detail, exc.code) from None
    return sign_in(session, kalpla, user, method=f"oidc:{name}", user_agent=user_agent, ip=ip,
                   request_id=request_id)
