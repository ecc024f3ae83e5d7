"""Settings of external identity providers, parsed and validated at start-up.

``KALPLA_OIDC_PROVIDERS``: a JSON object (or the path of a JSON file holding one) mapping a
provider name to ``{"preset": "google"}`` or ``{"issuer": "https://…"}`` plus ``client_id``,
``client_secret`` and optionally ``scopes``, explicit endpoints (``authorization_endpoint``,
``token_endpoint``, ``jwks_uri``; when any is missing the issuer's discovery document supplies
it), ``token_endpoint_auth_method`` (``client_secret_basic`` or ``client_secret_post``) and
``trust_email`` (treat the address as verified when the ID token does not say).

``KALPLA_COGNITO_USER_POOLS``: a JSON list of pools (or one pool object, or a file path):
``region``, ``user_pool_id``, ``client_ids``, and optionally ``token_use`` (``["access",
"id"]``), ``institution`` (slug, ``default``), ``groups`` (Cognito group → Kalpla role),
``jwks_url`` and ``endpoint_url`` (overrides, for a local emulator).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kalpla_core.config import ConfigError
from kalpla_core.identity.models import ROLES

OIDC_SETTING = "KALPLA_OIDC_PROVIDERS"
COGNITO_SETTING = "KALPLA_COGNITO_USER_POOLS"

DEFAULT_GROUP_ROLES: Mapping[str, str] = {
    "Students": "student", "Mentors": "mentor", "Moderators": "moderator", "Admins": "admin"}
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_POOL_ID_RE = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)_[0-9A-Za-z]+$")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class OIDCProvider:
    """One configured OpenID Connect provider. Endpoints left None come from discovery."""

    name: str
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    jwks_uri: str | None = None
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 (a method name)
    # Other spellings of the issuer the provider puts in ``iss`` (Google uses two).
    issuer_aliases: tuple[str, ...] = ()
    # Treat the email as verified when the ID token has no ``email_verified`` claim: only
    # for providers known to hand out confirmed addresses only.
    trust_email: bool = False
    preset: str | None = None

    def __str__(self) -> str:
        return self.name

    @property
    def needs_discovery(self) -> bool:
        return not (self.authorization_endpoint and self.token_endpoint and self.jwks_uri)

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


# Well-known endpoints of the providers most deployments ask for; any field can be overridden.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "google": {
        "issuer": "https://accounts.google.com",
        "issuer_aliases": ("accounts.google.com",),
        "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_endpoint": "https://oauth2.googleapis.com/token",
        "jwks_uri": "https://www.googleapis.com/oauth2/v3/certs",
        "scopes": ("openid", "email", "profile"),
        "token_endpoint_auth_method": "client_secret_post",
    },
    # Facebook Login's OIDC authorization-code flow with PKCE. Its ID tokens carry no
    # ``email_verified``: unless the deployment sets ``trust_email``, Facebook sign-ins are
    # refused (an unverified address neither links nor creates an account).
    "facebook": {
        "issuer": "https://www.facebook.com",
        "authorization_endpoint": "https://www.facebook.com/v19.0/dialog/oauth",
        "token_endpoint": "https://graph.facebook.com/v19.0/oauth/access_token",
        "jwks_uri": "https://www.facebook.com/.well-known/oauth/openid/jwks/",
        "scopes": ("openid", "email"),
        "token_endpoint_auth_method": "client_secret_post",
    },
    "linkedin": {
        "issuer": "https://www.linkedin.com/oauth",
        "authorization_endpoint": "https://www.linkedin.com/oauth/v2/authorization",
        "token_endpoint": "https://www.linkedin.com/oauth/v2/accessToken",
        "jwks_uri": "https://www.linkedin.com/oauth/openid/jwks",
        "scopes": ("openid", "profile", "email"),
        "token_endpoint_auth_method": "client_secret_post",
    },
}

_OIDC_KEYS = {"preset", "issuer", "client_id", "client_secret", "scopes",
              "authorization_endpoint", "token_endpoint", "jwks_uri",
              "token_endpoint_auth_method", "trust_email"}


@dataclass(frozen=True)
class CognitoPool:
    """A Cognito user pool whose tokens are accepted as Bearer credentials."""

    region: str
    user_pool_id: str
    client_ids: tuple[str, ...]
    token_use: tuple[str, ...] = ("access", "id")
    institution: str = "default"
    groups: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_GROUP_ROLES))
    jwks_url: str = ""
    endpoint_url: str | None = None  # for GetUser; None: the regional endpoint

    def __str__(self) -> str:
        return self.user_pool_id

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.user_pool_id}"

    @property
    def provider(self) -> str:
        """``user_identities.provider`` of this pool's users."""
        return f"cognito:{self.user_pool_id}"

    def roles_for(self, groups: list[str]) -> set[str]:
        return {self.groups[g] for g in groups if g in self.groups}


_POOL_KEYS = {"region", "user_pool_id", "client_ids", "token_use", "institution", "groups",
              "jwks_url", "endpoint_url"}


def _load_json(name: str, raw: str) -> Any:
    """The setting's JSON: inline when it starts like JSON, else read from the named file."""
    text = raw.strip()
    if not text.startswith(("{", "[")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"{name} must be JSON or the path of a JSON file; "
                              f"{text!r} is not a file")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc.msg} (line {exc.lineno})") from None


