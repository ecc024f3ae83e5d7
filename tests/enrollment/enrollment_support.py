"""Shared set-up of the enrollment tests: an app with chosen test plugins, a school with its
people (``tests.courses.structure_support.World``) and courses created over HTTP."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from kalpla_core.contract import (
    Decision,
    EnrollmentCreated,
    EnrollmentRequest,
    EnrollmentStatusChanged,
    PluginMeta,
)
from kalpla_core.courses.models import Course
from kalpla_core.enrollment.models import Enrollment
from kalpla_core.hookspecs import hookimpl
from kalpla_core.testing import Factories
from tests.courses.structure_support import World, ok, problem, world

__all__ = ["Scene", "World", "course", "course_row", "enroll_url", "enrollments_of",
           "gate_plugin", "ok", "problem", "scene", "spy_plugin", "transitions", "world"]


@dataclass
class Scene:
    app: Any
    client: Any
    factories: Factories
    w: World

    @property
    def kalpla(self) -> Any:
        return self.app.extensions["kalpla"]

    def enroll(self, user: Any, course_id: str, **body: Any) -> Any:
        return self.client.post(enroll_url(course_id), json=body or None,
                                headers=self.w.auth(user))


def scene(make_app: Callable[..., Any], plugins: Mapping[str, Any] | None = None,
          enabled: bool = True) -> Scene:
    """An app loading ``plugins`` (name → module), with a school that enables them unless
    ``enabled`` is false."""
    plugins = dict(plugins or {})
    app = make_app(plugins=list(plugins), plugin_objects=plugins or None)
    factories = Factories(app)
    w = world(factories, plugins=list(plugins) if enabled else ())
    return Scene(app, app.test_client(), factories, w)


def course(client: Any, w: World, publish: bool = True, slug: str = "intro",
           **fields: Any) -> str:
    """A course created by ``w.instructor`` with ``fields`` (capacity, access_days, …)."""
    body = ok(client.post("/api/v1/courses", json={"slug": slug, "title": slug.title(),
                                                   **fields},
                          headers=w.auth(w.instructor)), 201)
    if publish:
        ok(client.post(f"/api/v1/courses/{body['id']}/publish", headers=w.auth(w.instructor)))
    return body["id"]


def enroll_url(course_id: str) -> str:
    return f"/api/v1/courses/{course_id}/enrollments"


def enrollments_of(app: Any, course_id: str) -> list[Enrollment]:
    with app.extensions["kalpla"].db.session() as s:
        return list(s.scalars(select(Enrollment).where(Enrollment.course_id == course_id)
                              .order_by(Enrollment.created_at, Enrollment.id)))


def course_row(app: Any, course_id: str) -> Course:
    with app.extensions["kalpla"].db.session() as s:
        found = s.get(Course, course_id)
        assert found is not None
        return found


def gate_plugin(name: str, answer: Callable[[EnrollmentRequest], Decision | None],
                asked: list[EnrollmentRequest] | None = None) -> types.SimpleNamespace:
    """A plugin whose enrollment gate answers ``answer(request)`` (recorded in ``asked``)."""
    ns = types.SimpleNamespace()
    ns.KALPLA_PLUGIN = PluginMeta(name=name, version="1.0", core_requires=">=0.1")

    def _gate(session: Any, request: EnrollmentRequest) -> Decision | None:
        if asked is not None:
            asked.append(request)
        return answer(request)

    ns.kalpla_enrollment_requested = hookimpl(_gate)
    return ns


def spy_plugin(events: list[Any], name: str = "spy") -> types.SimpleNamespace:
    """A plugin that records the enrollment events it hears."""
    ns = types.SimpleNamespace()
    ns.KALPLA_PLUGIN = PluginMeta(name=name, version="1.0", core_requires=">=0.1")
    ns.kalpla_enrollment_created = hookimpl(lambda event: events.append(event))
    ns.kalpla_enrollment_status_changed = hookimpl(lambda event: events.append(event))
    return ns


def transitions(events: list[Any], enrollment_id: str | None = None) -> list[tuple[str, ...]]:
    """The events as ``("created", status)`` and ``(old, new)`` pairs, in order."""
    out: list[tuple[str, ...]] = []
    for e in events:
        if enrollment_id is not None and e.enrollment_id != enrollment_id:
            continue
        if isinstance(e, EnrollmentCreated):
            out.append(("created", e.status))
        elif isinstance(e, EnrollmentStatusChanged):
            out.append((e.old_status, e.new_status))
    return out
