"""Security headers on every response and CORS for configured origins."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask, Response, request

API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; frame-ancestors 'none'")

ALLOWED_HEADERS = ("Authorization, Content-Type, If-Match, If-None-Match, Idempotency-Key, "
                   "Kalpla-Institution, X-Request-ID")
EXPOSED_HEADERS = "ETag, Link, Location, Retry-After, X-Request-ID, RateLimit-Limit, " \
                  "RateLimit-Remaining, RateLimit-Reset"


def init_security(app: Flask, cors_origins: Sequence[str]) -> None:
    allow_any = "*" in cors_origins
    allowed = set(cors_origins)

    @app.before_request
    def _preflight() -> Response | None:
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            resp = app.response_class(status=204)
            return resp
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        csp = DOCS_CSP if request.path.startswith("/api/docs") else API_CSP
        h.setdefault("Content-Security-Policy", csp)
        origin = request.headers.get("Origin")
        if origin and (allow_any or origin in allowed):
            h["Access-Control-Allow-Origin"] = "*" if allow_any else origin
            h.add("Vary", "Origin")
            h["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            if request.method == "OPTIONS":
                h["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
                h["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
                h["Access-Control-Max-Age"] = "600"
        return response
