"""Bulk enrollment: staff hand in a list of addresses (JSON or CSV) and a background job
(``core.bulk_enroll``) enrolls them. No Flask here.

Each row runs in a transaction of its own, so a row is applied entirely or not at all, and
goes through the same checks, gate and capacity as an enrollment by staff. A row's result:

- ``enrolled``: the user is enrolled now (``status`` says active, waitlisted or pending);
  a user who was not yet a member of the institution joined it with the row's role;
- ``already-enrolled``: the user already had a standing enrollment; nothing changed;
- ``invited``: no account had the address: one was created and invited by mail (the members
  service's invitation), made a member with the row's role and enrolled;
- ``invalid``: the row was refused, with the reason (a malformed address, an unknown role,
  a plugin's denial, …); nothing of it was written.

Running the same list again changes nothing: every row it enrolled is then
``already-enrolled``.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError, validate
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kalpla_core.courses.service import Caller
from kalpla_core.enrollment import service
from kalpla_core.http.problems import APIError
from kalpla_core.identity.members import Actor, add_member, find_user_by_email, invite
from kalpla_core.identity.models import ROLES, User
from kalpla_core.identity.permissions import roles_of
from kalpla_core.identity.throttle import normalise_email
from kalpla_core.institutions.models import Institution

if TYPE_CHECKING:
    from kalpla_core.jobs import JobContext

JOB = "core.bulk_enroll"
MAX_ROWS = 5000
MAX_EMAIL = 320  # users.email
DEFAULT_ROLE = "student"
RESULTS = ("enrolled", "already-enrolled", "invited", "invalid")
_email = validate.Email()


def _invalid_list(message: str) -> APIError:
    return APIError(422, "The request has invalid fields; see errors.", "validation",
                    errors={"rows": [message]})


def clean_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, str | None]]:
    """The rows as the job takes them (``email``, ``role``), at least one and at most
    :data:`MAX_ROWS`. Addresses and roles are checked by the job, row by row."""
    out: list[dict[str, str | None]] = []
    for row in rows:
        role = (row.get("role") or "").strip() or None
        out.append({"email": (row.get("email") or "").strip(), "role": role})
        if len(out) > MAX_ROWS:
            raise _invalid_list(f"A bulk enrollment takes at most {MAX_ROWS} rows.")
    if not out:
        raise _invalid_list("Give at least one row.")
    return out


def parse_csv(text: str) -> list[dict[str, str | None]]:
    """Rows of a CSV file with a header line naming an ``email`` column and optionally a
    ``role`` column (in any order and case; other columns are ignored)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if "email" not in header:
            raise _invalid_list("The CSV needs a header line with an 'email' column.")
        email_at = header.index("email")
        role_at = header.index("role") if "role" in header else None
        rows = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # blank line
            rows.append({
                "email": record[email_at] if email_at < len(record) else "",
                "role": record[role_at] if role_at is not None and role_at < len(record)
                else None})
            if len(rows) > MAX_ROWS:
                break
    except csv.Error as exc:
        raise _invalid_list(f"The CSV cannot be read: {exc}.") from None
    return clean_rows(rows)


def start(session: Session, kalpla: Any, caller: Caller, course_id: str,
          rows: list[dict[str, str | None]]) -> Any:
    """Queue the job for the course's staff (it starts after the commit); the job record."""
    course = service.managed_course(session, caller, course_id)
    service.check_published(course)
    assert caller.user is not None  # managed_course refuses anonymous callers
    return kalpla.jobs.enqueue(session, JOB, {
        "course_id": course.id, "rows": rows, "requested_by": caller.user.id,
    }, owner_id=caller.user.id, institution_id=course.institution_id)


def enroll_row(session: Session, kalpla: Any, actor: User, course_id: str, email: str,
               role: str | None) -> dict[str, Any]:
    """Enroll one address as ``actor``; raises :class:`APIError` to refuse the row."""
    try:
        email = normalise_email(_email(email))
    except ValidationError:
        raise APIError(422, "This is not an email address.", "invalid-email") from None
    if len(email) > MAX_EMAIL:
        raise APIError(422, f"An address has at most {MAX_EMAIL} characters.",
                       "invalid-email")
    role = role or DEFAULT_ROLE
    if role not in ROLES:
        raise APIError(422, f"Unknown role {role!r}; use one of {', '.join(ROLES)}.",
                       "invalid-role")
    caller = Caller(actor, lambda permission, inst: kalpla.has_permission(
        session, actor, permission, inst))
    course = service.managed_course(session, caller, course_id)
    institution = session.get(Institution, course.institution_id)
    assert institution is not None
    user = find_user_by_email(session, email)
    result = "enrolled"
    if user is None:
        member = invite(session, kalpla, institution, email, [role], Actor(actor.id),
                        inviter_name=actor.name)
        user, result = member.user, "invited"
    elif not user.is_platform_admin and not roles_of(session, user.id, institution.id):
        add_member(session, institution, user, [role], Actor(actor.id))
    enrollment = service.enroll(session, kalpla, caller, course.id, user.id, source="bulk")
    return {"result": result, "status": enrollment.status, "enrollment_id": enrollment.id}


def _row(ctx: JobContext, kalpla: Any, course_id: str, requested_by: str,
         row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        with ctx.session() as session:
            actor = session.get(User, requested_by)
            if actor is None or not actor.is_active or actor.deleted_at is not None:
                raise APIError(403, "The account that started this job is disabled.",
                               "forbidden")
            return enroll_row(session, kalpla, actor, course_id, row.get("email") or "",
                              row.get("role"))
    except APIError as exc:
        if exc.code == "already-enrolled":
            return {"result": "already-enrolled", "status": exc.extra.get("enrollment_status"),
                    "enrollment_id": exc.extra.get("enrollment_id")}
        reason = exc.detail
        errors = exc.extra.get("errors")
        if isinstance(errors, Mapping):
            reason = " ".join(str(m) for ms in errors.values() for m in (
                ms if isinstance(ms, list) else [ms]))
        return {"result": "invalid", "code": exc.code, "reason": reason}
    except IntegrityError:
        # Another writer created the same account or enrollment at this very moment.
        return {"result": "invalid", "code": "conflict",
                "reason": "The row conflicted with a change made meanwhile; run it again."}


def bulk_enroll_job(ctx: JobContext, course_id: str, rows: list[dict[str, Any]],
                    requested_by: str) -> dict[str, Any]:
    """The ``core.bulk_enroll`` job: one transaction per row, progress as it goes, and the
    per-row results with their counts."""
    kalpla = ctx.app.extensions["kalpla"]
    results: list[dict[str, Any]] = []
    step = max(1, len(rows) // 50)
    for n, row in enumerate(rows, 1):
        outcome = _row(ctx, kalpla, course_id, requested_by, row)
        results.append({"row": n, "email": row.get("email") or "", **outcome})
        if n % step == 0 or n == len(rows):
            ctx.progress(n * 100 // len(rows), f"{n} of {len(rows)} rows")
    counts = Counter(r["result"] for r in results)
    return {"course_id": course_id, "total": len(rows),
            "counts": {k: counts.get(k, 0) for k in RESULTS}, "rows": results}
