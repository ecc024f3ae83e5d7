"""Routes of a course's structure: modules, lessons, their order, the outline, and lesson
content behind the access rules of :mod:`kalpla_core.courses.access`."""

from __future__ import annotations

from typing import Any

from flask import after_this_request, request, url_for
from flask.views import MethodView

from kalpla_core.context import current_user, db_session, has_permission, kalpla
from kalpla_core.courses import access, service, structure
from kalpla_core.courses.models import Course, Lesson, Module
from kalpla_core.courses.structure_schemas import (
    LessonFileSchema,
    LessonOrderOutSchema,
    LessonOrderSchema,
    LessonPatchSchema,
    LessonSchema,
    LessonSummarySchema,
    LessonWriteSchema,
    ModuleOrderOutSchema,
    ModuleOrderSchema,
    ModulePatchSchema,
    ModuleSchema,
    ModuleWriteSchema,
    OutlineSchema,
)
from kalpla_core.http.api import Blueprint
from kalpla_core.http.etag import conditional_get, etag_of, require_if_match, set_etag
from kalpla_core.http.pagination import PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.storage import service as files
from kalpla_core.storage.models import StoredFile

blp = Blueprint("structure", __name__, url_prefix="/api/v1",
                description="A course's modules and lessons, their order and the outline; "
                            "lesson bodies and files for staff, enrolled students and "
                            "free previews.")

PUBLIC = "public, max-age=60"
PRIVATE = "private, no-store"
BEARER = [{"bearer": []}]


def _caller() -> service.Caller:
    return service.Caller(current_user(required=False), has_permission)


def _cache_control(value: str) -> None:
    @after_this_request
    def _set(response: Any) -> Any:
        response.headers["Cache-Control"] = value
        return response


def _cache_for(course: Course) -> None:
    _cache_control(PUBLIC if course.status == "published" else PRIVATE)


def structure_etag(course: Course) -> str:
    """The ETag re-orders must send in ``If-Match``; it changes with every change to the
    course's tree (``structure_version``)."""
    return etag_of("structure", course.id, course.structure_version)


def _module_etag(module: Module) -> str:
    return etag_of("module", module.id, module.version)


def _lesson_etag(lesson: Lesson) -> str:
    return etag_of("lesson", lesson.id, lesson.version)


def _if_match_when_sent(etag: str) -> None:
    if "If-Match" in request.headers:
        require_if_match(etag)


def _structure_precondition(course: Course) -> int:
    """Check ``If-Match`` against the structure ETag; the version it names."""
    require_if_match(structure_etag(course))
    return course.structure_version


def _require_reader(lesson: Lesson) -> None:
    """Pass if the caller may read the lesson's content; else 401 (anonymous, when signing in
    could help) or 403 with the reason."""
    user = current_user(required=False)
    decision = access.can_read_lesson(db_session(), kalpla(), user, lesson, can=has_permission)
    if decision.outcome == "allow":
        return
    if user is None and not decision.plugin:
        raise APIError(401, decision.reason, "unauthorized", reason_code=decision.code,
                       headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})
    raise APIError(403, decision.reason, decision.code or "forbidden",
                   plugin=decision.plugin or None,
                   action=dict(decision.action) if decision.action else None)


# --- modules ----------------------------------------------------------------------------------

@blp.route("/courses/<course_id>/modules")
class CourseModules(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ModuleSchema))
    def get(self, args: dict[str, Any], course_id: str) -> Any:
        """The course's modules in order (whoever sees the course)."""
        session = db_session()
        course = service.visible_course(session, _caller(), course_id)
        page = paginate(session, structure.modules_statement(course), structure.MODULE_ORDER,
                        args["limit"], args["cursor"])
        _cache_for(course)
        return page_response(page)

    @blp.arguments(ModuleWriteSchema)
    @blp.response(201, ModuleSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], course_id: str) -> Any:
        """Add a module at the end, or at ``position`` (the course's staff)."""
        session = db_session()
        course = service.editable_course(session, _caller(), course_id)
        module = structure.create_module(session, course, data)
        set_etag(_module_etag(module))
        _cache_control(PRIVATE)
        return module, {"Location": url_for("structure.ModuleItem", module_id=module.id)}


