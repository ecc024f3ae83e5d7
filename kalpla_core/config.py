"""Settings from ``KALPLA_*`` environment variables, validated at start-up.

Every setting has a documented default (README "Configuration"); an invalid value raises
:class:`ConfigError` naming the variable, so a deployment fails before it serves anything.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from kalpla_core.identity.federation.config import CognitoPool, OIDCProvider


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable."""


SECRET_SETTINGS = frozenset({"secret_key", "database_url", "redis_url", "celery_broker_url",
                             "smtp_url"})

# Content types accepted for uploads unless KALPLA_UPLOAD_TYPES says otherwise: images, audio,
# video, PDF, office documents, plain text and archives. Types a browser would run as a page
# or script (text/html, image/svg+xml) are left out on purpose.
DEFAULT_UPLOAD_TYPES = (
    "image/png", "image/jpeg", "image/gif", "image/webp",
    "video/mp4", "video/webm", "audio/mpeg", "audio/mp4", "audio/ogg", "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "text/plain", "text/markdown", "text/csv", "application/zip",
)
_MEDIA_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/([a-z0-9][a-z0-9!#$&^_.+-]{0,63}|\*)")


@dataclass(frozen=True)
class Settings:
    instance_path: Path
    database_url: str
    secret_key: str
    plugins: tuple[str, ...] | None  # None: every installed plugin
    redis_url: str | None = None
    celery_broker_url: str | None = None
    celery_queue: str = "kalpla"
    job_timeout: int = 3600
    storage: str = "local"
    s3_bucket: str | None = None
    s3_sse: str = "AES256"
    s3_kms_key_id: str | None = None
    max_upload_bytes: int = 100 * 1024 * 1024
    upload_types: tuple[str, ...] = DEFAULT_UPLOAD_TYPES
    mail: str = "outbox"
    smtp_url: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    aws_max_attempts: int = 3
    aws_connect_timeout: int = 5
    aws_read_timeout: int = 30
    cors_origins: tuple[str, ...] = ()
    max_content_length: int = 16 * 1024 * 1024
    access_token_ttl: int = 900
    log_level: str = "INFO"
    base_url: str = "http://localhost:5000"
    # External identity providers (kalpla_core.identity.federation.config); shown by name.
    oidc_providers: tuple[OIDCProvider, ...] = ()
    cognito_user_pools: tuple[CognitoPool, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def redacted(self) -> dict[str, str]:
        """Every setting as text, secrets (and passwords inside URLs) masked."""
        out: dict[str, str] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None:
                text = ""
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            if f.name == "secret_key" and text:
                text = "********"
            elif f.name in SECRET_SETTINGS and text:
                text = _redact_url(text)
            out[f"KALPLA_{f.name.upper()}"] = text
        return out


def _redact_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":********@", 1)
    return url


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = env.get(name) or None
    if value is None:
        return None
    scheme = urlparse(value).scheme.split("+")[0]
    if scheme not in schemes:
        raise ConfigError(
            f"{name} must be a URL with scheme {' or '.join(schemes)}; got {scheme!r}")
    return value


def _upload_types(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("KALPLA_UPLOAD_TYPES")
    if raw is None or not raw.strip():
        return DEFAULT_UPLOAD_TYPES
    types = tuple(dict.fromkeys(t.strip().lower() for t in raw.split(",") if t.strip()))
    for media_type in types:
        if not _MEDIA_TYPE_RE.fullmatch(media_type):
            raise ConfigError("KALPLA_UPLOAD_TYPES entries must be media types such as "
                              f"image/png, or type/* for a whole family; got {media_type!r}")
    return types


def _secret_key(env: Mapping[str, str], instance_path: Path) -> str:
    value = env.get("KALPLA_SECRET_KEY")
    if value:
        if len(value) < 32:
            raise ConfigError("KALPLA_SECRET_KEY must be at least 32 characters long")
        return value
    # Generated once and kept in the instance folder, readable by the owner only.
    key_file = instance_path / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default: ``os.environ``), then apply ``overrides``.

    ``overrides`` uses the variable names (``KALPLA_DATABASE_URL``) or the lower-case field
    names (``database_url``); it is how tests and embedding code configure an app.
    """
    env: dict[str, str] = dict(os.environ if environ is None else environ)
    extra: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        name = key if key.startswith("KALPLA_") else f"KALPLA_{key.upper()}"
        if isinstance(value, list | tuple):
            value = ",".join(value)
        if value is None:
            env.pop(name, None)
        elif isinstance(value, str | int | Path):
            env[name] = str(value)
        else:
            extra[key] = value

    instance_path = Path(env.get("KALPLA_INSTANCE_PATH") or "./instance").resolve()
    database_url = env.get("KALPLA_DATABASE_URL") or f"sqlite:///{instance_path / 'kalpla.db'}"
    if urlparse(database_url).scheme.split("+")[0] not in ("sqlite", "postgresql"):
        raise ConfigError("KALPLA_DATABASE_URL must be a sqlite:// or postgresql:// URL")
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")

    plugins_raw = env.get("KALPLA_PLUGINS")
    plugins: tuple[str, ...] | None = None
    if plugins_raw is not None and plugins_raw.strip() != "*":
        plugins = tuple(p.strip() for p in plugins_raw.split(",") if p.strip())
        if len(set(plugins)) != len(plugins):
            raise ConfigError("KALPLA_PLUGINS names a plugin twice")

    storage = _choice(env, "KALPLA_STORAGE", "local", ("local", "s3"))
    s3_bucket = env.get("KALPLA_S3_BUCKET") or None
    if storage == "s3" and not s3_bucket:
        raise ConfigError("KALPLA_S3_BUCKET is required when KALPLA_STORAGE is s3")
    s3_sse = _choice(env, "KALPLA_S3_SSE", "AES256", ("AES256", "aws:kms"))
    s3_kms_key_id = env.get("KALPLA_S3_KMS_KEY_ID") or None
    if s3_kms_key_id and s3_sse != "aws:kms":
        raise ConfigError("KALPLA_S3_KMS_KEY_ID is only used with KALPLA_S3_SSE=aws:kms")
    # Any provider of the mail port (a plugin may add one, e.g. ses); the app checks at
    # start-up that a loaded plugin provides it.
    mail = env.get("KALPLA_MAIL") or "outbox"
    if not re.match(r"^[a-z][a-z0-9_]*$", mail):
        raise ConfigError(f"KALPLA_MAIL must be a mail provider name; got {mail!r}")
    smtp_url = _url(env, "KALPLA_SMTP_URL", ("smtp", "smtps"))
    if mail == "smtp" and not smtp_url:
        raise ConfigError("KALPLA_SMTP_URL is required when KALPLA_MAIL is smtp")

    # Deployments sharing one broker keep their jobs apart with distinct queue names.
    celery_queue = env.get("KALPLA_CELERY_QUEUE") or "kalpla"
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", celery_queue):
        raise ConfigError("KALPLA_CELERY_QUEUE must be 1–100 letters, digits or . _ : -; "
                          f"got {celery_queue!r}")

    log_level = (env.get("KALPLA_LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"KALPLA_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR; got {log_level!r}")

    cors = tuple(o.strip() for o in (env.get("KALPLA_CORS_ORIGINS") or "").split(",") if o.strip())
    for origin in cors:
        if origin != "*" and urlparse(origin).scheme not in ("http", "https"):
            raise ConfigError(f"KALPLA_CORS_ORIGINS entry {origin!r} must be an http(s) origin")

    from kalpla_core.identity.federation.config import parse_cognito_pools, parse_oidc_providers

    return Settings(
        instance_path=instance_path,
        database_url=database_url,
        secret_key=_secret_key(env, instance_path),
        plugins=plugins,
        redis_url=_url(env, "KALPLA_REDIS_URL", ("redis", "rediss", "unix")),
        celery_broker_url=_url(env, "KALPLA_CELERY_BROKER_URL",
                               ("redis", "rediss", "amqp", "amqps", "pyamqp")),
        celery_queue=celery_queue,
        job_timeout=_int(env, "KALPLA_JOB_TIMEOUT", 3600),
        storage=storage,
        s3_bucket=s3_bucket,
        s3_sse=s3_sse,
        s3_kms_key_id=s3_kms_key_id,
        max_upload_bytes=_int(env, "KALPLA_MAX_UPLOAD_BYTES", 100 * 1024 * 1024),
        upload_types=_upload_types(env),
        mail=mail,
        smtp_url=smtp_url,
        aws_region=env.get("KALPLA_AWS_REGION") or None,
        aws_endpoint_url=_url(env, "KALPLA_AWS_ENDPOINT_URL", ("http", "https")),
        aws_max_attempts=_int(env, "KALPLA_AWS_MAX_ATTEMPTS", 3),
        aws_connect_timeout=_int(env, "KALPLA_AWS_CONNECT_TIMEOUT", 5),
        aws_read_timeout=_int(env, "KALPLA_AWS_READ_TIMEOUT", 30),
        cors_origins=cors,
        max_content_length=_int(env, "KALPLA_MAX_CONTENT_LENGTH", 16 * 1024 * 1024),
        access_token_ttl=_int(env, "KALPLA_ACCESS_TOKEN_TTL", 900, minimum=30),
        log_level=log_level,
        base_url=(env.get("KALPLA_BASE_URL") or "http://localhost:5000").rstrip("/"),
        oidc_providers=parse_oidc_providers(env.get("KALPLA_OIDC_PROVIDERS")),
        cognito_user_pools=parse_cognito_pools(env.get("KALPLA_COGNITO_USER_POOLS")),
        extra=extra,
    )
