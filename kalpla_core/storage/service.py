"""Files of courses and lessons: ask for an upload, upload, confirm; read, download, delete.
No Flask here.

The flow: the course's staff ask for an upload (a ``pending`` row and the provider's
instructions), the client sends the file straight to storage, then asks to confirm; the
stored object is read back and must match what was declared (size, type) and the settings
(size limit, allowed types, encryption), else it is deleted and the file stays ``pending``.

Keys: a pending file's ``storage_key`` is its upload key, ``uploads/<institution>/<file id>``,
the key the upload instructions cover for :data:`UPLOAD_TTL`. On confirm the checked object is
copied to ``<institution>/ready/<file id>`` (:meth:`StorageProvider.finalize`, refused if the
object changed after the check), which becomes the ``storage_key``; the upload key's object is
deleted after the commit. So replaying the instructions after confirm cannot change what
downloads serve, and nothing under ``uploads/`` is needed once a file is ready (an S3
lifecycle rule may expire it). Both keys follow from the row, so deleting or purging a file
(:mod:`.purge`) deletes both, whatever step a confirm stopped at. (Files asked for before
these keys existed have ``<institution>/<file id>`` as upload key, and keep it as
``storage_key`` if they were confirmed then.)

Confirming holds no transaction (and no connection) while the provider reads, hashes or
copies the object, which may take as long as the size limit allows; only marking the file
ready locks its row (on SQLite, the database), briefly, after checking it is still pending at
the same upload key. Two confirms of one file may thus both copy it to its final key: on the
``local`` provider it is the same file (an upload never replaces a pending file's object;
only a refused one is deleted and sent anew), so nothing differs; on S3 the uploader may
replay the form between the two checks, and the copy that lands last — also checked against
the declaration, and S3 rows record no checksum — is what is served. A confirm that finds
the file deleted or purged after its copy deletes that copy (404).

Who reads a ``ready`` file (its metadata and a download URL):
- the course's staff, always (pending files too);
- a cover: whoever sees the course (everyone once it is published);
- a file of a lesson (``lesson_id``, or used by a lesson as its file): whoever may read that
  lesson (:func:`kalpla_core.courses.access.can_read_lesson`);
- a course resource: students holding a seat in the course (active or completed enrollment
  that has not expired);
- anything else only the staff.
A draft's files do not exist for anyone else (404).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from kalpla_core.contract import Decision
from kalpla_core.courses import access
from kalpla_core.courses import service as courses
from kalpla_core.courses.models import Course, Lesson
from kalpla_core.db import new_id, queue_after_commit, utcnow
from kalpla_core.enrollment.state import serialise_writes
from kalpla_core.http.pagination import Page, SortKey, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.storage.models import StoredFile
from kalpla_core.storage.port import (
    ObjectChanged,
    StorageProvider,
    StoredObject,
    UploadInstructions,
)

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla
    from kalpla_core.config import Settings

log = logging.getLogger("kalpla.storage")

PURPOSES = ("resource", "cover", "video", "lesson-file")
UPLOAD_TTL = 15 * 60
DOWNLOAD_TTL = 5 * 60
# Players fetch audio and video in ranges while it plays; their links last a lecture.
MEDIA_DOWNLOAD_TTL = 60 * 60
RESOURCE_ORDER: list[SortKey] = [(StoredFile.created_at, "desc"), (StoredFile.id, "desc")]
_MEDIA_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")


def storage(kalpla: Kalpla, name: str | None = None) -> StorageProvider:
    """The storage provider named ``name``, by default the one ``KALPLA_STORAGE`` selects."""
    provider: StorageProvider = kalpla.providers.get("storage", name or kalpla.settings.storage,
                                                     kalpla.app)
    return provider


def upload_key(institution_id: str, file_id: str) -> str:
    """The key a file's upload instructions cover."""
    return f"uploads/{institution_id}/{file_id}"


def final_key(institution_id: str, file_id: str) -> str:
    """The key a confirmed file is kept at, which no upload instructions cover."""
    return f"{institution_id}/ready/{file_id}"


def stored_keys(file: StoredFile) -> list[str]:
    """Every key an object of ``file`` may be at: its ``storage_key``, its upload key (a
    leftover until deleted after confirm) and its final key (copied by a confirm whose commit
    failed)."""
    keys = [file.storage_key, upload_key(file.institution_id, file.id),
            final_key(file.institution_id, file.id)]
    return sorted(set(keys))


