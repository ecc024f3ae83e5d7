"""Modules and lessons of a course: ordered, re-orderable, checked per lesson kind. No Flask.

Rights are those of :mod:`kalpla_core.courses.service`: whoever sees a course sees its
structure (titles, kinds, order, durations), its staff change it. Lesson bodies and files are
read only through :func:`kalpla_core.courses.access.can_read_lesson`.

Positions are dense, 0 to n-1 within the course (modules) or the module (lessons), after every
write. Every change to the tree's shape (a module or lesson added, removed or moved, the
order changed, a lesson's kind or ``is_required`` changed) bumps ``courses.structure_version``
first: that UPDATE holds the course row until commit, so structural writes to one course run
one after another and each sees the positions the previous one left; the version is also what
the structure ETag names, so a stale re-order is refused (412). Lesson changes are announced
through ``kalpla_lesson_changed`` after commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from marshmallow import ValidationError
from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, load_only
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from kalpla_core.contract import LessonChanged
from kalpla_core.courses import service
from kalpla_core.courses.models import Course, Lesson, Module
from kalpla_core.db import utcnow
from kalpla_core.http.problems import APIError
from kalpla_core.storage.models import StoredFile

MAX_MODULES = 500
MAX_LESSONS_PER_MODULE = 500
MAX_BODY = 500_000
MAX_DURATION = 7 * 24 * 3600

Caller = service.Caller
# What a lesson holds besides its place in the tree.
LESSON_FIELDS = ("title", "kind", "body", "video_url", "file_id", "duration_seconds",
                 "is_preview", "is_required", "data")
# Fields whose change alters what completing the course means (issue 5 recomputes progress).
PROGRESS_FIELDS = ("kind", "is_required")
MODULE_ORDER = [(Module.position, "asc"), (Module.id, "asc")]
LESSON_ORDER = [(Lesson.position, "asc"), (Lesson.id, "asc")]
# What listings show of a lesson (never its content).
_SUMMARY_COLUMNS = ("id", "module_id", "course_id", "title", "kind", "position",
                    "duration_seconds", "is_preview", "is_required", "version")

T = TypeVar("T", Module, Lesson)


# --- errors -----------------------------------------------------------------------------------

def _invalid(errors: Mapping[str, list[str] | Any]) -> APIError:
    return APIError(422, "The request has invalid fields; see errors.", "validation",
                    errors=dict(errors))


def _not_found(what: str, ident: str) -> APIError:
    return APIError(404, f"There is no {what} {ident!r}.", "not-found")


def _stale_structure() -> APIError:
    return APIError(412, "The course's structure changed since it was read; read it again.",
                    "precondition-failed")


@contextmanager
def _conflicts(what: str) -> Iterator[None]:
    """Turn a race lost while flushing into the answer the client would have had without it."""
    try:
        yield
    except StaleDataError:
        raise APIError(412, f"The {what} changed meanwhile; read it again.",
                       "precondition-failed") from None
    except IntegrityError:
        raise APIError(409, f"The {what} conflicts with existing data.", "conflict") from None


# --- loading with rights ----------------------------------------------------------------------

def _visible_course(session: Session, caller: service.Caller, course_id: str, what: str,
                    ident: str) -> Course:
    course = session.get(Course, course_id)
    if course is None or not service.can_view(session, caller, course):
        raise _not_found(what, ident)
    return course


def _require_staff(session: Session, caller: service.Caller, course: Course) -> None:
    if caller.user is None:
        raise APIError(401, "Authentication is required.", "unauthorized",
                       headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})
    if not service.is_staff(session, caller, course):
        raise APIError(403, "Only the course's instructors and the institution's admins "
                       "change its structure.", "forbidden")


def visible_module(session: Session, caller: service.Caller,
                   module_id: str) -> tuple[Module, Course]:
    """The module and its course, if the caller sees the course; 404 otherwise."""
    module = session.get(Module, module_id)
    if module is None:
        raise _not_found("module", module_id)
    return module, _visible_course(session, caller, module.course_id, "module", module_id)


def editable_module(session: Session, caller: service.Caller,
                    module_id: str) -> tuple[Module, Course]:
    """The module and its course, if the caller is the course's staff (404/401/403)."""
    module, course = visible_module(session, caller, module_id)
    _require_staff(session, caller, course)
    return module, course


