"""Shared set-up of the streaming tests: a school with its people, a published course with a
live lesson scheduled over HTTP, an enrolled student."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kalpla_streaming.models import LiveSession
from sqlalchemy import select

from kalpla_core.db import utcnow
from kalpla_core.testing import Factories

PROBLEM = "application/problem+json"
HOOK_SECRET = "hook-secret-for-tests-0123456789"
EVENTBRIDGE_SECRET = "eventbridge-secret-for-tests-0123"


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


@dataclass
class School:
    app: Any
    client: Any
    factories: Factories
    school: Any
    other: Any
    instructor: Any
    mentor: Any  # a mentor of the school who does not teach the course
    admin: Any
    student: Any  # not enrolled
    enrolled: Any
    outsider: Any  # a student of another institution (which enabled streaming too)
    course_id: str = ""
    lesson_id: str = ""
    session_id: str = ""

    @property
    def kalpla(self) -> Any:
        return self.app.extensions["kalpla"]

    def auth(self, user: Any) -> dict[str, str]:
        if user is None:
            return {"Kalpla-Institution": self.school.slug}
        inst = self.other if user is self.outsider else self.school
        return self.factories.auth(user, inst)

    def post(self, path: str, user: Any, **kwargs: Any) -> Any:
        return self.client.post(f"/api/v1/streaming{path}", headers=self.auth(user), **kwargs)

    def get(self, path: str, user: Any, **kwargs: Any) -> Any:
        return self.client.get(f"/api/v1/streaming{path}", headers=self.auth(user), **kwargs)

    def live(self) -> LiveSession:
        with self.kalpla.db.session() as s:
            found = s.get(LiveSession, self.session_id)
            assert found is not None
            s.expunge(found)
            return found

    def schedule(self, starts: datetime | None = None, minutes: int = 60,
                 title: str = "Live Q&A") -> str:
        """The instructor adds a live lesson to the course; returns its session id."""
        starts = starts or utcnow() + timedelta(hours=1)
        module = ok(self.client.post(f"/api/v1/courses/{self.course_id}/modules",
                                     json={"title": f"Week {title}"},
                                     headers=self.auth(self.instructor)), 201)
        lesson = ok(self.client.post(
            f"/api/v1/modules/{module['id']}/lessons",
            json={"title": title, "kind": "live", "data": {
                "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(minutes=minutes)).isoformat()}},
            headers=self.auth(self.instructor)), 201)
        with self.kalpla.db.session() as s:
            session_id = s.scalar(select(LiveSession.id).where(
                LiveSession.lesson_id == lesson["id"]))
        assert session_id is not None
        self.lesson_id = lesson["id"]
        self.session_id = session_id
        return session_id


def school(make_app: Any, provider: str = "rtmp", settings: dict[str, Any] | None = None,
           **config: Any) -> School:
    """An app with the streaming plugin, enabled in ``school`` (and in ``other``), a published
    course with one enrolled student and one live lesson."""
    app = make_app(plugins=["streaming"], streaming={
        "hook_secret": HOOK_SECRET, "eventbridge_secret": EVENTBRIDGE_SECRET,
        **config.pop("streaming", {})}, **config)
    factories = Factories(app)
    plugin = {"streaming": {"provider": provider, **(settings or {})}}
    inst = factories.institution("school", plugins=plugin)
    other = factories.institution("other", plugins=plugin)
    s = School(
        app=app, client=app.test_client(), factories=factories, school=inst, other=other,
        instructor=factories.user(roles={inst: ["mentor"]}),
        mentor=factories.user(roles={inst: ["mentor"]}),
        admin=factories.user(roles={inst: ["admin"]}),
        student=factories.user(roles={inst: ["student"]}),
        enrolled=factories.user(roles={inst: ["student"]}),
        outsider=factories.user(roles={other: ["student"]}),
    )
    course = ok(s.client.post("/api/v1/courses", json={"slug": "live-101", "title": "Live"},
                              headers=s.auth(s.instructor)), 201)
    s.course_id = course["id"]
    ok(s.client.post(f"/api/v1/courses/{s.course_id}/publish", headers=s.auth(s.instructor)))
    ok(s.client.post(f"/api/v1/courses/{s.course_id}/enrollments",
                     headers=s.auth(s.enrolled)), 201)
    s.schedule()
    return s