def _invalid(errors: Mapping[str, list[str]]) -> APIError:
    return APIError(422, "The request has invalid fields; see errors.", "validation",
                    errors=dict(errors))


def _not_found(file_id: str) -> APIError:
    return APIError(404, f"There is no file {file_id!r}.", "not-found")


# --- what may be uploaded ---------------------------------------------------------------------

def clean_filename(name: str) -> str:
    """The last path segment of ``name``, NFC-normalised, without control characters or
    surrounding blanks. Only ever shown back to people; storage keys never use it."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in name if ch.isprintable()).strip()


def media_type(value: str) -> str:
    """``Text/Plain; charset=utf-8`` → ``text/plain``."""
    return value.split(";", 1)[0].strip().lower()


def type_allowed(content_type: str, allowed: tuple[str, ...]) -> bool:
    return content_type in allowed or f"{content_type.split('/')[0]}/*" in allowed


def _declaration_errors(settings: Settings, purpose: str, content_type: str,
                        size: int) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not _MEDIA_TYPE_RE.fullmatch(content_type):
        errors["content_type"] = ["Give a media type such as image/png."]
    elif not type_allowed(content_type, settings.upload_types):
        errors["content_type"] = [f"{content_type} files are not accepted here; accepted: "
                                  f"{', '.join(settings.upload_types)}."]
    elif purpose == "cover" and not content_type.startswith("image/"):
        errors["content_type"] = ["A cover is an image."]
    elif purpose == "video" and not content_type.startswith("video/"):
        errors["content_type"] = ["A video file has a video/… type."]
    if size > settings.max_upload_bytes:
        errors["size"] = [f"Files are limited to {settings.max_upload_bytes} bytes."]
    return errors


def request_upload(session: Session, kalpla: Kalpla, caller: courses.Caller,
                   data: Mapping[str, Any]) -> tuple[StoredFile, UploadInstructions]:
    """A pending file of the course and how to upload it (the course's staff)."""
    course = courses.editable_course(session, caller, data["course_id"])
    assert caller.user is not None  # editable_course answers 401 to anonymous callers
    purpose, size = data["purpose"], data["size"]
    content_type, filename = media_type(data["content_type"]), clean_filename(data["filename"])
    errors = _declaration_errors(kalpla.settings, purpose, content_type, size)
    if not filename:
        errors["filename"] = ["Give the file's name."]
    lesson_id = data.get("lesson_id")
    if lesson_id is not None:
        lesson = session.get(Lesson, lesson_id)
        if lesson is None or lesson.course_id != course.id:
            errors["lesson_id"] = ["Give a lesson of this course."]
        elif purpose == "cover":
            errors["lesson_id"] = ["A cover belongs to the course, not to a lesson."]
    if errors:
        raise _invalid(errors)

    file_id = new_id()
    file = StoredFile(
        id=file_id, institution_id=course.institution_id, owner_id=caller.user.id,
        course_id=course.id, lesson_id=lesson_id, purpose=purpose,
        provider=kalpla.settings.storage,
        # Made here, never from the file's name: no user input reaches a path or an S3 key.
        storage_key=upload_key(course.institution_id, file_id),
        filename=filename, content_type=content_type, size=size, status="pending")
    session.add(file)
    session.flush()
    instructions = storage(kalpla, file.provider).upload(
        file.storage_key, content_type=content_type, size=size, filename=filename,
        ttl=UPLOAD_TTL)
    return file, instructions


def object_errors(settings: Settings, file: StoredFile, obj: StoredObject,
                  required_encryption: str | None) -> dict[str, list[str]]:
    """How the stored object differs from the declaration and the settings."""
    errors: dict[str, list[str]] = {}
    if obj.size != file.size:
        errors["size"] = [f"{obj.size} bytes were stored; {file.size} were declared."]
    elif obj.size > settings.max_upload_bytes:
        errors["size"] = [f"Files are limited to {settings.max_upload_bytes} bytes."]
    stored_type = media_type(obj.content_type or "")
    if stored_type != file.content_type:
        errors["content_type"] = [f"The object was stored as {stored_type or 'no type'}; "
                                  f"{file.content_type} was declared."]
    elif not type_allowed(stored_type, settings.upload_types):
        errors["content_type"] = [f"{stored_type} files are not accepted here."]
    if required_encryption and obj.encryption != required_encryption:
        errors["encryption"] = [f"The object is not encrypted with {required_encryption}."]
    return errors


def confirm_upload(session: Session, kalpla: Kalpla, caller: courses.Caller,
                   file_id: str) -> StoredFile:
    """Check the uploaded object and make the file ``ready`` (the course's staff). A
    mismatching object is deleted (422) and the file stays pending: upload again while the
    instructions last, or delete the file and ask anew. The checked object is kept at the
    file's final key; one replaced between the check and the copy is not (409, confirm
    again). Confirming a ready file is a no-op.

    The provider's work (reading, hashing, copying up to the size limit) is done with no
    transaction open and no connection held; only marking the file ready locks its row, in a
    short transaction that first checks nobody confirmed, deleted or purged it meanwhile."""
    file = managed_file(session, caller, file_id)
    if file.status == "ready":
        return file
    provider = storage(kalpla, file.provider)
    key, final = file.storage_key, final_key(file.institution_id, file.id)
    session.commit()  # the read ends (and its connection goes back) before the provider works
    obj = provider.stat(key)
    if obj is None:
        # A concurrent confirm may have made it ready and deleted the upload key meanwhile.
        settled = _settled(session, file_id)
        if settled is not None:
            return settled
        raise APIError(422, "Nothing has been uploaded for this file yet.", "upload-missing")
    errors = object_errors(kalpla.settings, file, obj, provider.required_encryption)
    if errors:
        provider.delete(key)
        raise APIError(422, "The uploaded object does not match its declaration and was "
                       "deleted; see errors.", "upload-rejected", errors=errors)
    # A confirm retried after another one finished copies nothing.
    current = _fresh(session, file_id)
    session.commit()
    if current is None:
        raise _not_found(file_id)
    if current.status == "ready":
        return current
    try:
        kept_at, kept = _keep(provider, key, final, obj)
    except ObjectChanged:
        # Gone from the upload key because a concurrent confirm finished, or the file was
        # deleted or purged: say so rather than "changed".
        settled = _settled(session, file_id)
        if settled is not None:
            return settled
        raise APIError(409, "The uploaded object changed while it was being checked; "
                       "confirm again.", "upload-changed") from None
    # Locked from here to the commit: a concurrent confirm that copied too waits, then finds
    # the file ready; a deletion or purge that went first leaves no row (404).
    locked = _lock_file(session, file_id)
    if locked is None or locked.status != "pending" or locked.storage_key != key:
        return _lost(session, provider, file_id, locked, kept_at if kept_at != key else None)
    locked.storage_key = kept_at
    locked.sha256 = kept.sha256
    locked.status = "ready"
    locked.confirmed_at = utcnow()
    session.flush()
    if kept_at != key:
        queue_after_commit(session, lambda: provider.delete(key))
    return locked


def _fresh(session: Session, file_id: str) -> StoredFile | None:
    """The file as the database has it now (no lock)."""
    return session.scalars(select(StoredFile).where(StoredFile.id == file_id)
                           .execution_options(populate_existing=True)).one_or_none()


def _settled(session: Session, file_id: str) -> StoredFile | None:
    """The file if it is ready now; 404 when it no longer exists; None while pending."""
    current = _fresh(session, file_id)
    session.commit()
    if current is None:
        raise _not_found(file_id)
    return current if current.status == "ready" else None


def _lost(session: Session, provider: StorageProvider, file_id: str,
          locked: StoredFile | None, copied: str | None) -> StoredFile:
    """Answer a confirm that copied ``copied`` (None: nothing) but found, with the row locked,
    that the file was confirmed, deleted or purged meanwhile (or its upload key changed).

    The copy is deleted once the lock is released, unless the row names its key: final keys
    are fixed per file, so the confirm that won kept its object at that same key, and
    deleting it would lose the file. Both copies are of an object checked against the
    declaration; on the ``local`` provider they are the very same file (an upload is never
    replaced while its file is pending, only refused, deleted and sent anew), so the recorded
    checksum stays right. A file still pending keeps whatever is at its final key: a confirm
    of its new upload key may be copying there, and deleting or purging the file clears that
    key anyway."""
    orphan = copied is not None and (locked is None or (
        locked.status == "ready" and locked.storage_key != copied))
    session.commit()
    if orphan:
        assert copied is not None
        provider.delete(copied)
    if locked is None:
        raise _not_found(file_id)
    if locked.status == "ready":
        return locked
    raise APIError(409, "The file's upload changed while it was being checked; confirm "
                   "again.", "upload-changed")


def _keep(provider: StorageProvider, key: str, final: str,
          obj: StoredObject) -> tuple[str, StoredObject]:
    """Where the checked object is kept, and what is there; :class:`ObjectChanged` when it
    was replaced after the check."""
    finalize = getattr(provider, "finalize", None)
    if finalize is None:
        # A provider written before the port had finalize: the object stays where it was
        # uploaded, replaceable until the instructions expire, as it was then.
        log.warning("storage provider %r has no finalize(); confirmed files stay at their "
                    "upload keys", provider.name)
        return key, obj
    return final, finalize(key, final, obj)


def _lock_file(session: Session, file_id: str) -> StoredFile | None:
    """The file, fresh and locked until the transaction ends (``SELECT … FOR UPDATE``; on
    SQLite, the database write lock)."""
    serialise_writes(session)
    return session.scalars(select(StoredFile).where(StoredFile.id == file_id)
                           .with_for_update()
                           .execution_options(populate_existing=True)).one_or_none()


def check_upload_open(session: Session, provider: str, key: str) -> None:
    """409 unless ``key`` is the upload key of a pending file of ``provider``: a signed
    upload URL stops working once its file is confirmed, deleted or purged."""
    file_id = key.rsplit("/", 1)[-1]  # the last part of every key the core makes
    file = session.scalars(select(StoredFile).where(StoredFile.id == file_id)
                           .execution_options(populate_existing=True)).one_or_none()
    if (file is None or file.status != "pending" or file.provider != provider
            or file.storage_key != key):
        raise APIError(409, "This upload is closed: its file was confirmed or deleted. Ask "
                       "for a new upload to send another file.", "upload-closed")


# --- who reads and who manages a file ---------------------------------------------------------

def _get(session: Session, file_id: str) -> StoredFile:
    file = session.get(StoredFile, file_id)
    if file is None:
        raise _not_found(file_id)
    return file


def managed_file(session: Session, caller: courses.Caller, file_id: str) -> StoredFile:
    """The file if the caller is its course's staff: 404 when they may not see the course,
    401 when anonymous, 403 otherwise. A file of no course is its institution's admins'."""
    file = _get(session, file_id)
    if file.course_id is None:
        if not caller.can(courses.MANAGE_ALL, file.institution_id):
            raise _not_found(file_id)
        return file
    courses.editable_course(session, caller, file.course_id)
    return file


def _lessons_using(session: Session, file: StoredFile) -> list[Lesson]:
    """The lesson the file belongs to (``lesson_id``) and the lessons using it as their file."""
    uses = Lesson.file_id == file.id
    stmt = select(Lesson).where(or_(uses, Lesson.id == file.lesson_id)
                                if file.lesson_id is not None else uses)
    if file.course_id is not None:
        stmt = stmt.where(Lesson.course_id == file.course_id)  # read through the course's index
    return list(session.scalars(stmt.order_by(Lesson.id).limit(50)))


def read_decision(session: Session, kalpla: Kalpla, caller: courses.Caller, course: Course,
                  file: StoredFile) -> Decision:
    """Whether a caller who sees ``course`` but is not its staff reads the ready ``file``."""
    if file.purpose == "cover":  # never a lesson's (refused when asked)
        return Decision.allow()
    lessons = _lessons_using(session, file)
    if lessons:
        first: Decision | None = None
        for lesson in lessons:
            decision = access.can_read_lesson(session, kalpla, caller.user, lesson,
                                              can=caller.can)
            if decision.outcome == "allow":
                return decision
            first = first or decision
        assert first is not None
        return first
    if file.purpose == "resource":
        if caller.user is not None and access.has_seat(session, caller.user.id, course.id):
            return Decision.allow()
        if caller.user is None:
            return Decision.deny("Sign in and enroll in the course to read its resources.",
                                 "not-enrolled")
        return Decision.deny("Enroll in the course to read its resources.", "not-enrolled")
    return Decision.deny("Only the course's staff read a file no lesson uses.", "forbidden")


def refusal(caller: courses.Caller, decision: Decision) -> APIError:
    """401 to an anonymous caller whom signing in could help, else 403 with the reason."""
    if caller.user is None and not decision.plugin:
        return APIError(401, decision.reason, "unauthorized", reason_code=decision.code,
                        headers={"WWW-Authenticate": 'Bearer realm="kalpla"'})
    return APIError(403, decision.reason, decision.code or "forbidden",
                    plugin=decision.plugin or None,
                    action=dict(decision.action) if decision.action else None)


def readable_file(session: Session, kalpla: Kalpla, caller: courses.Caller,
                  file_id: str) -> StoredFile:
    """The file if the caller may read it (see the module's rules), else 404/401/403."""
    file = _get(session, file_id)
    if file.course_id is None:
        return managed_file(session, caller, file_id)
    course = courses.visible_course(session, caller, file.course_id)
    if courses.is_staff(session, caller, course):
        return file
    if file.status != "ready":
        raise _not_found(file_id)
    decision = read_decision(session, kalpla, caller, course, file)
    if decision.outcome != "allow":
        raise refusal(caller, decision)
    return file


# --- downloads, deletion, listing -------------------------------------------------------------

def download_ttl(file: StoredFile) -> int:
    return MEDIA_DOWNLOAD_TTL if file.content_type.startswith(("video/", "audio/")) \
        else DOWNLOAD_TTL


def download_url(kalpla: Kalpla, file: StoredFile, ttl: int | None = None) -> str:
    """A URL serving the ready ``file`` for ``ttl`` seconds (by default a few minutes, an
    hour for audio and video). It checks no rights: callers decide who gets it (routes
    through :func:`readable_file`, lessons through ``can_read_lesson``)."""
    if file.status != "ready":
        raise APIError(409, "The file's upload has not been confirmed yet.", "file-not-ready")
    return storage(kalpla, file.provider).download_url(
        file.storage_key, filename=file.filename, content_type=file.content_type,
        ttl=ttl or download_ttl(file))


def delete_file(session: Session, kalpla: Kalpla, caller: courses.Caller, file_id: str) -> None:
    """Delete the file (the course's staff); the stored object goes once the deletion is
    committed. A file a lesson uses is refused (409): the lesson needs another one first.
    Courses showing it as their cover lose the cover."""
    file = managed_file(session, caller, file_id)
    used = [lesson.id for lesson in _lessons_using(session, file)
            if lesson.file_id == file.id]
    if used:
        raise APIError(409, "Lessons use this file; give them another one first.",
                       "file-in-use", lessons=used)
    for course in session.scalars(select(Course).where(
            Course.institution_id == file.institution_id, Course.cover_file_id == file.id)):
        course.cover_file_id = None
    provider, keys = storage(kalpla, file.provider), stored_keys(file)
    session.delete(file)
    session.flush()
    queue_after_commit(session, lambda: _delete_all(provider, keys))


def _delete_all(provider: StorageProvider, keys: list[str]) -> None:
    for key in keys:
        try:
            provider.delete(key)
        except Exception:  # the next keys still go; the leftover is only storage
            log.exception("stored object could not be deleted", extra={"key": key})


def resources_page(session: Session, caller: courses.Caller, course_id: str, limit: int,
                   cursor: str | None, secret: str) -> Page:
    """The course's ready resources (not those of a lesson), newest first: for its staff
    and the students holding a seat in it."""
    course = courses.visible_course(session, caller, course_id)
    seated = caller.user is not None and access.has_seat(session, caller.user.id, course.id)
    if not seated and not courses.is_staff(session, caller, course):
        raise refusal(caller, Decision.deny("Enroll in the course to read its resources.",
                                            "not-enrolled"))
    stmt = select(StoredFile).where(
        StoredFile.course_id == course.id, StoredFile.purpose == "resource",
        StoredFile.lesson_id.is_(None), StoredFile.status == "ready")
    return paginate(session, stmt, RESOURCE_ORDER, limit, cursor, secret)