def visible_lesson(session: Session, caller: service.Caller,
                   lesson_id: str) -> tuple[Lesson, Course]:
    """The lesson and its course, if the caller sees the course (its outline, not
    necessarily the lesson's body); 404 otherwise."""
    lesson = session.get(Lesson, lesson_id)
    if lesson is None:
        raise _not_found("lesson", lesson_id)
    return lesson, _visible_course(session, caller, lesson.course_id, "lesson", lesson_id)


def editable_lesson(session: Session, caller: service.Caller,
                    lesson_id: str) -> tuple[Lesson, Course]:
    lesson, course = visible_lesson(session, caller, lesson_id)
    _require_staff(session, caller, course)
    return lesson, course


def modules_statement(course: Course) -> Select[Any]:
    """The course's modules, for a keyset page ordered by :data:`MODULE_ORDER`."""
    return select(Module).where(Module.course_id == course.id)


def lessons_statement(module: Module) -> Select[Any]:
    """The module's lessons (bodies not loaded), for a page ordered by :data:`LESSON_ORDER`."""
    return (select(Lesson).where(Lesson.module_id == module.id)
            .options(load_only(*[getattr(Lesson, k) for k in _SUMMARY_COLUMNS])))



# --- positions and the structure version ------------------------------------------------------

def bump_structure(session: Session, course: Course, expected: int | None = None) -> int:
    """Count a change to the course's tree, holding the course row until commit. With
    ``expected``, refuse (412) when the version is no longer that one.

    A plain UPDATE rather than the ORM's: the course's own ``version`` (its ETag) and
    ``updated_at`` stay as they are, since the course's representation did not change."""
    table = Course.__table__
    stmt = update(table).where(table.c.id == course.id)
    if expected is not None:
        stmt = stmt.where(table.c.structure_version == expected)
    stmt = stmt.values(structure_version=table.c.structure_version + 1,
                       updated_at=table.c.updated_at).returning(table.c.structure_version)
    new = session.execute(stmt).scalar_one_or_none()
    if new is None:
        raise _stale_structure()
    set_committed_value(course, "structure_version", new)
    return new


def _position(requested: int | None, size: int) -> int:
    """Where an item goes among ``size`` others: the end by default."""
    if requested is None:
        return size
    if requested > size:
        raise _invalid({"position": [f"Give a position from 0 to {size}."]})
    return requested


def _renumber(items: Sequence[T]) -> list[T]:
    """Make positions 0..n-1 in list order; the items whose position changed."""
    moved = []
    for index, item in enumerate(items):
        if item.position != index:
            item.position = index
            moved.append(item)
    return moved


def _modules(session: Session, course_id: str) -> list[Module]:
    return list(session.scalars(select(Module).where(Module.course_id == course_id)
                                .order_by(Module.position, Module.id)))


def _lessons(session: Session, module_id: str) -> list[Lesson]:
    # Only what re-numbering needs: siblings' bodies may be large.
    return list(session.scalars(
        select(Lesson).where(Lesson.module_id == module_id)
        .options(load_only(Lesson.id, Lesson.module_id, Lesson.course_id, Lesson.position,
                           Lesson.version))
        .order_by(Lesson.position, Lesson.id)))


def _exact_order(given: Sequence[str], current: Sequence[str], name: str) -> None:
    if len(given) != len(set(given)) or set(given) != set(current):
        missing = sorted(set(current) - set(given))
        unknown = sorted(set(given) - set(current))
        detail = [f"Give each of the {len(current)} ids exactly once."]
        if missing:
            detail.append("Missing: " + ", ".join(missing) + ".")
        if unknown:
            detail.append("Not here: " + ", ".join(unknown) + ".")
        raise _invalid({name: [" ".join(detail)]})


def _emit(session: Session, kalpla: Any, course: Course, lesson_ids: Sequence[str],
          change: str) -> None:
    now = utcnow().isoformat()
    for lesson_id in lesson_ids:
        kalpla.emit(session, "kalpla_lesson_changed", LessonChanged(
            institution_id=course.institution_id, occurred_at=now, lesson_id=lesson_id,
            course_id=course.id, change=change))