@blp.route("/courses/<course_id>/modules/order")
class CourseModuleOrder(MethodView):
    @blp.response(200, ModuleOrderOutSchema)
    def get(self, course_id: str) -> Any:
        """The modules' ids in order, tagged with the structure ETag to re-order them."""
        session = db_session()
        course = service.visible_course(session, _caller(), course_id)
        _cache_control(PRIVATE)
        conditional_get(structure_etag(course))
        return {"module_ids": structure.module_order(session, course)}

    @blp.arguments(ModuleOrderSchema)
    @blp.response(200, ModuleOrderOutSchema)
    @blp.doc(security=BEARER)
    def put(self, data: dict[str, Any], course_id: str) -> Any:
        """Re-order the modules: every module id of the course, once, in the new order
        (the course's staff; ``If-Match`` with the structure ETag)."""
        session = db_session()
        course = service.editable_course(session, _caller(), course_id)
        expected = _structure_precondition(course)
        order = structure.reorder_modules(session, course, data["module_ids"], expected)
        set_etag(structure_etag(course))
        _cache_control(PRIVATE)
        return {"module_ids": order}


@blp.route("/modules/<module_id>")
class ModuleItem(MethodView):
    @blp.response(200, ModuleSchema)
    def get(self, module_id: str) -> Any:
        """A module (whoever sees its course)."""
        module, course = structure.visible_module(db_session(), _caller(), module_id)
        _cache_for(course)
        conditional_get(_module_etag(module))
        return module

    @blp.arguments(ModulePatchSchema)
    @blp.response(200, ModuleSchema)
    @blp.doc(security=BEARER)
    def patch(self, data: dict[str, Any], module_id: str) -> Any:
        """Rename a module or move it to ``position`` (the course's staff; ``If-Match``)."""
        session = db_session()
        module, course = structure.editable_module(session, _caller(), module_id)
        require_if_match(_module_etag(module))
        module = structure.update_module(session, course, module, data)
        set_etag(_module_etag(module))
        _cache_control(PRIVATE)
        return module

    @blp.response(204)
    @blp.doc(security=BEARER)
    def delete(self, module_id: str) -> Any:
        """Delete a module and its lessons (the course's staff; ``If-Match`` honoured)."""
        session = db_session()
        module, course = structure.editable_module(session, _caller(), module_id)
        _if_match_when_sent(_module_etag(module))
        structure.delete_module(session, kalpla(), course, module)
        return None


# --- lessons ----------------------------------------------------------------------------------

@blp.route("/modules/<module_id>/lessons")
class ModuleLessons(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(LessonSummarySchema))
    def get(self, args: dict[str, Any], module_id: str) -> Any:
        """The module's lessons in order, without their content (whoever sees the course)."""
        session = db_session()
        module, course = structure.visible_module(session, _caller(), module_id)
        page = paginate(session, structure.lessons_statement(module), structure.LESSON_ORDER,
                        args["limit"], args["cursor"])
        _cache_for(course)
        return page_response(page)

    @blp.arguments(LessonWriteSchema)
    @blp.response(201, LessonSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], module_id: str) -> Any:
        """Add a lesson at the end of the module, or at ``position`` (the course's staff)."""
        session = db_session()
        module, course = structure.editable_module(session, _caller(), module_id)
        lesson = structure.create_lesson(session, kalpla(), course, module, data)
        set_etag(_lesson_etag(lesson))
        _cache_control(PRIVATE)
        return lesson, {"Location": url_for("structure.LessonItem", lesson_id=lesson.id)}


