"""Capacity under concurrent requests: never more seated students than seats, no duplicate
enrollment, an exact enrollment count. Many threads, each with its own client and so its own
database session, enroll at once."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.enrollment.enrollment_support import (
    Scene,
    course,
    course_row,
    enroll_url,
    enrollments_of,
    scene,
)

ON_POSTGRES = (os.environ.get("KALPLA_TEST_DATABASE_URL") or "").startswith("postgresql")


def _race(sc: Scene, course_id: str, headers: list[dict[str, str]], workers: int,
          **request: Any) -> list[Any]:
    """POST an enrollment with each of ``headers`` at once; the responses' (status, body)."""

    def _one(h: dict[str, str]) -> tuple[int, dict[str, Any]]:
        client = sc.app.test_client()  # one client, one request context, one session
        r = client.post(enroll_url(course_id), headers=h, **request)
        return r.status_code, r.get_json(force=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_one, headers))


def _students(sc: Scene, n: int) -> list[dict[str, str]]:
    users = [sc.factories.user(roles={sc.w.school: ["student"]}) for _ in range(n)]
    return [sc.w.auth(u) for u in users]


def _assert_seated(sc: Scene, course_id: str, results: list[Any], seats: int,
                   requests: int) -> None:
    assert [s for s, _ in results] == [201] * requests, [b for s, b in results if s != 201][:3]
    answered = Counter(body["status"] for _, body in results)
    assert answered == {"active": seats, "waitlisted": requests - seats}
    rows = enrollments_of(sc.app, course_id)
    assert len(rows) == requests and len({r.user_id for r in rows}) == requests
    assert Counter(r.status for r in rows) == {"active": seats, "waitlisted": requests - seats}
    assert course_row(sc.app, course_id).enrollment_count == seats
    # The waitlist is a strict order: each newcomer was told the next place, 1…n.
    places = sorted(b["waitlist_position"] for _, b in results if b["status"] == "waitlisted")
    assert places == list(range(1, requests - seats + 1))


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="needs KALPLA_TEST_DATABASE_URL (PostgreSQL)")
def test_200_concurrent_enrollments_for_50_seats_on_postgresql(make_app):
    sc = scene(make_app)
    cid = course(sc.client, sc.w, capacity=50)
    results = _race(sc, cid, _students(sc, 200), workers=20)
    _assert_seated(sc, cid, results, seats=50, requests=200)


def test_concurrent_enrollments_never_overfill_a_course(make_app):
    sc = scene(make_app)
    cid = course(sc.client, sc.w, capacity=10)
    results = _race(sc, cid, _students(sc, 40), workers=8)
    _assert_seated(sc, cid, results, seats=10, requests=40)


def test_one_student_asking_many_times_at_once_is_enrolled_once(make_app):
    sc = scene(make_app)
    cid = course(sc.client, sc.w, capacity=5)
    headers = sc.w.auth(sc.w.student)
    results = _race(sc, cid, [headers] * 12, workers=6)
    statuses = Counter(s for s, _ in results)
    assert statuses == {201: 1, 409: 11}
    (row,) = enrollments_of(sc.app, cid)
    assert {b["enrollment_id"] for s, b in results if s == 409} == {row.id}
    assert course_row(sc.app, cid).enrollment_count == 1


def test_concurrent_drops_and_enrollments_keep_the_count_exact(make_app):
    sc = scene(make_app)
    cid = course(sc.client, sc.w, capacity=4)
    for h in _students(sc, 8):
        assert sc.app.test_client().post(enroll_url(cid), headers=h).status_code == 201
    rows = enrollments_of(sc.app, cid)
    seated = [r.id for r in rows if r.status == "active"]
    line = [r.id for r in sorted((r for r in rows if r.status == "waitlisted"),
                                 key=lambda r: (r.waitlisted_at, r.id))]
    assert len(seated) == 4 and len(line) == 4
    staff = sc.w.auth(sc.w.admin)

    def _drop(eid: str) -> int:
        return sc.app.test_client().delete(f"/api/v1/enrollments/{eid}",
                                           headers=staff).status_code

    def _join(h: dict[str, str]) -> int:
        return sc.app.test_client().post(enroll_url(cid), headers=h).status_code

    newcomers = _students(sc, 6)
    with ThreadPoolExecutor(max_workers=6) as pool:
        drops = [pool.submit(_drop, eid) for eid in seated[:2]]
        joins = [pool.submit(_join, h) for h in newcomers]
        assert [f.result() for f in drops] == [200, 200]
        assert [f.result() for f in joins] == [201] * 6
    rows = enrollments_of(sc.app, cid)
    assert Counter(r.status for r in rows) == {"active": 2, "dropped": 2, "waitlisted": 10}
    # The two freed seats are held for the first two in line, whatever the newcomers did.
    offered = {r.id for r in rows if r.offer_expires_at is not None}
    assert offered == set(line[:2])
    assert course_row(sc.app, cid).enrollment_count == 2
