"""Capacity and the waitlist: a full course waitlists in order, a freed seat is offered to the
next student, an offer expires and passes on, and nobody jumps the queue."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select, update

from kalpla_core.cli import make_cli
from kalpla_core.courses.models import Course
from kalpla_core.db import utcnow
from kalpla_core.enrollment import waitlist
from kalpla_core.enrollment.models import Enrollment
from kalpla_core.enrollment.service import complete_enrollment, expire_enrollments
from kalpla_core.institutions.models import Institution
from kalpla_core.mail.models import OutboxMessage
from tests.enrollment.enrollment_support import (
    Scene,
    course,
    course_row,
    enroll_url,
    enrollments_of,
    ok,
    problem,
    scene,
    spy_plugin,
    transitions,
)


def _students(sc: Scene, n: int) -> list[Any]:
    return [sc.factories.user(roles={sc.w.school: ["student"]}) for _ in range(n)]


def _get(sc: Scene, user: Any, eid: str) -> dict[str, Any]:
    return ok(sc.client.get(f"/api/v1/enrollments/{eid}", headers=sc.w.auth(user)))


def _drop(sc: Scene, user: Any, eid: str) -> dict[str, Any]:
    return ok(sc.client.delete(f"/api/v1/enrollments/{eid}", headers=sc.w.auth(user)))


def _accept(sc: Scene, user: Any, eid: str) -> Any:
    return sc.client.post(f"/api/v1/enrollments/{eid}/accept-offer", headers=sc.w.auth(user))


def _offers_to(sc: Scene, email: str) -> list[OutboxMessage]:
    with sc.kalpla.db.session() as s:
        return list(s.scalars(select(OutboxMessage).where(
            OutboxMessage.to == email, OutboxMessage.template == "enrollment_offer")))


def _age_offer(sc: Scene, eid: str) -> None:
    with sc.kalpla.db.session() as s:
        s.execute(update(Enrollment).where(Enrollment.id == eid)
                  .values(offer_expires_at=utcnow() - timedelta(seconds=1)))


def test_full_course_waitlists_then_promotes_when_a_seat_frees(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    ann, ben, cat, dan = _students(sc, 4)
    cid = course(sc.client, sc.w, capacity=1)

    a = ok(sc.enroll(ann, cid), 201)
    assert a["status"] == "active"
    b = ok(sc.enroll(ben, cid), 201)
    assert b["status"] == "waitlisted" and b["waitlist_position"] == 1 and b["waitlisted_at"]
    assert b["offer_expires_at"] is None and b["activated_at"] is None
    c = ok(sc.enroll(cat, cid), 201)
    assert c["status"] == "waitlisted" and c["waitlist_position"] == 2
    assert course_row(sc.app, cid).enrollment_count == 1

    # Ann leaves: Ben, first in line, is offered her seat for 48 hours, by mail too.
    _drop(sc, ann, a["id"])
    offered = _get(sc, ben, b["id"])
    assert offered["status"] == "waitlisted" and offered["waitlist_position"] == 1
    held = datetime.fromisoformat(offered["offer_expires_at"]) - utcnow()
    assert timedelta(hours=47, minutes=59) < held <= timedelta(hours=48)
    (mail,) = _offers_to(sc, ben.email)
    assert "Intro" in mail.subject and f"/api/v1/enrollments/{b['id']}/accept-offer" in \
        mail.body_text
    assert _get(sc, cat, c["id"])["offer_expires_at"] is None
    assert _offers_to(sc, cat.email) == []

    # The seat is held for Ben: a newcomer queues behind Cat.
    d = ok(sc.enroll(dan, cid), 201)
    assert d["status"] == "waitlisted" and d["waitlist_position"] == 3

    accepted = ok(_accept(sc, ben, b["id"]))
    assert accepted["status"] == "active" and accepted["offer_expires_at"] is None
    assert accepted["activated_at"] and accepted["waitlist_position"] is None
    assert ok(_accept(sc, ben, b["id"]))["status"] == "active"  # accepting twice is fine
    assert course_row(sc.app, cid).enrollment_count == 1
    assert _get(sc, cat, c["id"])["waitlist_position"] == 1
    assert transitions(events, b["id"]) == [("created", "waitlisted"), ("waitlisted", "active")]
    assert events[-1].reason == "The seat offer was accepted."


def test_who_accepts_an_offer(make_app):
    sc = scene(make_app)
    ann, ben, cat = _students(sc, 3)
    cid = course(sc.client, sc.w, capacity=1)
    a = ok(sc.enroll(ann, cid), 201)["id"]
    b = ok(sc.enroll(ben, cid), 201)["id"]
    c = ok(sc.enroll(cat, cid), 201)["id"]
    # No offer yet.
    assert problem(_accept(sc, ben, b), 409)["type"] == "urn:kalpla:problem:no-offer"
    _drop(sc, sc.w.instructor, a)
    problem(_accept(sc, cat, b), 404)  # someone else's enrollment
    problem(sc.client.post(f"/api/v1/enrollments/{b}/accept-offer"), 401)
    assert problem(_accept(sc, sc.w.instructor, b), 403)["type"] == "urn:kalpla:problem:forbidden"
    problem(_accept(sc, cat, c), 409)  # Cat has no offer: Ben is first
    problem(_accept(sc, ann, a), 409)  # dropped
    problem(_accept(sc, ann, "nope"), 404)
    assert ok(_accept(sc, ben, b))["status"] == "active"


def test_an_unanswered_offer_passes_on_to_the_next_student(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"spy": spy_plugin(events)})
    ann, ben, cat = _students(sc, 3)
    cid = course(sc.client, sc.w, capacity=1)
    a = ok(sc.enroll(ann, cid), 201)["id"]
    b = ok(sc.enroll(ben, cid), 201)["id"]
    c = ok(sc.enroll(cat, cid), 201)["id"]
    _drop(sc, ann, a)
    _age_offer(sc, b)

    # Ben comes too late: told so, and the seat goes to Cat at once although the answer
    # is an error.
    p = problem(_accept(sc, ben, b), 409)
    assert p["type"] == "urn:kalpla:problem:offer-expired"
    assert _get(sc, ben, b)["status"] == "dropped"
    assert transitions(events, b)[-1] == ("waitlisted", "dropped")
    assert _get(sc, cat, c)["offer_expires_at"] is not None
    assert len(_offers_to(sc, cat.email)) == 1
    # Ben may join again, at the end of the line.
    again = ok(sc.enroll(ben, cid), 201)
    assert again["id"] == b and again["status"] == "waitlisted"
    assert again["offer_expires_at"] is None
    assert ok(_accept(sc, cat, c))["status"] == "active"
    assert course_row(sc.app, cid).enrollment_count == 1


def test_expired_offers_pass_on_periodically_and_through_the_cli(make_app):
    sc = scene(make_app)
    ann, ben, cat, dan = _students(sc, 4)
    cid = course(sc.client, sc.w, capacity=1)
    a = ok(sc.enroll(ann, cid), 201)["id"]
    b, c, d = (ok(sc.enroll(u, cid), 201)["id"] for u in (ben, cat, dan))
    _drop(sc, ann, a)
    with sc.kalpla.db.session() as s:
        assert waitlist.expire_offers(s, sc.kalpla, utcnow()) == 0
        assert waitlist.expire_offers(s, sc.kalpla, utcnow() + timedelta(hours=49)) == 1
    statuses = {e.id: (e.status, e.offer_expires_at is not None)
                for e in enrollments_of(sc.app, cid)}
    assert statuses[b] == ("dropped", False) and statuses[c] == ("waitlisted", True)
    assert statuses[d] == ("waitlisted", False)

    _age_offer(sc, c)
    result = CliRunner().invoke(make_cli(lambda: sc.app), ["enrollments", "expire"])
    assert result.exit_code == 0, result.output
    assert "0 enrollment(s) expired, 1 seat offer(s) passed on." in result.output
    assert _get(sc, dan, d)["offer_expires_at"] is not None
    assert _get(sc, cat, c)["status"] == "dropped"


def test_an_expired_offer_is_applied_when_read(make_app):
    sc = scene(make_app)
    ann, ben, cat = _students(sc, 3)
    cid = course(sc.client, sc.w, capacity=1)
    a = ok(sc.enroll(ann, cid), 201)["id"]
    b = ok(sc.enroll(ben, cid), 201)["id"]
    c = ok(sc.enroll(cat, cid), 201)["id"]
    _drop(sc, ann, a)
    _age_offer(sc, b)
    mine = ok(sc.client.get("/api/v1/me/enrollments", headers=sc.w.auth(ben)))["items"]
    assert [e["status"] for e in mine] == ["dropped"]
    assert _get(sc, cat, c)["offer_expires_at"] is not None


def test_offer_hours_follow_the_institution_setting(make_app):
    sc = scene(make_app)
    with sc.kalpla.db.session() as s:
        inst = s.get(Institution, sc.w.school.id)
        assert inst is not None
        inst.settings = {**inst.settings, waitlist.OFFER_HOURS_SETTING: 6}
    ann, ben = _students(sc, 2)
    cid = course(sc.client, sc.w, capacity=1)
    a = ok(sc.enroll(ann, cid), 201)["id"]
    b = ok(sc.enroll(ben, cid), 201)["id"]
    _drop(sc, ann, a)
    held = datetime.fromisoformat(_get(sc, ben, b)["offer_expires_at"]) - utcnow()
    assert timedelta(hours=5, minutes=59) < held <= timedelta(hours=6)


def test_dropping_from_the_waitlist_or_an_offer(make_app):
    sc = scene(make_app)
    ann, ben, cat, dan = _students(sc, 4)
    cid = course(sc.client, sc.w, capacity=1)
    a = ok(sc.enroll(ann, cid), 201)["id"]
    b, c, d = (ok(sc.enroll(u, cid), 201)["id"] for u in (ben, cat, dan))
    item = f"/api/v1/enrollments/{d}"
    r = sc.client.get(item, headers=sc.w.auth(dan))
    assert r.get_json()["waitlist_position"] == 3
    _drop(sc, cat, c)  # leaving the line moves those behind up, a new version to read
    r = sc.client.get(item, headers={**sc.w.auth(dan), "If-None-Match": r.headers["ETag"]})
    assert ok(r)["waitlist_position"] == 2
    assert sc.client.get(item, headers={**sc.w.auth(dan), "If-None-Match": r.headers["ETag"]}
                         ).status_code == 304
    _drop(sc, ann, a)
    assert _get(sc, ben, b)["offer_expires_at"] is not None
    _drop(sc, ben, b)  # declining the offer hands it on
    assert _get(sc, dan, d)["offer_expires_at"] is not None
    assert ok(_accept(sc, dan, d))["status"] == "active"
    assert course_row(sc.app, cid).enrollment_count == 1


def test_more_seats_go_to_those_waiting_before_newcomers(make_app):
    sc = scene(make_app)
    ann, ben, cat, dan = _students(sc, 4)
    cid = course(sc.client, sc.w, capacity=1)
    ok(sc.enroll(ann, cid), 201)
    b = ok(sc.enroll(ben, cid), 201)["id"]
    c = ok(sc.enroll(cat, cid), 201)["id"]
    # The course grows by two seats; the next request hands them to Ben and Cat.
    with sc.kalpla.db.session() as s:
        s.execute(update(Course).where(Course.id == cid).values(capacity=3))
    assert ok(sc.enroll(dan, cid), 201)["status"] == "waitlisted"
    assert _get(sc, ben, b)["offer_expires_at"] and _get(sc, cat, c)["offer_expires_at"]
    ok(_accept(sc, ben, b))
    ok(_accept(sc, cat, c))
    assert course_row(sc.app, cid).enrollment_count == 3
    roster = ok(sc.client.get(enroll_url(cid), headers=sc.w.auth(sc.w.admin)))["items"]
    assert sorted(e["status"] for e in roster) == ["active"] * 3 + ["waitlisted"]


def test_staff_enrollments_respect_capacity_too(make_app):
    sc = scene(make_app)
    cid = course(sc.client, sc.w, capacity=1)
    ok(sc.enroll(sc.w.student, cid), 201)
    body = ok(sc.enroll(sc.w.instructor, cid, user_id=sc.w.enrolled.id), 201)
    assert body["status"] == "waitlisted" and body["waitlist_position"] == 1


def test_completed_students_keep_their_seat(make_app):
    sc = scene(make_app)
    cid = course(sc.client, sc.w, capacity=1)
    eid = ok(sc.enroll(sc.w.student, cid), 201)["id"]
    with sc.kalpla.db.session() as s:
        complete_enrollment(s, sc.kalpla, eid)
    assert ok(sc.enroll(sc.w.enrolled, cid), 201)["status"] == "waitlisted"
    assert course_row(sc.app, cid).enrollment_count == 1


def test_enrolling_again_into_a_full_course_waits_without_old_access_dates(make_app):
    sc = scene(make_app)
    ann, ben = _students(sc, 2)
    cid = course(sc.client, sc.w, capacity=1, access_days=3)
    a = ok(sc.enroll(ann, cid), 201)["id"]
    with sc.kalpla.db.session() as s:
        assert expire_enrollments(s, sc.kalpla, utcnow() + timedelta(days=4)) == 1
    ok(sc.enroll(ben, cid), 201)  # takes the freed seat
    again = ok(sc.enroll(ann, cid), 201)
    assert again["id"] == a and again["status"] == "waitlisted"
    assert again["activated_at"] is None and again["expires_at"] is None
