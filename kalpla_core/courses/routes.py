"""Course routes: the catalog, authoring and the lifecycle (publish, archive)."""

from __future__ import annotations

from typing import Any

from flask import after_this_request, current_app, request, url_for
from flask.views import MethodView

from kalpla_core.context import (
    current_institution,
    current_user,
    db_session,
    has_permission,
    kalpla,
)
from kalpla_core.courses import catalog, service
from kalpla_core.courses.models import Course
from kalpla_core.courses.schemas import (
    CatalogArgs,
    CourseCardSchema,
    CoursePatchSchema,
    CourseSchema,
    CourseWriteSchema,
)
from kalpla_core.http.api import Blueprint
from kalpla_core.http.etag import conditional_get, etag_of, require_if_match, set_etag
from kalpla_core.http.pagination import page_of, page_response
from kalpla_core.institutions.service import get_by_slug

blp = Blueprint("courses", __name__, url_prefix="/api/v1/courses",
                description="Courses: the catalog, authoring and the lifecycle "
                            "draft → published → archived.")

PUBLIC = "public, max-age=60"
PRIVATE = "private, no-store"


def _caller() -> service.Caller:
    return service.Caller(current_user(required=False), has_permission)


def _etag(course: Course) -> str:
    return etag_of("course", course.id, course.version)


def _cache_control(value: str) -> None:
    @after_this_request
    def _set(response: Any) -> Any:
        response.headers["Cache-Control"] = value
        return response


def _if_match_when_sent(course: Course) -> None:
    """Lifecycle actions honour ``If-Match`` when the client sends one."""
    if "If-Match" in request.headers:
        require_if_match(_etag(course))


def _answer(course: Course) -> catalog.CourseCard:
    set_etag(_etag(course))
    _cache_control(PRIVATE)
    return service.course_card(db_session(), course)


@blp.route("")
class Courses(MethodView):
    @blp.arguments(CatalogArgs, location="query")
    @blp.response(200, page_of(CourseCardSchema))
    def get(self, args: dict[str, Any]) -> Any:
        """The catalog: published courses of every institution, filtered and sorted.

        ``status=draft`` or ``archived`` lists the courses of one institution (``institution``,
        else the ``Kalpla-Institution`` header) to its staff: every course for its admins,
        the ones they instruct for its mentors."""
        session = db_session()
        flt = catalog.CatalogFilter(
            status=args["status"], institution_slug=args["institution"], tag=(
                " ".join(args["tag"].split()).lower() if args["tag"] else None),
            level=args["level"], language=args["language"], instructor=args["instructor"],
            q=args["q"], sort=args["sort"])
        if flt.status != "published":
            inst = (get_by_slug(session, args["institution"]) if args["institution"]
                    else current_institution())
            flt = service.staff_listing(_caller(), inst.id, flt)
        page = catalog.catalog_page(session, flt, args["limit"], args["cursor"],
                                    current_app.config["SECRET_KEY"])
        _cache_control(PUBLIC if flt.status == "published" else PRIVATE)
        return page_response(page)

    @blp.arguments(CourseWriteSchema)
    @blp.response(201, CourseSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, data: dict[str, Any]) -> Any:
        """Create a draft course in the request's institution (``Kalpla-Institution``);
        mentors and admins there (``courses.create``)."""
        course = service.create_course(db_session(), _caller(), current_institution().id,
                                       data)
        location = url_for("courses.CourseItem", course_id=course.id)
        return _answer(course), {"Location": location}


@blp.route("/<course_id>")
class CourseItem(MethodView):
    @blp.response(200, CourseSchema)
    def get(self, course_id: str) -> Any:
        """A course: published ones for everyone, others for their staff (404 otherwise)."""
        session = db_session()
        course = service.visible_course(session, _caller(), course_id)
        _cache_control(PUBLIC if course.status == "published" else PRIVATE)
        conditional_get(_etag(course))
        return service.course_card(session, course)

    @blp.arguments(CoursePatchSchema)
    @blp.response(200, CourseSchema)
    @blp.doc(security=[{"bearer": []}])
    def patch(self, data: dict[str, Any], course_id: str) -> Any:
        """Change a course (its staff; ``If-Match`` required)."""
        session = db_session()
        course = service.editable_course(session, _caller(), course_id)
        require_if_match(_etag(course))
        return _answer(service.update_course(session, course, data))

    @blp.response(204)
    @blp.doc(security=[{"bearer": []}])
    def delete(self, course_id: str) -> Any:
        """Delete a draft or archived course without enrollments (its staff); a course
        with enrollments is archived instead (409)."""
        session = db_session()
        course = service.editable_course(session, _caller(), course_id)
        _if_match_when_sent(course)
        service.delete_course(session, course)
        return None


@blp.route("/<course_id>/publish")
class CoursePublish(MethodView):
    @blp.response(200, CourseSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, course_id: str) -> Any:
        """Publish a draft (its staff): it enters the catalog."""
        session = db_session()
        course = service.editable_course(session, _caller(), course_id)
        _if_match_when_sent(course)
        return _answer(service.publish_course(session, kalpla(), course))


@blp.route("/<course_id>/archive")
class CourseArchive(MethodView):
    @blp.response(200, CourseSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, course_id: str) -> Any:
        """Archive a draft or published course (its staff): it leaves the catalog; enrolled
        students still read it."""
        session = db_session()
        course = service.editable_course(session, _caller(), course_id)
        _if_match_when_sent(course)
        return _answer(service.archive_course(session, kalpla(), course))
