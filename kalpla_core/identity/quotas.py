"""Per-API-key quotas, counted in the app's rate-limit store (:mod:`kalpla_core.ratelimit`:
process memory, or Redis when ``KALPLA_REDIS_URL`` is set, shared by every web process) with
its fixed-window strategy. No Flask here: the caller passes the strategy."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.strategies import RateLimiter

from kalpla_core.identity.apikeys import RatePlan

log = logging.getLogger("kalpla.quotas")

NAMESPACE = "apikey"


@dataclass(frozen=True)
class WindowState:
    """Where a key stands in its current window, for the ``RateLimit-*`` headers."""

    plan: RatePlan
    allowed: bool
    remaining: int
    reset: int  # seconds until the window ends

    def headers(self) -> dict[str, str]:
        out = {"RateLimit-Limit": str(self.plan.limit),
               "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset),
               "RateLimit-Policy": self.plan.policy}
        if not self.allowed:
            out["Retry-After"] = str(self.reset)
        return out


class QuotaCounter:
    """One hit per request made with a key, against its plan."""

    def __init__(self, strategy: Callable[[], RateLimiter]) -> None:
        # Looked up per hit: the limiter swaps in its memory fallback while Redis is down.
        self._strategy = strategy

    def hit(self, key_id: str, plan: RatePlan) -> WindowState | None:
        """The key's state after this request, or None when the store cannot be reached
        (the request then goes through uncounted rather than failing)."""
        item = RateLimitItemPerSecond(plan.limit, plan.window, namespace="KALPLA")
        try:
            strategy = self._strategy()
            allowed = strategy.hit(item, NAMESPACE, key_id)
            stats = strategy.get_window_stats(item, NAMESPACE, key_id)
        except Exception:
            log.warning("quota store unavailable; request not counted", exc_info=True)
            return None
        reset = max(math.ceil(stats.reset_time - time.time()), 1)
        return WindowState(plan, allowed, max(stats.remaining, 0), reset)
