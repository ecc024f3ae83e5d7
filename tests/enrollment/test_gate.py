"""The enrollment gate: plugins allow, deny or hold enrollments pending, and move pending
enrollments on through the documented service calls."""

from __future__ import annotations

import types
from typing import Any

import pytest
from sqlalchemy import func, select

from kalpla_core.contract import Decision, EnrollmentRequest, PluginMeta
from kalpla_core.enrollment import service
from kalpla_core.hookspecs import hookimpl
from kalpla_core.http.problems import APIError
from kalpla_core.mail.models import OutboxMessage
from kalpla_core.mail.service import send_mail
from kalpla_core.toolkit import activate_pending, drop_enrollment, kalpla, reject_pending
from tests.enrollment.enrollment_support import (
    course,
    course_row,
    enrollments_of,
    gate_plugin,
    ok,
    problem,
    scene,
    spy_plugin,
    transitions,
)

CHECKOUT = {"type": "checkout", "url": "https://pay.example.test/c/123"}


def _deny(request: EnrollmentRequest) -> Decision:
    return Decision.deny("Your account is on hold.", "account-on-hold")


def _pay(request: EnrollmentRequest) -> Decision:
    return Decision.pending("Pay to enroll.", CHECKOUT, "payment-required")


def test_a_denial_is_a_403_with_the_plugins_reason_and_nothing_is_written(make_app):
    events: list[Any] = []
    asked: list[EnrollmentRequest] = []
    sc = scene(make_app, {"guard": gate_plugin("guard", _deny, asked),
                          "spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    p = problem(sc.enroll(w.student, cid), 403)
    assert p["type"] == "urn:kalpla:problem:account-on-hold"
    assert p["detail"] == "Your account is on hold." and p["plugin"] == "guard"
    assert enrollments_of(sc.app, cid) == [] and events == []
    assert course_row(sc.app, cid).enrollment_count == 0
    # The gate is told who asks for whom, and how.
    problem(sc.enroll(w.instructor, cid, user_id=w.student.id), 403)
    assert [(r.user_id, r.requested_by, r.source, r.course_id, r.institution_id)
            for r in asked] == [
        (w.student.id, w.student.id, "self", cid, w.school.id),
        (w.student.id, w.instructor.id, "staff", cid, w.school.id)]


def test_the_gate_is_asked_only_of_plugins_enabled_for_the_institution(make_app):
    asked: list[EnrollmentRequest] = []
    sc = scene(make_app, {"guard": gate_plugin("guard", _deny, asked)}, enabled=False)
    cid = course(sc.client, sc.w)
    assert ok(sc.enroll(sc.w.student, cid), 201)["status"] == "active"
    assert asked == []


def test_the_gate_is_not_asked_when_the_checks_before_it_fail(make_app):
    asked: list[EnrollmentRequest] = []
    sc = scene(make_app, {"guard": gate_plugin("guard", lambda r: None, asked)})
    w = sc.w
    cid = course(sc.client, w)
    ok(sc.enroll(w.student, cid), 201)
    problem(sc.enroll(w.student, cid), 409)
    problem(sc.enroll(w.outsider, cid), 403)
    assert len(asked) == 1  # abstaining lets the enrollment through


def test_any_deny_wins_over_a_pending_hold(make_app):
    sc = scene(make_app, {"pay": gate_plugin("pay", _pay),
                          "guard": gate_plugin("guard", _deny)})
    cid = course(sc.client, sc.w)
    assert problem(sc.enroll(sc.w.student, cid), 403)["plugin"] == "guard"
    assert enrollments_of(sc.app, cid) == []


def test_pending_holds_the_enrollment_with_the_action_until_the_plugin_activates_it(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"pay": gate_plugin("pay", _pay), "spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w, access_days=7)
    r = sc.enroll(w.student, cid)
    body = ok(r, 202)
    assert r.headers["Location"].endswith(f"/api/v1/enrollments/{body['id']}")
    assert body["status"] == "pending" and body["action"] == CHECKOUT
    assert body["pending_plugin"] == "pay" and body["pending_reason"] == "Pay to enroll."
    assert body["activated_at"] is None and body["expires_at"] is None
    assert course_row(sc.app, cid).enrollment_count == 0
    # Pending counts as enrolled: asking again is refused.
    assert problem(sc.enroll(w.student, cid), 409)["enrollment_status"] == "pending"

    with sc.kalpla.db.session() as s:
        done = activate_pending(s, sc.kalpla, body["id"], plugin="pay")
        assert done.status == "active" and done.pending_action is None
    with sc.kalpla.db.session() as s:  # a repeated webhook changes nothing
        assert activate_pending(s, sc.kalpla, body["id"], plugin="pay").status == "active"
    got = ok(sc.client.get(f"/api/v1/enrollments/{body['id']}", headers=w.auth(w.student)))
    assert got["status"] == "active" and got["action"] is None and got["expires_at"]
    assert course_row(sc.app, cid).enrollment_count == 1
    assert transitions(events) == [("created", "pending"), ("pending", "active")]
    assert events[-1].reason == "Approved by pay."


def test_rejecting_a_pending_enrollment_drops_it(make_app):
    events: list[Any] = []
    sc = scene(make_app, {"pay": gate_plugin("pay", _pay), "spy": spy_plugin(events)})
    w = sc.w
    cid = course(sc.client, w)
    eid = ok(sc.enroll(w.student, cid), 202)["id"]
    with sc.kalpla.db.session() as s, pytest.raises(APIError) as exc:
        reject_pending(s, sc.kalpla, eid, "Not ours.", plugin="other")
    assert exc.value.code == "pending-elsewhere"
    with sc.kalpla.db.session() as s:
        assert reject_pending(s, sc.kalpla, eid, "The payment failed.",
                              plugin="pay").status == "dropped"
    assert transitions(events) == [("created", "pending"), ("pending", "dropped")]
    assert events[-1].reason == "The payment failed."
    with sc.kalpla.db.session() as s, pytest.raises(APIError) as exc:
        activate_pending(s, sc.kalpla, eid)
    assert exc.value.code == "invalid-state"
    # A dropped enrollment may be asked for again: the gate is asked again too.
    again = ok(sc.enroll(w.student, cid), 202)
    assert again["id"] == eid and again["action"] == CHECKOUT


def test_a_pending_enrollment_activated_in_a_full_course_is_waitlisted(make_app):
    holds: dict[str, bool] = {}
    sc = scene(make_app, {"pay": gate_plugin(
        "pay", lambda r: _pay(r) if holds.get(r.user_id) else None)})
    w = sc.w
    cid = course(sc.client, w, capacity=1)
    holds[w.student.id] = True
    pending = ok(sc.enroll(w.student, cid), 202)["id"]
    ok(sc.enroll(w.enrolled, cid), 201)  # takes the only seat meanwhile
    with sc.kalpla.db.session() as s:
        assert activate_pending(s, sc.kalpla, pending, plugin="pay").status == "waitlisted"
    got = ok(sc.client.get(f"/api/v1/enrollments/{pending}", headers=w.auth(w.student)))
    assert got["status"] == "waitlisted" and got["waitlist_position"] == 1
    assert course_row(sc.app, cid).enrollment_count == 1


def test_drop_through_the_toolkit_and_bad_ids(make_app):
    sc = scene(make_app, {"pay": gate_plugin("pay", _pay)})
    cid = course(sc.client, sc.w)
    eid = ok(sc.enroll(sc.w.student, cid), 202)["id"]
    with sc.kalpla.db.session() as s:
        assert drop_enrollment(s, sc.kalpla, eid, "Changed my mind.").status == "dropped"
    for call in (activate_pending, service.complete_enrollment):
        with sc.kalpla.db.session() as s, pytest.raises(APIError) as exc:
            call(s, sc.kalpla, "0" * 32)
        assert exc.value.status == 404


def test_a_failing_gate_fails_closed(make_app):
    def _boom(request: EnrollmentRequest) -> Decision:
        raise RuntimeError("payment provider unreachable")

    sc = scene(make_app, {"flaky": gate_plugin("flaky", _boom)})
    cid = course(sc.client, sc.w)
    p = problem(sc.enroll(sc.w.student, cid), 500)
    assert "unreachable" not in str(p)
    assert enrollments_of(sc.app, cid) == []


def test_what_a_gate_writes_rolls_back_with_its_denial(make_app):
    """A plugin's writes while answering belong to the enrollment's transaction."""

    def _note_then_deny(session: Any, request: EnrollmentRequest) -> Decision:
        send_mail(session, kalpla(), "audit@example.test", "enrollment_offer", name="x",
                  course="c", enrollment_id="e", expires_at="t", link="l")
        return Decision.deny("No.", "no")

    plugin = types.SimpleNamespace(
        KALPLA_PLUGIN=PluginMeta(name="guard", version="1.0", core_requires=">=0.1"),
        kalpla_enrollment_requested=hookimpl(_note_then_deny))
    sc = scene(make_app, {"guard": plugin})
    cid = course(sc.client, sc.w)
    problem(sc.enroll(sc.w.student, cid), 403)
    with sc.kalpla.db.session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to == "audit@example.test")) == 0
