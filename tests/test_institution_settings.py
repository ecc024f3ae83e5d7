"""The core's institution settings: validated on write, applied by the services that read
them."""

from __future__ import annotations

import pytest

from kalpla_core.enrollment.progress import video_completion_percent
from kalpla_core.enrollment.waitlist import offer_hours

PROBLEM = "application/problem+json"


@pytest.fixture
def school(factories):
    return factories.institution("school")


@pytest.fixture
def admin(factories, school):
    return factories.user(email="admin@example.test", roles={school: ["admin"]})


def _patch(client, factories, user, body):
    etag = client.get("/api/v1/institutions/school", headers=factories.auth(user)).headers["ETag"]
    return client.patch("/api/v1/institutions/school", json=body,
                        headers={**factories.auth(user), "If-Match": etag})


def test_an_admin_sets_the_core_settings_and_the_services_apply_them(client, factories, school,
                                                                     admin, db):
    assert video_completion_percent(db, school.id) == 90
    assert offer_hours(db, school.id) == 48
    settings = {"video_completion_percent": 75, "waitlist_offer_hours": 12,
                "require_mfa_for_roles": ["admin"]}
    r = _patch(client, factories, admin, {"settings": settings})
    assert r.status_code == 200, r.json
    assert r.json["settings"] == settings
    db.expire_all()
    assert video_completion_percent(db, school.id) == 75
    assert offer_hours(db, school.id) == 12


@pytest.mark.parametrize("settings, field", [
    ({"video_completion_percent": 0}, "video_completion_percent"),
    ({"video_completion_percent": 101}, "video_completion_percent"),
    ({"video_completion_percent": "90"}, "video_completion_percent"),
    ({"waitlist_offer_hours": -1}, "waitlist_offer_hours"),
    ({"waitlist_offer_hours": 1.5}, "waitlist_offer_hours"),
    ({"require_mfa_for_roles": ["owner"]}, "require_mfa_for_roles"),
    ({"require_mfa_for_roles": "admin"}, "require_mfa_for_roles"),
    ({"video_completion_pct": 80}, "video_completion_pct"),
])
def test_invalid_or_unknown_settings_are_refused_and_nothing_changes(client, factories, school,
                                                                     admin, db, settings, field):
    r = _patch(client, factories, admin, {"name": "Renamed", "settings": settings})
    assert r.status_code == 422, r.json
    assert r.content_type == PROBLEM
    assert field in str(r.json["errors"])
    db.expire_all()
    assert school.name != "Renamed" and school.settings == {}


def test_settings_are_shown_only_to_those_who_manage_the_institution(client, factories, school,
                                                                     admin):
    assert _patch(client, factories, admin,
                  {"settings": {"waitlist_offer_hours": 6}}).status_code == 200
    student = factories.user(roles={school: ["student"]})
    assert "settings" not in client.get("/api/v1/institutions/school",
                                        headers=factories.auth(student)).json
    r = client.get("/api/v1/institutions/school", headers=factories.auth(admin))
    assert r.json["settings"] == {"waitlist_offer_hours": 6}
