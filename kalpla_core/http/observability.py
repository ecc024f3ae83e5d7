"""Request ids, JSON logs, Prometheus metrics and health endpoints."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import text

from kalpla_core.http.problems import problem

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kalpla_request_id", default=None)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# LogRecord attributes that are not extra fields.
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message",
                                                                               "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key != "request_id" and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _stamp_request_id(factory: Any) -> Any:
    """Wrap the log record factory so every record carries the request id at creation,
    whichever handler (or test capture) formats it later."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return record

    make._kalpla = True  # type: ignore[attr-defined]
    return make


def configure_logging(level: str) -> None:
    """Install the JSON formatter on the root logger once per process."""
    import time as _time

    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_kalpla", False):
        logging.setLogRecordFactory(_stamp_request_id(factory))
    root = logging.getLogger()
    if not any(getattr(h, "_kalpla", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JSONFormatter())
        handler.formatter.converter = _time.gmtime  # type: ignore[union-attr]
        handler._kalpla = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


class Metrics:
    """Prometheus collectors on a registry owned by the app (none global)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kalpla_http_requests", "HTTP requests answered",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("kalpla_http_request_duration_seconds",
                                 "Time to answer a request", ["method", "endpoint"],
                                 registry=self.registry)
        self.events_failed = Counter("kalpla_event_handler_failures",
                                     "Event handlers that raised", ["plugin", "event"],
                                     registry=self.registry)


def init_request_tracking(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        g.request_token = request_id_var.set(g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        rid = g.get("request_id")
        if rid:
            response.headers["X-Request-ID"] = rid
        started = g.get("request_started")
        endpoint = request.url_rule.rule if request.url_rule else "<unmatched>"
        metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        if started is not None:
            metrics.latency.labels(request.method, endpoint).observe(
                time.perf_counter() - started)
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id_var.reset(token)


health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Any:
    return {"status": "ok"}


@health.get("/readyz")
def readyz() -> Any:
    kalpla = current_app.extensions["kalpla"]
    checks: dict[str, str] = {}
    try:
        with kalpla.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if kalpla.settings.redis_url:
        try:
            kalpla.redis().ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem(503, "A dependency is not answering.", "not-ready", checks=checks)


@health.get("/metrics")
def metrics_endpoint() -> Response:
    registry = current_app.extensions["kalpla"].metrics.registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
