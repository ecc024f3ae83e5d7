"""Courses: authoring and lifecycle (draft → published → archived). No Flask here.

Who may do what:
- everyone reads a published course;
- its staff (instructors and the institution's admins, platform admins too) read it in every
  state and edit it; an instructor must still hold ``courses.create`` in the institution (a
  mentor), and the one who created it counts as staff while they do;
- a user enrolled (active or completed) still reads an archived course;
- anyone else is told a draft does not exist (404), never that it is forbidden.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from kalpla_core.contract import CourseArchived, CoursePublished
from kalpla_core.courses import catalog
from kalpla_core.courses.models import Course, CourseInstructor, CoursePrerequisite, CourseTag
from kalpla_core.db import utcnow
from kalpla_core.enrollment.models import SEATED, Enrollment
from kalpla_core.enrollment.state import serialise_writes
from kalpla_core.http.problems import APIError
from kalpla_core.identity.models import Membership, User
from kalpla_core.institutions.models import Institution
from kalpla_core.storage.models import StoredFile

CREATE = "courses.create"
MANAGE_ALL = "courses.manage_all"
INSTRUCTOR_ROLES = ("mentor", "admin")
MAX_TAGS = 20
MAX_INSTRUCTORS = 50
MAX_PREREQUISITES = 20

# Columns a write sets directly; the lists (tags, instructors, prerequisites) have their
# own tables.
SCALAR_FIELDS = ("slug", "title", "summary", "description", "language", "level",
                 "cover_file_id", "capacity", "enrollment_opens_at", "enrollment_closes_at",
                 "access_days")


@dataclass(frozen=True)
class Caller:
    """Who acts: the user (None when anonymous) and ``can(permission, institution_id)``, the
    request's permission check (it also honours the scopes of the credential used)."""

    user: User | None
    can: Callable[[str, str | None], bool]

    @property
    def user_id(self) -> str | None:
        return self.user.id if self.user else None


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "The request has invalid fields; see errors.", "validation",
                    errors={field: [message]})