# --- modules ----------------------------------------------------------------------------------

def module_order(session: Session, course: Course) -> list[str]:
    return [m.id for m in _modules(session, course.id)]


def create_module(session: Session, course: Course, data: Mapping[str, Any]) -> Module:
    """A module at ``position`` (default: the end); those from there on move down."""
    with _conflicts("course"):
        bump_structure(session, course)
        modules = _modules(session, course.id)
        if len(modules) >= MAX_MODULES:
            raise APIError(409, f"A course has at most {MAX_MODULES} modules.",
                           "too-many-modules")
        position = _position(data.get("position"), len(modules))
        module = Module(course_id=course.id, title=data["title"],
                        summary=data.get("summary", ""), position=position)
        session.add(module)
        modules.insert(position, module)
        _renumber(modules)
        session.flush()
    return module


def update_module(session: Session, course: Course, module: Module,
                  data: Mapping[str, Any]) -> Module:
    """Change the title or summary, or move the module to ``position`` in its course."""
    with _conflicts("module"):
        for key in ("title", "summary"):
            if key in data:
                setattr(module, key, data[key])
        if data.get("position") is not None and data["position"] != module.position:
            bump_structure(session, course)
            modules = _modules(session, course.id)
            modules.remove(module)
            modules.insert(_position(data["position"], len(modules)), module)
            _renumber(modules)
        session.flush()
    return module


def delete_module(session: Session, kalpla: Any, course: Course, module: Module) -> None:
    """Delete the module and its lessons (their progress goes with them)."""
    with _conflicts("module"):
        bump_structure(session, course)
        lesson_ids = list(session.scalars(select(Lesson.id).where(
            Lesson.module_id == module.id).order_by(Lesson.position, Lesson.id)))
        modules = _modules(session, course.id)
        modules.remove(module)
        session.delete(module)  # the database deletes its lessons (ON DELETE CASCADE)
        _renumber(modules)
        session.flush()
    _emit(session, kalpla, course, lesson_ids, "deleted")


def reorder_modules(session: Session, course: Course, module_ids: Sequence[str],
                    expected_version: int) -> list[str]:
    """Put the course's modules in the order given (every one of them, once)."""
    with _conflicts("course"):
        modules = _modules(session, course.id)
        _exact_order(module_ids, [m.id for m in modules], "module_ids")
        bump_structure(session, course, expected_version)
        by_id = {m.id: m for m in modules}
        _renumber([by_id[i] for i in module_ids])
        session.flush()
    return list(module_ids)


# --- lessons: what each kind holds ------------------------------------------------------------

def _check_file(session: Session, course: Course, file_id: str, video: bool) -> list[str]:
    """Problems with using the file in a lesson of the course (none: usable)."""
    file = session.get(StoredFile, file_id)
    if (file is None or file.institution_id != course.institution_id
            or file.status != "ready" or file.course_id not in (None, course.id)):
        return ["Give the id of an uploaded (ready) file of this course or of its "
                "institution."]
    if video and not file.content_type.startswith("video/"):
        return [f"A video lesson needs a video file; this one is {file.content_type}."]
    return []


def _check_kind(session: Session, kalpla: Any, course: Course, kind: str) -> None:
    kinds = kalpla.lesson_kinds
    owner = kinds.owner(kind)
    enabled = None if owner in (None, "core") else kalpla.enabled_plugins(
        session, course.institution_id)
    if owner is None:
        raise _invalid({"kind": [f"Unknown lesson kind {kind!r}; known kinds: "
                                 + ", ".join(kinds.names()) + "."]})
    if enabled is not None and owner not in enabled:
        raise _invalid({"kind": [f"The kind {kind!r} comes from the plugin {owner!r}, which "
                                 "is not enabled for this institution."]})


