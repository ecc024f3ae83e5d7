"""Per-API-key quotas: a fixed-window request counter, in Redis when the deployment has one
(shared by every web process), in process memory otherwise. No Flask here."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from kalpla_core.identity.apikeys import RatePlan

log = logging.getLogger("kalpla.quotas")


@dataclass(frozen=True)
class WindowState:
    """Where a key stands in the current window, for the ``RateLimit-*`` headers."""

    plan: RatePlan
    used: int
    reset: int  # seconds until the window ends

    @property
    def allowed(self) -> bool:
        return self.used <= self.plan.limit

    @property
    def remaining(self) -> int:
        return max(self.plan.limit - self.used, 0)

    def headers(self) -> dict[str, str]:
        out = {"RateLimit-Limit": str(self.plan.limit),
               "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset),
               "RateLimit-Policy": self.plan.policy}
        if not self.allowed:
            out["Retry-After"] = str(self.reset)
        return out


class QuotaCounter(Protocol):
    def hit(self, key_id: str, plan: RatePlan) -> WindowState | None: ...


def _window(plan: RatePlan, now: float) -> tuple[int, int]:
    """The current window's number and the seconds left in it (at least 1)."""
    number = int(now // plan.window)
    return number, max(int((number + 1) * plan.window - now), 1)


class MemoryQuotaCounter:
    """Counts in this process only: right for a single web process (the embedded default)."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: dict[str, tuple[int, int]] = {}  # key id -> (window number, count)

    def hit(self, key_id: str, plan: RatePlan) -> WindowState:
        number, reset = _window(plan, self._clock())
        with self._lock:
            window, count = self._hits.get(key_id, (number, 0))
            count = count + 1 if window == number else 1
            self._hits[key_id] = (number, count)
        return WindowState(plan, count, reset)


class RedisQuotaCounter:
    """One ``INCR`` per request on a key that expires with its window."""

    def __init__(self, redis: Any, clock: Any = time.time) -> None:
        self._redis = redis
        self._clock = clock

    def hit(self, key_id: str, plan: RatePlan) -> WindowState | None:
        number, reset = _window(plan, self._clock())
        name = f"kalpla:apikey-quota:{key_id}:{number}"
        try:
            pipe = self._redis.pipeline()
            pipe.incr(name)
            pipe.expire(name, plan.window + 1)
            count, _ = pipe.execute()
        except Exception:
            # An unreachable Redis must not take the API down: the request goes through.
            log.warning("quota store unavailable; request not counted", exc_info=True)
            return None
        return WindowState(plan, int(count), reset)
