"""Shared set-up of the enrollment tests: a school with its people (see
``tests.courses.structure_support.World``) and courses created over HTTP."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from kalpla_core.contract import Decision, EnrollmentRequest, PluginMeta
from kalpla_core.hookspecs import hookimpl
from tests.courses.structure_support import World, ok, problem, world

__all__ = ["World", "course", "enroll_url", "gate_plugin", "ok", "problem", "world"]


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


def gate_plugin(name: str, answer: Callable[[EnrollmentRequest], Decision | None],
                seen: list[Any] | None = None) -> types.SimpleNamespace:
    """A plugin whose enrollment gate answers ``answer(request)`` and which records the
    enrollment events it hears in ``seen``."""
    ns = types.SimpleNamespace()
    ns.KALPLA_PLUGIN = PluginMeta(name=name, version="1.0", core_requires=">=0.1")
    ns.kalpla_enrollment_requested = hookimpl(
        lambda session, request: answer(request))
    if seen is not None:
        ns.kalpla_enrollment_created = hookimpl(lambda event: seen.append(event))
        ns.kalpla_enrollment_status_changed = hookimpl(lambda event: seen.append(event))
    return ns
