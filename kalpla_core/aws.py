"""The one factory of boto3 clients: every AWS-backed provider (storage, streaming, AI,
analytics) gets its clients here, so region, retries, timeouts and the endpoint override
(moto server, LocalStack) are set once, from the ``KALPLA_AWS_*`` settings.

Credentials are left to boto3's usual chain (environment, shared files, instance or task
role); none are read from Kalpla's settings.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla
    from kalpla_core.config import Settings

_CACHE = "kalpla_aws_clients"
_lock = threading.Lock()


def client_config(settings: Settings, service: str,
                  overrides: Mapping[str, Any] | None = None) -> Any:
    """The botocore ``Config`` of a client of ``service``; ``overrides`` (``Config``
    keyword arguments) replace the defaults they name, e.g. a caller that owns its retries
    passes ``{"retries": {"mode": "standard", "total_max_attempts": 5}}``."""
    from botocore.config import Config

    options: dict[str, Any] = {
        # total_max_attempts counts the first try (botocore's max_attempts counts retries).
        "retries": {"mode": "standard", "total_max_attempts": settings.aws_max_attempts},
        "connect_timeout": settings.aws_connect_timeout,
        "read_timeout": settings.aws_read_timeout,
    }
    if service == "s3":
        # Presigned POSTs and GETs must be SigV4 (every region accepts it, newer ones nothing
        # else); an endpoint override (moto server, LocalStack, MinIO) wants path-style URLs.
        options["signature_version"] = "s3v4"
        if settings.aws_endpoint_url:
            options["s3"] = {"addressing_style": "path"}
    options.update(overrides or {})
    return Config(**options)


def new_client(settings: Settings, service: str,
               overrides: Mapping[str, Any] | None = None) -> Any:
    """A new boto3 client of ``service`` configured from ``settings`` (and ``overrides``)."""
    import boto3

    return boto3.session.Session().client(
        service, region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url,
        config=client_config(settings, service, overrides))


def aws_client(kalpla: Kalpla, service: str, config: Mapping[str, Any] | None = None) -> Any:
    """The app's client of ``service`` with ``config`` overrides, built once per app and
    distinct overrides (boto3 clients are thread-safe)."""
    clients: dict[tuple[str, str], Any] = kalpla.app.extensions.setdefault(_CACHE, {})
    key = (service, json.dumps(dict(config or {}), sort_keys=True, default=repr))
    client = clients.get(key)
    if client is None:
        with _lock:
            client = clients.get(key)
            if client is None:
                client = clients[key] = new_client(kalpla.settings, service, config)
    return client