def _unauthenticated() -> APIError:
    return APIError(401, "Authentication is required.", "unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})


def _flush(session: Session) -> None:
    """Flush, turning a lost race into the answer the client would have had without it."""
    try:
        session.flush()
    except IntegrityError:
        raise APIError(409, "The change conflicts with existing data (is the slug taken?).",
                       "conflict") from None
    except StaleDataError:
        raise APIError(412, "The course changed meanwhile; read it again.",
                       "precondition-failed") from None


# --- reading and rights -----------------------------------------------------------------------

def _not_found(course_id: str) -> APIError:
    return APIError(404, f"There is no course {course_id!r}.", "not-found")


def get_course(session: Session, course_id: str) -> Course:
    """The course whatever its state (no rights checked), or 404."""
    course = session.get(Course, course_id)
    if course is None:
        raise _not_found(course_id)
    return course


def instructs(session: Session, user_id: str, course_id: str) -> bool:
    return session.get(CourseInstructor, (course_id, user_id)) is not None


def is_staff(session: Session, caller: Caller, course: Course) -> bool:
    """Whether the caller edits the course: an admin of its institution, or a mentor there
    who instructs or created it."""
    user = caller.user
    if user is None:
        return False
    if caller.can(MANAGE_ALL, course.institution_id):
        return True
    if not caller.can(CREATE, course.institution_id):
        return False
    return course.created_by == user.id or instructs(session, user.id, course.id)


def _enrolled(session: Session, user_id: str, course_id: str) -> bool:
    return session.scalar(select(Enrollment.id).where(
        Enrollment.course_id == course_id, Enrollment.user_id == user_id,
        Enrollment.status.in_(SEATED))) is not None


def can_view(session: Session, caller: Caller, course: Course) -> bool:
    if course.status == "published":
        return True
    if is_staff(session, caller, course):
        return True
    return (course.status == "archived" and caller.user_id is not None
            and _enrolled(session, caller.user_id, course.id))


def visible_course(session: Session, caller: Caller, course_id: str) -> Course:
    """The course if the caller may read it; 404 otherwise, so drafts stay unknown."""
    course = get_course(session, course_id)
    if not can_view(session, caller, course):
        raise _not_found(course_id)
    return course


def editable_course(session: Session, caller: Caller, course_id: str) -> Course:
    """The course if the caller is its staff: 404 when they may not even read it, 401 when
    anonymous, 403 when they read it but may not change it."""
    course = visible_course(session, caller, course_id)
    if caller.user is None:
        raise _unauthenticated()
    if not is_staff(session, caller, course):
        raise APIError(403, "Only the course's instructors and the institution's admins "
                       "change it.", "forbidden")
    return course


def staff_listing(caller: Caller, institution_id: str,
                  flt: catalog.CatalogFilter) -> catalog.CatalogFilter:
    """Narrow a listing of drafts or archived courses to what the caller may see: every
    course of the institution for its admins, their own courses for its mentors."""
    if caller.user is None:
        raise _unauthenticated()
    if caller.can(MANAGE_ALL, institution_id):
        return replace(flt, institution_id=institution_id, institution_slug=None)
    if caller.can(CREATE, institution_id):
        return replace(flt, institution_id=institution_id, institution_slug=None,
                       only_staff_of=caller.user.id)
    raise APIError(403, f"Only the institution's staff list {flt.status} courses.",
                   "forbidden")


def course_card(session: Session, course: Course) -> catalog.CourseCard:
    """The course with its institution's slug, tags, instructors and prerequisites."""
    slug = session.scalar(select(Institution.slug).where(Institution.id == course.institution_id))
    (card,) = catalog.cards_of(session, [(course, slug or "")])
    card.prerequisites = list(session.scalars(
        select(CoursePrerequisite.required_course_id)
        .where(CoursePrerequisite.course_id == course.id)
        .order_by(CoursePrerequisite.required_course_id)))
    return card


# --- validation -------------------------------------------------------------------------------

def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Lower-case, trimmed, inner blanks collapsed, duplicates dropped; at most 20."""
    out = list(dict.fromkeys(" ".join(t.split()).lower() for t in tags))
    if any(not t for t in out):
        raise _invalid("tags", "A tag cannot be blank.")
    if len(out) > MAX_TAGS:
        raise _invalid("tags", f"A course has at most {MAX_TAGS} tags.")
    return out


def _check_slug_free(session: Session, institution_id: str, slug: str,
                     course_id: str | None = None) -> None:
    taken = session.scalar(select(Course.id).where(Course.institution_id == institution_id,
                                                   Course.slug == slug))
    if taken is not None and taken != course_id:
        raise APIError(409, f"The institution already has a course with the slug {slug!r}.",
                       "slug-taken")


def _check_cover(session: Session, institution_id: str, file_id: str) -> None:
    file = session.get(StoredFile, file_id)
    if (file is None or file.institution_id != institution_id or file.status != "ready"
            or not file.content_type.startswith("image/")):
        raise _invalid("cover_file_id", "Give the id of an uploaded (ready) image file of "
                       "this institution.")


def _check_window(opens: datetime | None, closes: datetime | None) -> None:
    if opens is not None and closes is not None and opens >= closes:
        raise _invalid("enrollment_closes_at", "Enrollment must close after it opens.")


def _check_instructors(session: Session, institution_id: str, user_ids: set[str]) -> None:
    """The users must be active mentors or admins of the institution."""
    if not user_ids:
        return
    ok = set(session.scalars(
        select(Membership.user_id).join(User, User.id == Membership.user_id)
        .where(Membership.institution_id == institution_id,
               Membership.role.in_(INSTRUCTOR_ROLES), Membership.user_id.in_(user_ids),
               User.is_active.is_(True), User.deleted_at.is_(None))))
    wrong = sorted(user_ids - ok)
    if wrong:
        raise _invalid("instructors", "Instructors must be mentors or admins of the "
                       f"institution: {', '.join(wrong)} are not.")


def _check_prerequisites(session: Session, course: Course, required: set[str]) -> None:
    """Courses of the same institution, not the course itself, and no cycle."""
    if course.id in required:
        raise _invalid("prerequisites", "A course cannot require itself.")
    found = set(session.scalars(select(Course.id).where(
        Course.id.in_(required), Course.institution_id == course.institution_id)))
    missing = sorted(required - found)
    if missing:
        raise _invalid("prerequisites", "Prerequisites must be courses of the same "
                       f"institution: {', '.join(missing)} are not.")
    # Walk what the new prerequisites require in turn; meeting the course is a cycle.
    seen, frontier = set(required), set(required)
    while frontier:
        frontier = set(session.scalars(select(CoursePrerequisite.required_course_id).where(
            CoursePrerequisite.course_id.in_(frontier)))) - seen
        if course.id in frontier:
            raise _invalid("prerequisites", "These prerequisites would make a cycle: the "
                           "course is already required by one of them.")
        seen |= frontier


# --- lists of a course ------------------------------------------------------------------------

def _replace(session: Session, table: Any, course_id: str, column: Any,
             current: set[str], wanted: set[str],
             keys: Callable[[], Mapping[str, Any]] = dict) -> bool:
    """Make the course's rows of ``table`` hold ``wanted``; whether anything changed.
    ``keys()`` gives the other columns of a new row (the catalog's sort keys)."""
    gone, new = current - wanted, wanted - current
    if gone:
        session.execute(delete(table).where(table.course_id == course_id, column.in_(gone)))
    if new:
        extra = keys()
        session.execute(insert(table), [{"course_id": course_id, column.key: v, **extra}
                                        for v in new])
    return bool(gone or new)


def _sort_keys(session: Session, course: Course) -> Callable[[], Mapping[str, Any]]:
    """The sort keys of the course's new tag, instructor and word rows, read once when first
    needed: its enrollment count is read under the course lock enrollment writers take
    (FOR NO KEY UPDATE; SQLite's write lock), so it stays right until the commit."""
    read: dict[str, Any] = {}

    def keys() -> Mapping[str, Any]:
        if not read:
            serialise_writes(session)
            count = session.scalar(select(Course.enrollment_count)
                                   .where(Course.id == course.id)
                                   .with_for_update(key_share=True))
            read.update(catalog.sort_key_values(course, count or 0))
        return read
    return keys


def _set_tags(session: Session, course: Course, tags: list[str],
              keys: Callable[[], Mapping[str, Any]]) -> bool:
    current = set(session.scalars(select(CourseTag.tag).where(CourseTag.course_id == course.id)))
    return _replace(session, CourseTag, course.id, CourseTag.tag, current, set(tags), keys)


def _set_instructors(session: Session, course: Course, user_ids: set[str],
                     keys: Callable[[], Mapping[str, Any]]) -> bool:
    if not user_ids:
        raise _invalid("instructors", "A course needs at least one instructor.")
    current = set(session.scalars(select(CourseInstructor.user_id).where(
        CourseInstructor.course_id == course.id)))
    # Only newcomers are checked: someone kept on may have changed roles meanwhile.
    _check_instructors(session, course.institution_id, user_ids - current)
    return _replace(session, CourseInstructor, course.id, CourseInstructor.user_id,
                    current, user_ids, keys)


def _set_prerequisites(session: Session, course: Course, required: set[str]) -> bool:
    current = set(session.scalars(select(CoursePrerequisite.required_course_id).where(
        CoursePrerequisite.course_id == course.id)))
    if required - current:
        _check_prerequisites(session, course, required)
    return _replace(session, CoursePrerequisite, course.id,
                    CoursePrerequisite.required_course_id, current, required)


# --- writes -----------------------------------------------------------------------------------

def create_course(session: Session, caller: Caller, institution_id: str,
                  data: Mapping[str, Any]) -> Course:
    """A draft course in the institution; the creator (a mentor or admin there) instructs it
    along with the ``instructors`` given."""
    user = caller.user
    if user is None:
        raise _unauthenticated()
    if not caller.can(CREATE, institution_id):
        raise APIError(403, "Only the institution's mentors and admins create courses.",
                       "forbidden")
    _check_slug_free(session, institution_id, data["slug"])
    _check_window(data.get("enrollment_opens_at"), data.get("enrollment_closes_at"))
    if data.get("cover_file_id"):
        _check_cover(session, institution_id, data["cover_file_id"])
    tags = normalise_tags(data.get("tags", []))
    # The creator holds courses.create here, which is all an instructor needs to be.
    others = set(data.get("instructors", [])) - {user.id}
    _check_instructors(session, institution_id, others)
    course = Course(institution_id=institution_id, status="draft", created_by=user.id,
                    **{k: data[k] for k in SCALAR_FIELDS if k in data})
    session.add(course)
    _flush(session)
    # Nobody else knows the new course yet: its count is its own.
    keys = catalog.sort_key_values(course, course.enrollment_count)
    _replace(session, CourseInstructor, course.id, CourseInstructor.user_id, set(),
             {user.id, *others}, lambda: keys)
    _set_tags(session, course, tags, lambda: keys)
    if data.get("prerequisites"):
        _set_prerequisites(session, course, set(data["prerequisites"]))
    catalog.index_course(session, course, keys)
    _flush(session)
    return course


def update_course(session: Session, course: Course, data: Mapping[str, Any]) -> Course:
    """Apply a partial change (the caller was checked to be staff)."""
    if "slug" in data and data["slug"] != course.slug:
        _check_slug_free(session, course.institution_id, data["slug"], course.id)
    _check_window(data.get("enrollment_opens_at", course.enrollment_opens_at),
                  data.get("enrollment_closes_at", course.enrollment_closes_at))
    if data.get("cover_file_id") and data["cover_file_id"] != course.cover_file_id:
        _check_cover(session, course.institution_id, data["cover_file_id"])
    if course.status == "published" and "title" in data and not data["title"].strip():
        raise _invalid("title", "A published course needs a title.")
    tags = normalise_tags(data["tags"]) if "tags" in data else None
    words_before = (course.title, course.summary)
    for key in SCALAR_FIELDS:
        if key in data:
            setattr(course, key, data[key])
    keys = _sort_keys(session, course)
    lists_changed = False
    if tags is not None:
        lists_changed |= _set_tags(session, course, tags, keys)
    if "instructors" in data:
        lists_changed |= _set_instructors(session, course, set(data["instructors"]), keys)
    if "prerequisites" in data:
        lists_changed |= _set_prerequisites(session, course, set(data["prerequisites"]))
    if lists_changed:
        course.updated_at = utcnow()  # a new version, hence a new ETag
    if course.title != words_before[0]:
        catalog.sync_sort_keys(session, course)
    if (course.title, course.summary) != words_before:
        catalog.index_course(session, course, keys())
    _flush(session)
    return course


def publish_course(session: Session, kalpla: Any, course: Course) -> Course:
    """draft → published: it enters the catalog; plugins hear ``kalpla_course_published``."""
    if course.status != "draft":
        raise APIError(409, f"Only a draft is published; this course is {course.status}.",
                       "invalid-state")
    if not course.title.strip():
        raise _invalid("title", "A course needs a title to be published.")
    now = utcnow()
    course.status, course.published_at = "published", now
    _flush(session)
    catalog.sync_sort_keys(session, course)
    kalpla.emit(session, "kalpla_course_published", CoursePublished(
        institution_id=course.institution_id, occurred_at=now.isoformat(),
        course_id=course.id, slug=course.slug, title=course.title))
    return course


def archive_course(session: Session, kalpla: Any, course: Course) -> Course:
    """draft or published → archived: out of the catalog, kept for those enrolled; plugins
    hear ``kalpla_course_archived``."""
    if course.status == "archived":
        raise APIError(409, "The course is already archived.", "invalid-state")
    now = utcnow()
    course.status, course.archived_at = "archived", now
    _flush(session)
    catalog.sync_sort_keys(session, course)
    kalpla.emit(session, "kalpla_course_archived", CourseArchived(
        institution_id=course.institution_id, occurred_at=now.isoformat(),
        course_id=course.id))
    return course


def delete_course(session: Session, course: Course) -> None:
    """Delete a draft or archived course nobody ever enrolled in and no course requires.

    A published course is archived first, so that plugins following the catalog hear that it
    left (the contract has no deletion event)."""
    if course.status == "published":
        raise APIError(409, "A published course is archived before it is deleted.",
                       "archive-first")
    if session.scalar(select(Enrollment.id).where(Enrollment.course_id == course.id)
                      .limit(1)) is not None:
        raise APIError(409, "The course has enrollments; archive it instead.",
                       "has-enrollments")
    dependants = list(session.scalars(select(CoursePrerequisite.course_id).where(
        CoursePrerequisite.required_course_id == course.id).order_by(
        CoursePrerequisite.course_id)))
    if dependants:
        raise APIError(409, "Other courses require this one: " + ", ".join(dependants) + ".",
                       "required-by-others", courses=dependants)
    session.delete(course)
    _flush(session)
