"""Idempotency keys: a repeated request is answered from the first one's stored response; the
same key with another body is refused; keys belong to one caller and one route; failures are
not stored; concurrent repeats create one thing."""

from __future__ import annotations

import types
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from click.testing import CliRunner
from flask.views import MethodView
from sqlalchemy import select, update

from kalpla_core.cli import make_cli
from kalpla_core.contract import PluginMeta
from kalpla_core.db import utcnow
from kalpla_core.hookspecs import hookimpl
from kalpla_core.idempotency.models import IdempotencyKey
from kalpla_core.identity.models import Membership
from kalpla_core.toolkit import Blueprint, idempotent
from tests.enrollment.enrollment_support import (
    course,
    enroll_url,
    enrollments_of,
    ok,
    problem,
    scene,
    spy_plugin,
    transitions,
)

KEY = "Idempotency-Key"


def test_the_same_key_and_body_replays_the_first_response(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    headers = {**w.auth(w.student), KEY: "enroll-once-7f3a"}
    first = sc.client.post(enroll_url(cid), headers=headers)
    body = ok(first, 201)
    assert "Idempotent-Replayed" not in first.headers
    again = sc.client.post(enroll_url(cid), headers=headers)
    assert again.status_code == 201 and again.get_json() == body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"] == "application/json"
    # Without the key, the same request is a conflict: the key is what makes it a replay.
    problem(sc.client.post(enroll_url(cid), headers=w.auth(w.student)), 409)
    assert len(enrollments_of(sc.app, cid)) == 1
    assert transitions(events) == [("created", "active")]


def test_json_bodies_are_compared_by_content(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    headers = {**w.auth(w.instructor), KEY: "k-json", "Content-Type": "application/json"}
    first = ok(sc.client.post(enroll_url(cid), data=f'{{"user_id": "{w.student.id}"}}',
                              headers=headers), 201)
    r = sc.client.post(enroll_url(cid), data=f'{{ "user_id":"{w.student.id}" }}\n',
                       headers=headers)
    assert ok(r, 201) == first and r.headers["Idempotent-Replayed"] == "true"


def test_the_same_key_with_another_body_is_refused(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    headers = {**w.auth(w.instructor), KEY: "k-2"}
    ok(sc.client.post(enroll_url(cid), json={"user_id": w.student.id}, headers=headers), 201)
    p = problem(sc.client.post(enroll_url(cid), json={"user_id": w.enrolled.id},
                               headers=headers), 422)
    assert p["type"] == "urn:kalpla:problem:idempotency-key-reused"
    assert [e.user_id for e in enrollments_of(sc.app, cid)] == [w.student.id]


def test_keys_belong_to_one_caller_and_one_route(make_app):
    sc = scene(make_app)
    w = sc.w
    first, second = course(sc.client, w, slug="first"), course(sc.client, w, slug="second")
    for who in (w.student, w.enrolled):
        r = sc.client.post(enroll_url(first), headers={**w.auth(who), KEY: "shared"})
        assert ok(r, 201)["user_id"] == who.id and "Idempotent-Replayed" not in r.headers
    r = sc.client.post(enroll_url(second), headers={**w.auth(w.student), KEY: "shared"})
    assert ok(r, 201)["course_id"] == second
    assert len(enrollments_of(sc.app, first)) == 2


def test_a_failed_request_does_not_spend_its_key(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    newcomer = sc.factories.user()  # not yet a member of the school
    headers = {**w.auth(newcomer), KEY: "retry-me"}
    assert problem(sc.client.post(enroll_url(cid), headers=headers), 403)["type"] == \
        "urn:kalpla:problem:not-a-member"
    with sc.kalpla.db.session() as s:
        s.add(Membership(user_id=newcomer.id, institution_id=w.school.id, role="student"))
    r = sc.client.post(enroll_url(cid), headers=headers)
    assert ok(r, 201)["user_id"] == newcomer.id and "Idempotent-Replayed" not in r.headers


def test_bad_keys_and_callers_without_credentials(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    p = problem(sc.client.post(enroll_url(cid), headers={**w.auth(w.student), KEY: "x" * 201}),
                400)
    assert p["type"] == "urn:kalpla:problem:invalid-idempotency-key"
    problem(sc.client.post(enroll_url(cid), headers={**w.auth(w.student), KEY: "a b"}), 400)
    problem(sc.client.post(enroll_url(cid), headers={KEY: "anon"}), 401)
    assert enrollments_of(sc.app, cid) == []


def test_a_key_older_than_a_day_is_forgotten(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    headers = {**w.auth(w.instructor), KEY: "old"}
    ok(sc.client.post(enroll_url(cid), json={"user_id": w.student.id}, headers=headers), 201)
    with sc.kalpla.db.session() as s:
        s.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
    r = sc.client.post(enroll_url(cid), json={"user_id": w.enrolled.id}, headers=headers)
    assert ok(r, 201)["user_id"] == w.enrolled.id


def test_old_keys_are_purged_from_the_command_line(make_app):
    sc = scene(make_app)
    w = sc.w
    cid = course(sc.client, w)
    for n, who in enumerate((w.student, w.enrolled)):
        ok(sc.client.post(enroll_url(cid), headers={**w.auth(who), KEY: f"k{n}"}), 201)
    with sc.kalpla.db.session() as s:
        s.execute(update(IdempotencyKey).where(IdempotencyKey.key == "k0")
                  .values(created_at=utcnow() - timedelta(hours=25)))
    result = CliRunner().invoke(make_cli(lambda: sc.app), ["idempotency", "purge"])
    assert result.exit_code == 0, result.output
    assert "1 idempotency key(s) older than 24 hours removed." in result.output
    with sc.kalpla.db.session() as s:
        assert list(s.scalars(select(IdempotencyKey.key))) == ["k1"]


def test_concurrent_repeats_enroll_once(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    headers = {**w.auth(w.student), KEY: "double-click"}

    def _post(_: int) -> tuple[int, Any]:
        r = sc.app.test_client().post(enroll_url(cid), headers=headers)
        return r.status_code, r.get_json(force=True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(_post, range(16)))
    (row,) = enrollments_of(sc.app, cid)
    statuses = Counter(s for s, _ in results)
    assert set(statuses) <= {201, 409} and statuses[201] >= 1
    # Every success is the one enrollment; a 409 only says the key is still in use.
    assert {b["id"] for s, b in results if s == 201} == {row.id}
    assert {b["type"] for s, b in results if s == 409} <= {
        "urn:kalpla:problem:idempotency-key-in-use"}
    assert transitions(events) == [("created", "active")]


def _counter_plugin(calls: list[int]) -> types.SimpleNamespace:
    blp = Blueprint("tally", __name__, url_prefix="/counts")

    @blp.route("")
    class Counts(MethodView):
        @idempotent
        @blp.response(201)
        def post(self) -> Any:
            calls.append(1)
            return {"n": len(calls)}

    ns = types.SimpleNamespace(
        KALPLA_PLUGIN=PluginMeta(name="tally", version="1.0", core_requires=">=0.1"),
        kalpla_blueprints=hookimpl(lambda: [blp]))
    return ns


def test_plugins_use_the_decorator_from_the_toolkit(make_app):
    calls: list[int] = []
    sc = scene(make_app, {"tally": _counter_plugin(calls)})
    url = "/api/v1/tally/counts"
    headers = {**sc.w.auth(sc.w.student), KEY: "once"}
    assert ok(sc.client.post(url, headers=headers), 201) == {"n": 1}
    assert ok(sc.client.post(url, headers=headers), 201) == {"n": 1}
    assert ok(sc.client.post(url, headers=sc.w.auth(sc.w.student)), 201) == {"n": 2}
    assert len(calls) == 2
    # The header is documented on the routes that honour it.
    spec = sc.client.get("/api/openapi.json").get_json()
    for path in ("/api/v1/tally/counts", "/api/v1/courses/{course_id}/enrollments"):
        params = spec["paths"][path]["post"].get("parameters", [])
        assert any(p["name"] == KEY and p["in"] == "header" for p in params), path