def _checked_content(session: Session, kalpla: Any, course: Course, state: dict[str, Any],
                     changed: set[str]) -> dict[str, Any]:
    """Check the lesson's content as it will be (``state``) for its kind, looking up files
    and plugin schemas only for what ``changed``; returns the kind's data, normalised."""
    kind = state["kind"]
    if "kind" in changed:
        _check_kind(session, kalpla, course, kind)
    video_url, file_id = state.get("video_url"), state.get("file_id")
    errors: dict[str, list[str]] = {}
    if kind == "video":
        if bool(video_url) == bool(file_id):
            errors["video_url"] = ["A video lesson has either a video_url or a file_id."]
        if state.get("duration_seconds") is None:
            errors["duration_seconds"] = ["A video lesson needs its duration."]
    elif kind == "file":
        if not file_id:
            errors["file_id"] = ["A file lesson needs a file_id."]
        if video_url:
            errors["video_url"] = ["Only video lessons have a video_url."]
    else:
        if video_url:
            errors["video_url"] = ["Only video lessons have a video_url."]
        if file_id:
            errors["file_id"] = ["Only video and file lessons have a file_id."]
    if file_id and "file_id" not in errors and changed & {"file_id", "kind"}:
        problems = _check_file(session, course, file_id, video=kind == "video")
        if problems:
            errors["file_id"] = problems
    data = state.get("data") or {}
    if changed & {"data", "kind"}:
        try:
            data = kalpla.lesson_kinds.validate_data(kind, data)
        except ValidationError as exc:
            errors.update(exc.messages)  # type: ignore[arg-type]
    if errors:
        raise _invalid(errors)
    return data


# --- lessons ----------------------------------------------------------------------------------

def lesson_order(session: Session, module: Module) -> list[str]:
    return [lesson.id for lesson in _lessons(session, module.id)]


def create_lesson(session: Session, kalpla: Any, course: Course, module: Module,
                  data: Mapping[str, Any]) -> Lesson:
    """A lesson of ``module`` at ``position`` (default: the end)."""
    state = {"kind": data["kind"], "video_url": data.get("video_url"),
             "file_id": data.get("file_id"), "duration_seconds": data.get("duration_seconds"),
             "data": data.get("data") or {}}
    checked = _checked_content(session, kalpla, course, state, set(LESSON_FIELDS))
    with _conflicts("module"):
        bump_structure(session, course)
        lessons = _lessons(session, module.id)
        if len(lessons) >= MAX_LESSONS_PER_MODULE:
            raise APIError(409, f"A module has at most {MAX_LESSONS_PER_MODULE} lessons.",
                           "too-many-lessons")
        position = _position(data.get("position"), len(lessons))
        lesson = Lesson(
            module_id=module.id, course_id=course.id, position=position,
            title=data["title"], kind=data["kind"], body=data.get("body", ""),
            video_url=state["video_url"], file_id=state["file_id"],
            duration_seconds=state["duration_seconds"], data=checked,
            is_preview=data.get("is_preview", False), is_required=data.get("is_required", True))
        session.add(lesson)
        lessons.insert(position, lesson)
        _renumber(lessons)
        session.flush()
    _emit(session, kalpla, course, [lesson.id], "created")
    return lesson


def _move(session: Session, course: Course, lesson: Lesson, module_id: str,
          position: int | None) -> None:
    """Put the lesson at ``position`` of ``module_id`` (default: its end), closing the gap
    it leaves; both modules stay dense."""
    if module_id == lesson.module_id:
        siblings = _lessons(session, module_id)
        siblings.remove(lesson)
        siblings.insert(_position(position, len(siblings)), lesson)
        _renumber(siblings)
        return
    target = session.get(Module, module_id)
    if target is None or target.course_id != course.id:
        raise _invalid({"module_id": ["Give a module of the same course."]})
    destination = _lessons(session, target.id)
    if len(destination) >= MAX_LESSONS_PER_MODULE:
        raise APIError(409, f"A module has at most {MAX_LESSONS_PER_MODULE} lessons.",
                       "too-many-lessons")
    index = _position(position, len(destination))
    source = _lessons(session, lesson.module_id)
    source.remove(lesson)
    _renumber(source)
    lesson.module_id = target.id
    destination.insert(index, lesson)
    _renumber(destination)