@blp.route("/modules/<module_id>/lessons/order")
class ModuleLessonOrder(MethodView):
    @blp.response(200, LessonOrderOutSchema)
    def get(self, module_id: str) -> Any:
        """The module's lesson ids in order, tagged with the course's structure ETag."""
        session = db_session()
        module, course = structure.visible_module(session, _caller(), module_id)
        _cache_control(PRIVATE)
        conditional_get(structure_etag(course))
        return {"lesson_ids": structure.lesson_order(session, module)}

    @blp.arguments(LessonOrderSchema)
    @blp.response(200, LessonOrderOutSchema)
    @blp.doc(security=BEARER)
    def put(self, data: dict[str, Any], module_id: str) -> Any:
        """Re-order the module's lessons: every lesson id of the module, once, in the new
        order (the course's staff; ``If-Match`` with the course's structure ETag)."""
        session = db_session()
        module, course = structure.editable_module(session, _caller(), module_id)
        expected = _structure_precondition(course)
        order = structure.reorder_lessons(session, kalpla(), course, module,
                                          data["lesson_ids"], expected)
        set_etag(structure_etag(course))
        _cache_control(PRIVATE)
        return {"lesson_ids": order}


@blp.route("/lessons/<lesson_id>")
class LessonItem(MethodView):
    @blp.response(200, LessonSchema)
    def get(self, lesson_id: str) -> Any:
        """A lesson with its content: for the course's staff, its enrolled students and, for
        a free preview, anyone. 404 when the course is not visible, else 401/403 with the
        reason when the content is not readable."""
        lesson, _course = structure.visible_lesson(db_session(), _caller(), lesson_id)
        _require_reader(lesson)
        _cache_control(PRIVATE)
        conditional_get(_lesson_etag(lesson))
        return lesson

    @blp.arguments(LessonPatchSchema)
    @blp.response(200, LessonSchema)
    @blp.doc(security=BEARER)
    def patch(self, data: dict[str, Any], lesson_id: str) -> Any:
        """Change a lesson; ``module_id`` and/or ``position`` move it within the course (the
        course's staff; ``If-Match``)."""
        session = db_session()
        lesson, course = structure.editable_lesson(session, _caller(), lesson_id)
        require_if_match(_lesson_etag(lesson))
        lesson = structure.update_lesson(session, kalpla(), course, lesson, data)
        set_etag(_lesson_etag(lesson))
        _cache_control(PRIVATE)
        return lesson

    @blp.response(204)
    @blp.doc(security=BEARER)
    def delete(self, lesson_id: str) -> Any:
        """Delete a lesson (the course's staff; ``If-Match`` honoured)."""
        session = db_session()
        lesson, course = structure.editable_lesson(session, _caller(), lesson_id)
        _if_match_when_sent(_lesson_etag(lesson))
        structure.delete_lesson(session, kalpla(), course, lesson)
        return None


@blp.route("/lessons/<lesson_id>/file")
class LessonFile(MethodView):
    @blp.response(200, LessonFileSchema)
    def get(self, lesson_id: str) -> Any:
        """A short-lived URL to download the lesson's file (a video or file lesson), for
        whoever may read the lesson; as JSON, so clients choose how to fetch it. 404 when
        the course is not visible or the lesson has no file, else 401/403 with the reason."""
        session = db_session()
        lesson, _course = structure.visible_lesson(session, _caller(), lesson_id)
        _require_reader(lesson)
        file = session.get(StoredFile, lesson.file_id) if lesson.file_id else None
        if file is None or file.status != "ready":
            raise APIError(404, "This lesson has no file.", "no-file")
        ttl = files.download_ttl(file)
        url = files.download_url(kalpla(), file, ttl)
        _cache_control(PRIVATE)
        return {"url": url, "expires_in": ttl, "filename": file.filename,
                "content_type": file.content_type, "size": file.size}


# --- the outline ------------------------------------------------------------------------------

@blp.route("/courses/<course_id>/outline")
class CourseOutline(MethodView):
    @blp.response(200, OutlineSchema)
    def get(self, course_id: str) -> Any:
        """The whole tree: modules with their lessons' titles, kinds, durations and flags,
        never their content (whoever sees the course). Its cost does not grow with the
        course: two queries besides authentication."""
        session = db_session()
        course = service.visible_course(session, _caller(), course_id)
        tree = structure.outline(session, course)
        _cache_for(course)
        conditional_get(etag_of("outline", course.id, tree.digest()))
        return {"course_id": tree.course_id, "structure_version": tree.structure_version,
                "structure_etag": structure_etag(course), "lesson_count": tree.lesson_count,
                "duration_seconds": tree.duration_seconds, "modules": tree.modules}
