"""Bearer tokens issued by Amazon Cognito user pools (``KALPLA_COGNITO_USER_POOLS``).

The authenticator claims a token only when its (unverified) ``iss`` is a configured pool, so
Kalpla's own tokens and other credentials pass on to their authenticators. A claimed token is
then verified in full: signature against the pool's JWKS (cached), ``iss``, ``exp``,
``token_use``, and ``client_id`` (access tokens) or ``aud`` (ID tokens) among the pool's app
clients. The user is provisioned just in time and linked by ``sub``; ``cognito:groups`` are
mapped to roles in the pool's institution on every authentication.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jwt
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.audit.service import record
from kalpla_core.identity.authn import AuthenticationError, Principal, bearer_token
from kalpla_core.identity.federation.accounts import (
    ExternalIdentity,
    LinkRefused,
    is_verified,
    linked_user,
    resolve_user,
)
from kalpla_core.identity.federation.config import CognitoPool
from kalpla_core.identity.federation.jwks import JWKSCache, JWKSError, signing_key
from kalpla_core.identity.models import Membership, User
from kalpla_core.institutions.models import Institution

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

log = logging.getLogger("kalpla.identity.federation")

HTTP_TIMEOUT = 5.0


class CognitoAuthenticator:
    """Provider ``cognito`` of the ``authenticator`` port."""

    def __init__(self, app: Any) -> None:
        settings = app.extensions["kalpla"].settings
        self.pools: dict[str, CognitoPool] = {p.issuer: p for p in settings.cognito_user_pools}
        self._http = requests.Session()
        self._key_sets = {issuer: JWKSCache(pool.jwks_url, http=self._http)
                          for issuer, pool in self.pools.items()}
        self._aws_endpoint: str | None = settings.aws_endpoint_url

    def __call__(self, session: Session, kalpla: Kalpla,
                 headers: Mapping[str, str]) -> Principal | None:
        token = bearer_token(headers)
        if token is None or not self.pools:
            return None
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return None
        pool = self.pools.get(issuer) if isinstance(issuer, str) else None
        if pool is None:
            return None
        claims = self.verify(pool, token)
        inst = self._institution(session, pool)
        user = self._user(session, kalpla, pool, inst, claims, token)
        self._sync_roles(session, pool, inst, user, claims.get("cognito:groups"))
        return Principal(user=user, method="cognito")

    def verify(self, pool: CognitoPool, token: str) -> dict[str, Any]:
        """The token's claims, or AuthenticationError."""
        try:
            key, alg = signing_key(self._key_sets[pool.issuer], token)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], issuer=pool.issuer,
                options={"require": ["iss", "sub", "exp", "iat", "token_use"],
                         "verify_aud": False})  # checked below, per token_use
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("The Cognito token has expired.") from None
        except (JWKSError, jwt.PyJWTError) as exc:
            log.info("Cognito token of %s refused: %s", pool.user_pool_id, exc)
            raise AuthenticationError("The Cognito token is invalid.") from None
        use = claims["token_use"]
        if use not in pool.token_use:
            raise AuthenticationError(f"Cognito {use!r} tokens are not accepted here.")
        if use == "access":
            clients = [claims.get("client_id")]
        else:
            aud = claims.get("aud")
            clients = aud if isinstance(aud, list) else [aud]
        if not any(c in pool.client_ids for c in clients):
            raise AuthenticationError("The Cognito token was issued to another app client.")
        return claims

    def _user(self, session: Session, kalpla: Kalpla, pool: CognitoPool, inst: Institution,
              claims: dict[str, Any], token: str) -> User:
        sub = str(claims["sub"])
        try:
            user = linked_user(session, pool.provider, sub)
            if user is not None:
                return user
            # ID tokens carry the attributes; access tokens do not.
            is_id_token = claims["token_use"] == "id"  # noqa: S105 (a claim value)
            attributes = claims if is_id_token else self._attributes(pool, token)
            identity = ExternalIdentity(
                provider=pool.provider, subject=sub, email=attributes.get("email"),
                email_verified=is_verified(attributes.get("email_verified")),
                name=str(attributes.get("name") or ""))
            return resolve_user(session, kalpla, identity, institution_id=inst.id)
        except LinkRefused as exc:
            raise AuthenticationError(exc.detail) from None

    def _attributes(self, pool: CognitoPool, token: str) -> dict[str, Any]:
        """The user's attributes (email …), which access tokens do not carry: Cognito's
        GetUser, authorised by the access token itself."""
        endpoint = pool.endpoint_url or self._aws_endpoint or \
            f"https://cognito-idp.{pool.region}.amazonaws.com/"
        try:
            response = self._http.post(
                endpoint, json={"AccessToken": token}, timeout=HTTP_TIMEOUT,
                headers={"Content-Type": "application/x-amz-json-1.1",
                         "X-Amz-Target": "AWSCognitoIdentityProviderService.GetUser"})
            response.raise_for_status()
            data = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.warning("Cognito GetUser for pool %s failed: %s", pool.user_pool_id,
                        type(exc).__name__)
            raise AuthenticationError("The Cognito user's profile could not be read.") from None
        return {a["Name"]: a.get("Value") for a in data.get("UserAttributes", [])
                if isinstance(a, dict) and "Name" in a}

    def _institution(self, session: Session, pool: CognitoPool) -> Institution:
        inst = session.scalar(select(Institution).where(Institution.slug == pool.institution))
        if inst is None:
            log.error("Cognito pool %s maps to the missing institution %r", pool.user_pool_id,
                      pool.institution)
            raise AuthenticationError("This user pool is not mapped to an institution.")
        return inst

    def _sync_roles(self, session: Session, pool: CognitoPool, inst: Institution, user: User,
                    groups: Any) -> None:
        """Make the user's roles in the pool's institution exactly those its groups map to."""
        if not isinstance(groups, list):
            groups = []
        wanted = pool.roles_for([g for g in groups if isinstance(g, str)])
        held = {m.role: m for m in session.scalars(select(Membership).where(
            Membership.user_id == user.id, Membership.institution_id == inst.id))}
        if wanted == set(held):
            return
        for role, membership in held.items():
            if role not in wanted:
                session.delete(membership)
        for role in wanted - set(held):
            session.add(Membership(user_id=user.id, institution_id=inst.id, role=role))
        record(session, "member.roles_synced", actor_id=user.id, institution_id=inst.id,
               target_type="user", target_id=user.id, source=pool.provider,
               roles=sorted(wanted), previous=sorted(held))
        session.flush()