def _url(name: str, key: str, value: Any) -> str:
    """An https URL; plain http only for loopback hosts (local development and tests)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: {key} must be a URL")
    parsed = urlparse(value)
    if parsed.scheme == "https" and parsed.hostname:
        return value
    if parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS:
        return value
    raise ConfigError(f"{name}: {key} must be an https URL (http only on loopback); "
                      f"got {value!r}")


def _text(name: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}: {key} must be a non-empty string")
    return value.strip()


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of strings, or one space- or comma-separated string."""
    if isinstance(value, str):
        items = [v for v in re.split(r"[\s,]+", value) if v]
    elif isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        items = list(value)
    else:
        raise ConfigError(f"{name}: {key} must be a list of strings")
    if not items:
        raise ConfigError(f"{name}: {key} must not be empty")
    return tuple(dict.fromkeys(items))


def parse_oidc_providers(raw: str | None) -> tuple[OIDCProvider, ...]:
    if raw is None or not raw.strip():
        return ()
    data = _load_json(OIDC_SETTING, raw)
    if not isinstance(data, dict):
        raise ConfigError(f"{OIDC_SETTING} must be a JSON object of provider name → settings")
    return tuple(_oidc_provider(name, spec) for name, spec in data.items())


def _oidc_provider(name: str, spec: Any) -> OIDCProvider:
    where = f"{OIDC_SETTING}[{name!r}]"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{OIDC_SETTING}: provider name {name!r} must be lower-case letters, "
                          "digits, '-' or '_'")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = set(spec) - _OIDC_KEYS
    if unknown:
        raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    preset_name = spec.get("preset")
    values: dict[str, Any] = {}
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise ConfigError(f"{where}: preset must be one of {', '.join(PRESETS)}; "
                              f"got {preset_name!r}")
        values.update(PRESETS[preset_name])
    elif "issuer" not in spec:
        raise ConfigError(f"{where} needs an issuer (discovery) or a preset")
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        if key in spec:
            values[key] = _url(where, key, spec[key])
    if "scopes" in spec:
        values["scopes"] = _strings(where, "scopes", spec["scopes"])
    if "openid" not in values.get("scopes", ("openid",)):
        raise ConfigError(f"{where}: scopes must include 'openid'")
    method = spec.get("token_endpoint_auth_method")
    if method is not None:
        if method not in AUTH_METHODS:
            raise ConfigError(f"{where}: token_endpoint_auth_method must be one of "
                              f"{', '.join(AUTH_METHODS)}")
        values["token_endpoint_auth_method"] = method
    if "trust_email" in spec:
        if not isinstance(spec["trust_email"], bool):
            raise ConfigError(f"{where}: trust_email must be true or false")
        values["trust_email"] = spec["trust_email"]
    return OIDCProvider(name=name, client_id=_text(where, "client_id", spec.get("client_id")),
                        client_secret=_text(where, "client_secret", spec.get("client_secret")),
                        preset=preset_name, **values)


def parse_cognito_pools(raw: str | None) -> tuple[CognitoPool, ...]:
    if raw is None or not raw.strip():
        return ()
    data = _load_json(COGNITO_SETTING, raw)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{COGNITO_SETTING} must be a JSON list of user pools")
    pools = tuple(_cognito_pool(i, spec) for i, spec in enumerate(data))
    ids = [p.user_pool_id for p in pools]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{COGNITO_SETTING} names a user pool twice")
    return pools


def _cognito_pool(index: int, spec: Any) -> CognitoPool:
    where = f"{COGNITO_SETTING}[{index}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = set(spec) - _POOL_KEYS
    if unknown:
        raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    region = _text(where, "region", spec.get("region"))
    if not _REGION_RE.match(region):
        raise ConfigError(f"{where}: region {region!r} is not an AWS region name")
    pool_id = _text(where, "user_pool_id", spec.get("user_pool_id"))
    match = _POOL_ID_RE.match(pool_id)
    if not match or match.group(1) != region:
        raise ConfigError(f"{where}: user_pool_id must look like {region}_AbC123 (its region "
                          f"prefix matching region); got {pool_id!r}")
    client_ids = _strings(where, "client_ids", spec.get("client_ids"))
    token_use = _strings(where, "token_use", spec.get("token_use", ["access", "id"]))
    if set(token_use) - {"access", "id"}:
        raise ConfigError(f"{where}: token_use entries must be 'access' or 'id'")
    institution = spec.get("institution", "default")
    if not isinstance(institution, str) or not _SLUG_RE.match(institution):
        raise ConfigError(f"{where}: institution must be an institution slug")
    groups = spec.get("groups", DEFAULT_GROUP_ROLES)
    if not isinstance(groups, dict) or not all(
            isinstance(k, str) and k and v in ROLES for k, v in groups.items()):
        raise ConfigError(f"{where}: groups must map Cognito group names to roles "
                          f"({', '.join(ROLES)})")
    default_jwks = f"{_issuer(region, pool_id)}/.well-known/jwks.json"
    jwks_url = _url(where, "jwks_url", spec["jwks_url"]) if "jwks_url" in spec else default_jwks
    endpoint = _url(where, "endpoint_url", spec["endpoint_url"]) if "endpoint_url" in spec \
        else None
    return CognitoPool(region=region, user_pool_id=pool_id, client_ids=client_ids,
                       token_use=token_use, institution=institution, groups=dict(groups),
                       jwks_url=jwks_url, endpoint_url=endpoint)


def _issuer(region: str, pool_id: str) -> str:
    return f"https://cognito-idp.{region}.amazonaws.com/{pool_id}"
