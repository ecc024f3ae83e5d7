"""Rate limits (per IP, per account, per user; RateLimit-* headers; 429 problems) and the
account lockout with exponential back-off that does not reveal whether an account exists.
Runs on memory storage, and on Redis too when ``KALPLA_TEST_REDIS_URL`` is set."""

from __future__ import annotations

import os
import types
from datetime import timedelta
from typing import Any

import pytest
from flask.views import MethodView
from sqlalchemy import select, update

from kalpla_core.contract import PluginMeta
from kalpla_core.db import utcnow
from kalpla_core.hookspecs import hookimpl
from kalpla_core.http.api import Blueprint
from kalpla_core.identity import accounts as accounts_service
from kalpla_core.identity import throttle
from kalpla_core.identity.models import LoginThrottle
from kalpla_core.ratelimit import limiter_of, per_ip, rate_limit
from kalpla_core.testing import Factories
from tests.identity.accounts_support import (
    PASSWORD,
    Accounts,
    bearer,
    fast_hashing,
    without_request_id,
)

REDIS_URL = os.environ.get("KALPLA_TEST_REDIS_URL")


@pytest.fixture
def accounts(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    fast_hashing(monkeypatch)
    return Accounts(app, client)


def _from(ip: str) -> dict[str, Any]:
    return {"environ_base": {"REMOTE_ADDR": ip}}


def test_limited_routes_carry_ratelimit_headers_and_answer_429_problems(accounts):
    forgot = accounts.client.post
    remaining = []
    for n in range(10):
        resp = forgot("/api/v1/auth/password/forgot", json={"email": f"u{n}@example.test"})
        assert resp.status_code == 202
        assert resp.headers["RateLimit-Limit"] == "10"
        assert resp.headers["RateLimit-Policy"] == "10;w=3600"
        assert 0 < int(resp.headers["RateLimit-Reset"]) <= 3600
        remaining.append(int(resp.headers["RateLimit-Remaining"]))
    assert remaining == list(range(9, -1, -1))

    refused = forgot("/api/v1/auth/password/forgot", json={"email": "u10@example.test"})
    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json["type"] == "urn:kalpla:problem:rate-limited"
    retry = int(refused.headers["Retry-After"])
    assert 0 < retry <= 3600 and refused.json["retry_after"] == retry
    assert refused.headers["RateLimit-Remaining"] == "0"
    # Another client is counted on its own.
    other = forgot("/api/v1/auth/password/forgot", json={"email": "u10@example.test"},
                   **_from("198.51.100.7"))
    assert other.status_code == 202


def test_per_account_limit_applies_across_addresses_of_clients(accounts):
    post = accounts.client.post
    for n in range(3):
        assert post("/api/v1/auth/password/forgot", json={"email": "Vic@Example.test"},
                    **_from(f"203.0.113.{n}")).status_code == 202
    same_account = post("/api/v1/auth/password/forgot", json={"email": "vic@example.test "},
                        **_from("203.0.113.9"))
    assert same_account.status_code == 429
    assert post("/api/v1/auth/password/forgot", json={"email": "wes@example.test"},
                **_from("203.0.113.9")).status_code == 202


def test_login_is_limited_per_ip(accounts):
    statuses = [accounts.login(f"nobody{n}@example.test", "wrong wrong wrong").status_code
                for n in range(31)]
    assert statuses == [401] * 30 + [429]
    assert accounts.login("nobody@example.test", **_from("192.0.2.1")).status_code == 401


def test_unlimited_routes_and_methods_have_no_ratelimit_headers(accounts):
    accounts.signed_up("xia@example.test")
    headers = bearer(accounts.tokens("xia@example.test")["access_token"])
    assert "RateLimit-Limit" not in accounts.client.get("/healthz").headers
    assert "RateLimit-Limit" not in accounts.client.get("/api/v1/me/mfa",
                                                        headers=headers).headers
    limited = accounts.client.post("/api/v1/me/mfa/totp", headers=headers)
    assert limited.headers["RateLimit-Limit"] == "10"


def _attempts(accounts: Accounts, email: str, password: str, n: int) -> list[Any]:
    return [accounts.login(email, password) for _ in range(n)]


def _shape(resp: Any) -> tuple[int, dict[str, Any], str | None]:
    return resp.status_code, without_request_id(resp.json), resp.headers.get("Retry-After")


def test_brute_force_is_locked_out_alike_for_real_and_unknown_accounts(accounts, app,
                                                                       monkeypatch):
    accounts.signed_up("yan@example.test")
    hashed_for: list[bool] = []
    real_verify = accounts_service.verify_password

    def spy(stored: str | None, password: str) -> bool:
        hashed_for.append(stored is not None)
        return real_verify(stored, password)

    monkeypatch.setattr(accounts_service, "verify_password", spy)
    kalpla = app.extensions["kalpla"]

    real = _attempts(accounts, "yan@example.test", "guess number one!", 5)
    ghost = _attempts(accounts, "ghost@example.test", "guess number one!", 5)
    assert [r.status_code for r in real] == [r.status_code for r in ghost] == [401] * 5
    assert [_shape(r) for r in real] == [_shape(r) for r in ghost]
    # The unknown account cost a hash just like the real one.
    assert hashed_for == [True] * 5 + [False] * 5

    # Locked: even the right password is refused, without being checked.
    locked = accounts.login("yan@example.test", PASSWORD)
    locked_ghost = accounts.login("ghost@example.test", PASSWORD)
    assert locked.status_code == locked_ghost.status_code == 429
    assert locked.json["type"] == "urn:kalpla:problem:login-locked"
    assert _shape(locked)[1]["detail"] == _shape(locked_ghost)[1]["detail"]
    assert 25 <= int(locked.headers["Retry-After"]) <= 30
    assert len(hashed_for) == 10

    # Once the lock has passed, the next failure locks twice as long.
    with kalpla.db.session() as s:
        s.execute(update(LoginThrottle).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert accounts.login("yan@example.test", "guess number six!").status_code == 401
    again = accounts.login("yan@example.test", PASSWORD)
    assert again.status_code == 429 and 55 <= int(again.headers["Retry-After"]) <= 60

    # After that one, the right password works and clears the count.
    with kalpla.db.session() as s:
        s.execute(update(LoginThrottle).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert accounts.login("yan@example.test", PASSWORD).status_code == 200
    key = throttle.account_key(kalpla.settings.secret_key, "yan@example.test")
    with kalpla.db.session() as s:
        assert s.get(LoginThrottle, key) is None
        keys = list(s.scalars(select(LoginThrottle.key_hash)))
    assert keys == [throttle.account_key(kalpla.settings.secret_key, "ghost@example.test")]
    assert all("@" not in k for k in keys)


def test_wrong_current_password_counts_towards_the_lockout(accounts):
    accounts.signed_up("zed@example.test")
    headers = bearer(accounts.tokens("zed@example.test")["access_token"])
    body = {"current_password": "not the password", "new_password": "a brand new passphrase"}
    statuses = [accounts.client.post("/api/v1/me/password", headers=headers, json=body,
                                     **_from(f"192.0.2.{n}")).status_code for n in range(6)]
    assert statuses == [403] * 5 + [429]
    assert accounts.login("zed@example.test").status_code == 429


def test_back_off_doubles_up_to_the_maximum():
    delays = [throttle.delay_after(n) for n in range(1, 14)]
    assert delays[:4] == [None] * 4
    assert [d.total_seconds() for d in delays[4:]] == [30, 60, 120, 240, 480, 960, 1920,
                                                      3600, 3600]


def test_failures_are_forgotten_after_a_quiet_day(app):
    kalpla = app.extensions["kalpla"]
    now = utcnow()
    with kalpla.db.session() as s:
        for _ in range(4):
            throttle.record_failure(s, "k" * 64, now)
        assert throttle.record_failure(s, "k" * 64, now + timedelta(hours=25)) is None
        assert s.get(LoginThrottle, "k" * 64).failures == 1


def test_plugins_declare_limits_with_the_same_api(make_app):
    bp = Blueprint("pinger", __name__, url_prefix="/")

    @bp.route("/ping")
    class Ping(MethodView):
        @rate_limit(per_ip("2/minute"))
        def get(self) -> Any:
            return {"pong": True}

        def post(self) -> Any:
            return {"pong": True}

    plugin = types.ModuleType("kalpla_pinger")
    plugin.KALPLA_PLUGIN = PluginMeta(name="pinger", version="1.0", core_requires=">=0.1")
    plugin.kalpla_blueprints = hookimpl(lambda: [bp])
    app = make_app(plugins=["pinger"], plugin_objects={"pinger": plugin})
    factories = Factories(app)
    factories.enable(factories.default_institution(), "pinger")
    limiter_of(app).reset()
    client = app.test_client()

    statuses = [client.get("/api/v1/pinger/ping").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    unlimited = client.post("/api/v1/pinger/ping")
    assert unlimited.status_code == 200 and "RateLimit-Limit" not in unlimited.headers


def test_counters_belong_to_the_app_on_memory_storage(make_app, monkeypatch):
    fast_hashing(monkeypatch)
    first, second = make_app(redis_url=None), make_app(redis_url=None)
    for _ in range(10):
        first.test_client().post("/api/v1/auth/password/forgot", json={"email": "a@b.test"},
                                 **_from("192.0.2.77"))
    assert type(limiter_of(first).storage).__name__ == "MemoryStorage"
    assert second.test_client().post("/api/v1/auth/password/forgot", json={"email": "a@b.test"},
                                     **_from("192.0.2.77")).status_code == 202


@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason="needs KALPLA_TEST_REDIS_URL")
def test_web_processes_share_counters_through_redis(make_app):
    first, second = make_app(redis_url=REDIS_URL), make_app(redis_url=REDIS_URL)
    assert type(limiter_of(first).storage).__name__ == "RedisStorage"
    limiter_of(first).reset()
    for n in range(10):
        resp = first.test_client().post("/api/v1/auth/password/forgot",
                                        json={"email": f"r{n}@b.test"}, **_from("192.0.2.88"))
        assert resp.status_code == 202
    shared = second.test_client().post("/api/v1/auth/password/forgot",
                                       json={"email": "r10@b.test"}, **_from("192.0.2.88"))
    assert shared.status_code == 429 and shared.headers["Retry-After"]
    keys = limiter_of(first).storage.storage.keys("kalpla-ratelimit*")
    assert keys and not any(b"@" in k for k in keys)
