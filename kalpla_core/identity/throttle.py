"""Account lockout with a timed, exponential back-off.

Failures are counted per *account key*: an HMAC of the normalised e-mail address, whether or
not such an account exists, so probing an unknown address behaves exactly like probing a real
one and the table reveals no address. The ``LOCK_AFTER``-th failure in a row locks the key for
``BASE_DELAY``, and each further failure for twice as long as the one before (at most
``MAX_DELAY``); while locked, attempts are refused without checking the password. A success
clears the count, and a count left alone for ``FORGET_AFTER`` starts again from zero.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kalpla_core.crypto import derive_key
from kalpla_core.db import utcnow
from kalpla_core.http.problems import APIError
from kalpla_core.identity.models import LoginThrottle

LOCK_AFTER = 5
BASE_DELAY = timedelta(seconds=30)
MAX_DELAY = timedelta(hours=1)
FORGET_AFTER = timedelta(hours=24)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def account_key(secret: str, email: str) -> str:
    """The throttle key of an address (hex HMAC-SHA256 under a key derived for this use)."""
    key = derive_key(secret, "login-throttle")
    return hmac.new(key, normalise_email(email).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Lockout:
    until: datetime

    def retry_after(self, now: datetime | None = None) -> int:
        return max(1, math.ceil((self.until - (now or utcnow())).total_seconds()))


def locked_error(lock: Lockout, now: datetime | None = None) -> APIError:
    seconds = lock.retry_after(now)
    return APIError(429, "Too many failed attempts for this account; try again later.",
                    "login-locked", headers={"Retry-After": str(seconds)},
                    retry_after=seconds)


def current_lock(session: Session, key: str, now: datetime | None = None) -> Lockout | None:
    now = now or utcnow()
    row = session.get(LoginThrottle, key)
    if row is not None and row.locked_until is not None and row.locked_until > now:
        return Lockout(row.locked_until)
    return None


def check(session: Session, key: str, now: datetime | None = None) -> None:
    """Raise the 429 ``login-locked`` problem while ``key`` is locked."""
    lock = current_lock(session, key, now)
    if lock is not None:
        raise locked_error(lock, now)


def delay_after(failures: int) -> timedelta | None:
    """How long the ``failures``-th failure in a row locks the key (None: not at all)."""
    if failures < LOCK_AFTER:
        return None
    doublings = min(failures - LOCK_AFTER, 20)
    return min(BASE_DELAY * (2 ** doublings), MAX_DELAY)


def record_failure(session: Session, key: str, now: datetime | None = None) -> Lockout | None:
    """Count one failure; the lock it starts, if any."""
    now = now or utcnow()
    row = session.get(LoginThrottle, key, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(LoginThrottle(key_hash=key, failures=0, updated_at=now))
        except IntegrityError:
            pass  # a concurrent failure inserted it first
        row = session.get(LoginThrottle, key, with_for_update=True, populate_existing=True)
        assert row is not None
    elif row.updated_at < now - FORGET_AFTER:
        row.failures = 0
    row.failures += 1
    row.updated_at = now
    delay = delay_after(row.failures)
    row.locked_until = now + delay if delay else None
    session.flush()
    return Lockout(row.locked_until) if row.locked_until else None


def record_success(session: Session, key: str) -> None:
    session.execute(delete(LoginThrottle).where(LoginThrottle.key_hash == key))
