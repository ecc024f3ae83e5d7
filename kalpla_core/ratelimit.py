"""Rate limits on routes, per client IP, per account or per signed-in user (Flask-Limiter).

Counters live in process memory by default and in Redis when ``KALPLA_REDIS_URL`` is set, so
every web process shares them. Limited responses carry the ``RateLimit-Limit``,
``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds) and ``RateLimit-Policy`` headers; a
refused request gets a 429 problem (``rate-limited``) with ``Retry-After``.

Core and plugin routes declare their limits with :func:`rate_limit`, on a view function or on
a ``MethodView`` method (only that HTTP method is limited)::

    @blp.route("/token")
    class Token(MethodView):
        @rate_limit(per_ip("20/minute"), per_account("10/minute", field="email"))
        def post(self, body): ...

Limits are attached to each app when it starts (:func:`init_ratelimit`), so two apps in one
process never share counters unless they share a Redis.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded

from kalpla_core.http.problems import problem

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

log = logging.getLogger("kalpla.ratelimit")

EXTENSION = "kalpla_limiter"
_ATTR = "_kalpla_rate_limits"
_REDIS_PREFIX = "kalpla-ratelimit"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Rule:
    """``rate`` in Flask-Limiter notation (``"5/minute"``, ``"5/minute;50/hour"``), counted
    per value of ``key`` (which runs inside the request) in a bucket named ``scope``."""

    rate: str
    scope: str
    key: Callable[[], str]


def client_ip() -> str:
    """The client's address as the WSGI server reports it (deployments behind a proxy apply
    ``ProxyFix`` so that this is the real client)."""
    return request.remote_addr or "unknown"


def per_ip(rate: str) -> Rule:
    return Rule(rate, "ip", client_ip)


def per_account(rate: str, field: str = "email") -> Rule:
    """Counted per account named in the JSON body's ``field`` (an e-mail address), whether or
    not the account exists. The counter key is a keyed hash: no address reaches the store."""

    def key() -> str:
        from kalpla_core.identity.throttle import account_key

        body = request.get_json(silent=True)
        value = body.get(field) if isinstance(body, dict) else None
        if not isinstance(value, str) or not value.strip():
            return "none"
        return account_key(current_app.extensions["kalpla"].settings.secret_key, value)

    return Rule(rate, f"account-{field}", key)


def per_user(rate: str) -> Rule:
    """Counted per signed-in user; callers without valid credentials are counted per IP
    (such routes refuse them anyway)."""

    def key() -> str:
        from kalpla_core.context import current_principal
        from kalpla_core.http.problems import APIError

        try:
            principal = current_principal(required=False)
        except APIError:  # the view answers the 401; a key function must not raise
            principal = None
        return f"user:{principal.user.id}" if principal else f"ip:{client_ip()}"

    return Rule(rate, "user", key)


def rate_limit(*rules: Rule) -> Callable[[F], F]:
    """Declare limits on a view function or a ``MethodView`` method."""

    def mark(fn: F) -> F:
        existing: list[Rule] = list(getattr(fn, _ATTR, ()))
        setattr(fn, _ATTR, existing + list(rules))
        return fn

    return mark


def _declared(view: Any) -> list[tuple[Rule, list[str] | None]]:
    """The rules on a registered view: per method for class-based views."""
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return [(rule, None) for rule in getattr(view, _ATTR, ())]
    out = []
    for method in sorted(getattr(view_class, "methods", None) or ()):
        handler = getattr(view_class, method.lower(), None)
        out += [(rule, [method]) for rule in getattr(handler, _ATTR, ())]
    return out


def limiter_of(app: Flask) -> Limiter:
    return app.extensions[EXTENSION]


def init_ratelimit(app: Flask, kalpla: Kalpla) -> Limiter:
    """Create the app's limiter and attach every declared limit; call once every blueprint
    (core and plugins) is registered."""
    redis_url = kalpla.settings.redis_url
    limiter = Limiter(
        key_func=client_ip,
        storage_uri=redis_url or "memory://",
        storage_options={"key_prefix": _REDIS_PREFIX} if redis_url else {},
        strategy="fixed-window",
        headers_enabled=False,  # written below, in the IETF RateLimit-* form
        key_prefix="kalpla",
        # Should Redis fail, limits go on in process memory rather than failing requests.
        in_memory_fallback_enabled=True,
    )
    limiter.init_app(app)
    app.extensions[EXTENSION] = limiter
    limiter.request_filter(lambda: request.method == "OPTIONS")

    for endpoint, view in list(app.view_functions.items()):
        wrapped = view
        for rule, methods in _declared(view):
            wrapped = limiter.limit(rule.rate, key_func=rule.key, scope=rule.scope,
                                    methods=methods, per_method=True)(wrapped)
        app.view_functions[endpoint] = wrapped

    def too_many(exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        retry = max(1, math.ceil(current.window[0] - time.time())) if current else 60
        return problem(429, "Too many requests; slow down and retry later.", "rate-limited",
                       headers={"Retry-After": str(retry)}, retry_after=retry)

    app.register_error_handler(RateLimitExceeded, too_many)

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        current = limiter.current_limit
        if current is None or "RateLimit-Limit" in response.headers:
            return response
        try:
            reset = max(0, math.ceil(current.window[0] - time.time()))
            window = current.limit.get_expiry()
            response.headers["RateLimit-Limit"] = str(current.limit.amount)
            response.headers["RateLimit-Remaining"] = str(max(0, current.remaining))
            response.headers["RateLimit-Reset"] = str(reset)
            response.headers["RateLimit-Policy"] = f"{current.limit.amount};w={window}"
        except Exception:
            log.warning("rate-limit headers unavailable", exc_info=True)
        return response

    return limiter