def update_lesson(session: Session, kalpla: Any, course: Course, lesson: Lesson,
                  data: Mapping[str, Any]) -> Lesson:
    """Apply a partial change; ``module_id`` and/or ``position`` move the lesson."""
    changes = {k: data[k] for k in LESSON_FIELDS if k in data and getattr(lesson, k) != data[k]}
    target_module = data.get("module_id") or lesson.module_id
    moving = target_module != lesson.module_id or (
        data.get("position") is not None and data["position"] != lesson.position)
    content = {"kind", "video_url", "file_id", "duration_seconds", "data"}
    if content & set(changes):
        state = {k: changes.get(k, getattr(lesson, k)) for k in content}
        if "kind" in changes and "data" not in changes:
            state["data"] = {}  # a new kind starts from empty data unless some is given
        changes["data"] = _checked_content(session, kalpla, course, state, set(changes))
    with _conflicts("lesson"):
        if moving or set(PROGRESS_FIELDS) & set(changes):
            bump_structure(session, course)
        if moving:
            _move(session, course, lesson, target_module, data.get("position"))
        for key, value in changes.items():
            setattr(lesson, key, value)
        session.flush()
    if moving:
        _emit(session, kalpla, course, [lesson.id], "moved")
    if changes:
        _emit(session, kalpla, course, [lesson.id], "updated")
    return lesson


def delete_lesson(session: Session, kalpla: Any, course: Course, lesson: Lesson) -> None:
    with _conflicts("lesson"):
        bump_structure(session, course)
        siblings = _lessons(session, lesson.module_id)
        siblings.remove(lesson)
        session.delete(lesson)
        _renumber(siblings)
        session.flush()
    _emit(session, kalpla, course, [lesson.id], "deleted")


def reorder_lessons(session: Session, kalpla: Any, course: Course, module: Module,
                    lesson_ids: Sequence[str], expected_version: int) -> list[str]:
    """Put the module's lessons in the order given (every one of them, once)."""
    with _conflicts("module"):
        lessons = _lessons(session, module.id)
        _exact_order(lesson_ids, [lesson.id for lesson in lessons], "lesson_ids")
        bump_structure(session, course, expected_version)
        by_id = {lesson.id: lesson for lesson in lessons}
        moved = _renumber([by_id[i] for i in lesson_ids])
        session.flush()
    _emit(session, kalpla, course, [lesson.id for lesson in moved], "moved")
    return list(lesson_ids)


# --- the outline ------------------------------------------------------------------------------

@dataclass
class OutlineLesson:
    id: str
    title: str
    kind: str
    position: int
    duration_seconds: int | None
    is_preview: bool
    is_required: bool


@dataclass
class OutlineModule:
    id: str
    title: str
    summary: str
    position: int
    lessons: list[OutlineLesson] = field(default_factory=list)

    @property
    def duration_seconds(self) -> int:
        return sum(lesson.duration_seconds or 0 for lesson in self.lessons)


@dataclass
class Outline:
    course_id: str
    structure_version: int
    modules: list[OutlineModule]

    @property
    def lesson_count(self) -> int:
        return sum(len(m.lessons) for m in self.modules)

    @property
    def duration_seconds(self) -> int:
        return sum(m.duration_seconds for m in self.modules)

    def digest(self) -> str:
        """Changes whenever anything the outline shows changes (its ETag)."""
        payload = json.dumps([self.structure_version, [asdict(m) for m in self.modules]],
                             separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def outline(session: Session, course: Course) -> Outline:
    """The course's modules with their lessons' headings, in order: one query, whatever
    the size of the course (bodies are not read)."""
    rows = session.execute(
        select(Module.id, Module.title, Module.summary, Module.position,
               Lesson.id.label("lesson_id"), Lesson.title.label("lesson_title"), Lesson.kind,
               Lesson.position.label("lesson_position"), Lesson.duration_seconds,
               Lesson.is_preview, Lesson.is_required)
        .outerjoin(Lesson, Lesson.module_id == Module.id)
        .where(Module.course_id == course.id)
        .order_by(Module.position, Module.id, Lesson.position, Lesson.id))
    modules: list[OutlineModule] = []
    for row in rows:
        if not modules or modules[-1].id != row.id:
            modules.append(OutlineModule(row.id, row.title, row.summary, row.position))
        if row.lesson_id is not None:
            modules[-1].lessons.append(OutlineLesson(
                row.lesson_id, row.lesson_title, row.kind, row.lesson_position,
                row.duration_seconds, row.is_preview, row.is_required))
    return Outline(course.id, course.structure_version, modules)
