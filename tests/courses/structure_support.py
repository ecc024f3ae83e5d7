"""Shared set-up of the structure, outline and access tests: a school with its people, a
course built over HTTP, enrollments and files inserted directly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kalpla_core.db import new_id, utcnow
from kalpla_core.enrollment.models import Enrollment
from kalpla_core.storage.models import StoredFile
from kalpla_core.testing import Factories

PROBLEM = "application/problem+json"


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


@dataclass
class World:
    """Everyone a test of course content needs, in ``school`` unless said otherwise."""

    factories: Factories
    school: Any
    other: Any
    instructor: Any  # a mentor who creates (and so instructs) the course
    mentor: Any  # a mentor of the school who does not instruct it
    admin: Any
    student: Any
    enrolled: Any  # a student of the school with an active enrollment once enroll() ran
    outsider: Any  # a student of another institution
    platform_admin: Any

    def auth(self, user: Any) -> dict[str, str]:
        if user is None:
            return {"Kalpla-Institution": self.school.slug}
        inst = self.other if user is self.outsider else self.school
        return self.factories.auth(user, inst)

    def people(self) -> dict[str, Any]:
        """Each caller by name; ``None`` is the anonymous one."""
        return {"anonymous": None, "student": self.student, "outsider": self.outsider,
                "mentor": self.mentor, "enrolled": self.enrolled,
                "instructor": self.instructor, "admin": self.admin,
                "platform_admin": self.platform_admin}


def world(factories: Factories, plugins: Any = ()) -> World:
    school = factories.institution("school", plugins=plugins)
    other = factories.institution("other")
    return World(
        factories=factories, school=school, other=other,
        instructor=factories.user(name="Ines Instructor", roles={school: ["mentor"]}),
        mentor=factories.user(name="Mo Mentor", roles={school: ["mentor"]}),
        admin=factories.user(name="Ada Admin", roles={school: ["admin"]}),
        student=factories.user(roles={school: ["student"]}),
        enrolled=factories.user(roles={school: ["student"]}),
        outsider=factories.user(roles={other: ["student"]}),
        platform_admin=factories.user(platform_admin=True),
    )


def create_course(client: Any, w: World, publish: bool = False, slug: str = "intro") -> str:
    body = ok(client.post("/api/v1/courses", json={"slug": slug, "title": "Introduction"},
                          headers=w.auth(w.instructor)), 201)
    if publish:
        ok(client.post(f"/api/v1/courses/{body['id']}/publish", headers=w.auth(w.instructor)))
    return body["id"]


def add_module(client: Any, w: World, course_id: str, title: str = "Module",
               **fields: Any) -> dict[str, Any]:
    return ok(client.post(f"/api/v1/courses/{course_id}/modules",
                          json={"title": title, **fields}, headers=w.auth(w.instructor)), 201)


def add_lesson(client: Any, w: World, module_id: str, title: str = "Lesson",
               **fields: Any) -> dict[str, Any]:
    body = {"title": title, "kind": "text", "body": f"# {title}", **fields}
    return ok(client.post(f"/api/v1/modules/{module_id}/lessons", json=body,
                          headers=w.auth(w.instructor)), 201)


def enroll(app: Any, user: Any, course_id: str, status: str = "active",
           expires_in: timedelta | None = None) -> None:
    """An enrollment row, as the enrollment service will write it."""
    with app.extensions["kalpla"].db.session() as s:
        from kalpla_core.courses.models import Course

        course = s.get(Course, course_id)
        assert course is not None
        s.add(Enrollment(institution_id=course.institution_id, course_id=course_id,
                         user_id=user.id, status=status, activated_at=utcnow(),
                         expires_at=utcnow() + expires_in if expires_in is not None else None))


def stored_file(app: Any, institution: Any, content_type: str = "video/mp4",
                status: str = "ready", course_id: str | None = None,
                filename: str = "clip.mp4") -> str:
    with app.extensions["kalpla"].db.session() as s:
        file = StoredFile(institution_id=institution.id, course_id=course_id, provider="local",
                          storage_key=f"test/{new_id()}/{filename}",
                          filename=filename, content_type=content_type, size=1234,
                          status=status)
        s.add(file)
        s.flush()
        return file.id
