"""The course catalog: filters, sorts and keyset pages. No Flask here.

Filters on columns of ``courses`` (institution, level, language) each have a composite index
(filter, status, sort key, id) per ordering, so such a page reads its rows in order from one
index, whatever the size of the catalog. Filters on related tables (tag, instructor, words)
are probes through those tables' keys; when one of them matches few courses the page is drawn
from those few (see :func:`_candidates`). A page is one query (joined with the institution,
for its slug) plus, with related filters, at most two bounded probes; then one query each for
the page's tags and instructors.

Free text: the words of a course's title and summary are stored folded in
``course_search_terms``; each word of ``q`` must be the prefix of one of them (``pyth`` finds
"Python", ``cafe`` finds "Café"). That runs the same on SQLite and PostgreSQL, with no
extension and no trigger, at the price of not matching inside a word.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    exists,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from kalpla_core.courses.models import Course, CourseInstructor, CourseSearchTerm, CourseTag
from kalpla_core.http.pagination import Page, decode_cursor, encode_cursor
from kalpla_core.identity.models import User
from kalpla_core.institutions.models import Institution

SORTS = ("newest", "title", "popularity")
MAX_QUERY_WORDS = 8
# Up to this many matches of related filters (tag, instructor, words), a page is sorted
# from the matches themselves (see _candidates). The two ways cost alike around the square
# root of limit × catalog size; this value was chosen with bench/catalog.py.
CANDIDATES = 500
TERM_LENGTH = 64
# Above every code point a term can hold (a noncharacter is never part of a word).
_TOP = "\U0010ffff"
_ASCII_WORD = re.compile(r"[a-z0-9]+")

Direction = Literal["asc", "desc"]


# --- words ----------------------------------------------------------------------------------

def _fold(text: str) -> str:
    """Case-folded, with the accents of Latin, Greek and Cyrillic letters removed; marks of
    other scripts (Devanagari vowel signs, for instance) are part of the word and stay."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFKD", text.casefold()):
        if unicodedata.category(ch) == "Mn" and out and out[-1] < "\u0530":
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def search_terms(text: str) -> list[str]:
    """The distinct words of ``text`` as the search stores and matches them: runs of letters,
    marks and digits, folded, cut at 64 characters."""
    if text.isascii():  # the common case, a hundred times faster
        return list(dict.fromkeys(w[:TERM_LENGTH] for w in _ASCII_WORD.findall(text.lower())))
    words: list[str] = []
    current: list[str] = []
    for ch in _fold(text) + " ":
        if unicodedata.category(ch)[0] in "LMN":
            current.append(ch)
        elif current:
            words.append("".join(current)[:TERM_LENGTH])
            current = []
    return list(dict.fromkeys(words))


def course_terms(title: str, summary: str) -> list[str]:
    return search_terms(f"{title} {summary}")


def index_course(session: Session, course: Course, keys: Mapping[str, Any]) -> None:
    """Store the words of the course's title and summary (after either changed), with its
    sort keys (see :func:`sort_key_values`)."""
    session.execute(delete(CourseSearchTerm).where(CourseSearchTerm.course_id == course.id))
    terms = course_terms(course.title, course.summary)
    if terms:
        session.execute(insert(CourseSearchTerm),
                        [{"course_id": course.id, "term": t, **keys} for t in terms])


# --- sort keys beside tags, instructors and words -------------------------------------------

# The tables whose rows carry copies of their course's sort keys (models.CatalogSortKeys).
SORTED_TABLES = (CourseTag, CourseInstructor, CourseSearchTerm)


def _newest_at(course: Course) -> datetime:
    if course.status == "published" and course.published_at is not None:
        return course.published_at
    return course.created_at


def sort_key_values(course: Course, enrollment_count: int) -> dict[str, Any]:
    """What a new tag, instructor or word row of the (flushed) course carries. The count is
    the enrollment service's: the caller reads it under the course lock enrollment writers
    take, so that it cannot change before the row is committed."""
    return {"status": course.status, "newest_at": _newest_at(course), "title": course.title,
            "enrollment_count": enrollment_count}


def sync_sort_keys(session: Session, course: Course) -> None:
    """Copy the course's status, "newest" time and title to its rows of the sorted tables
    (after any of them changed). The enrollment count has its own writer:
    :func:`sync_enrollment_count`."""
    values = {"status": course.status, "newest_at": _newest_at(course), "title": course.title}
    for table in SORTED_TABLES:
        session.execute(update(table).where(table.course_id == course.id).values(values)
                        .execution_options(synchronize_session=False))


def sync_enrollment_count(session: Session, course_id: str, count: int) -> None:
    """Copy a new enrollment count to the course's rows of the sorted tables (in the
    transaction, under the course lock, that changed it)."""
    for table in SORTED_TABLES:
        session.execute(update(table).where(table.course_id == course_id)
                        .values(enrollment_count=count)
                        .execution_options(synchronize_session=False))


def _prefix(column: InstrumentedAttribute[str], word: str, dialect: str) -> ColumnElement[bool]:
    """``column`` starts with ``word``, in the form the column's index answers."""
    if dialect == "postgresql":
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(escaped + "%", escape="\\")
    return and_(column >= word, column < word + _TOP)


# --- the query ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CatalogFilter:
    """What a catalog page lists. ``institution_id`` and ``only_staff_of`` come from the
    caller's rights (drafts and archived courses are listed only within one institution, to
    its staff); the rest are the client's filters."""

    status: str = "published"
    institution_slug: str | None = None
    institution_id: str | None = None
    only_staff_of: str | None = None  # a user id: courses they instruct or created
    tag: str | None = None
    level: str | None = None
    language: str | None = None
    instructor: str | None = None
    q: str | None = None
    sort: str = "newest"


def sort_keys(status: str, sort: str) -> list[tuple[InstrumentedAttribute[Any], Direction]]:
    """The keyset order of a listing; the id makes it total. Drafts have no publication
    date, so "newest" lists them by creation."""
    if sort == "title":
        return [(Course.title, "asc"), (Course.id, "asc")]
    if sort == "popularity":
        return [(Course.enrollment_count, "desc"), (Course.id, "desc")]
    newest = Course.published_at if status == "published" else Course.created_at
    return [(newest, "desc"), (Course.id, "desc")]


@dataclass(frozen=True)
class _Related:
    """A filter on a table beside ``courses`` (tags, instructors, words): ``matches(t)`` is
    its condition on an alias ``t`` of the table."""

    table: Any
    matches: Callable[[Any], ColumnElement[bool]]

    def holds(self, course_id: ColumnElement[Any]) -> ColumnElement[bool]:
        """True for the course ``course_id``: probed through the table's (course_id, …) key."""
        t = aliased(self.table)
        return exists().where(t.course_id == course_id, self.matches(t))


def _related(flt: CatalogFilter, dialect: str) -> list[_Related]:
    """The related-table filters, the likeliest to match few courses first."""
    out = []
    if flt.tag is not None:
        tag = flt.tag
        out.append(_Related(CourseTag, lambda t: t.tag == tag))
    if flt.instructor is not None:
        user_id = flt.instructor
        out.append(_Related(CourseInstructor, lambda t: t.user_id == user_id))
    words = sorted(search_terms(flt.q or "")[:MAX_QUERY_WORDS], key=len, reverse=True)
    out += [_Related(CourseSearchTerm, lambda t, w=w: _prefix(t.term, w, dialect))
            for w in words]
    return out


def _conditions(flt: CatalogFilter) -> list[ColumnElement[bool]]:
    """The filters on columns of ``courses``, each answered by a composite index."""
    cond: list[ColumnElement[bool]] = [Course.status == flt.status]
    if flt.institution_id is not None:
        cond.append(Course.institution_id == flt.institution_id)
    if flt.institution_slug is not None:
        cond.append(Course.institution_id == select(Institution.id).where(
            Institution.slug == flt.institution_slug).scalar_subquery())
    if flt.only_staff_of is not None:
        cond.append(or_(Course.created_by == flt.only_staff_of, Course.id.in_(
            select(CourseInstructor.course_id).where(
                CourseInstructor.user_id == flt.only_staff_of))))
    if flt.level is not None:
        cond.append(Course.level == flt.level)
    if flt.language is not None:
        cond.append(Course.language == flt.language)
    return cond


def _after(keys: Sequence[tuple[InstrumentedAttribute[Any], Direction]],
           values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows past the cursor, as one row-value comparison (both keys run the same way), which
    SQLite and PostgreSQL turn into an index range."""
    left = tuple_(*[col for col, _ in keys])
    right = tuple_(*[literal(v, col.type) for (col, _), v in zip(keys, values, strict=True)])
    return left > right if keys[0][1] == "asc" else left < right


def _candidates(session: Session, conditions: list[ColumnElement[bool]],
                related: list[_Related]) -> list[str] | None:
    """The ids of every course the filters match, when they match at most ``CANDIDATES``;
    else None.

    Read from the first related filter's index, each entry checked against the others and the
    course's columns: the read stops after ``CANDIDATES`` hits, or at the end of that filter's
    entries. A page of few matches is then sorted from those ids; with more, reading a sort
    index in order and probing each course finds a page within about
    ``limit × catalog / CANDIDATES`` rows. A rare tag or word, or a rare combination of
    common ones, would otherwise make that read the whole catalog."""
    first, rest = related[0], related[1:]
    t = aliased(first.table)
    stmt = (select(t.course_id)
            .where(first.matches(t), exists().where(Course.id == t.course_id, *conditions),
                   *[rel.holds(t.course_id) for rel in rest])
            .distinct().limit(CANDIDATES + 1))
    ids = list(session.scalars(stmt))
    return ids if len(ids) <= CANDIDATES else None


def catalog_page(session: Session, flt: CatalogFilter, limit: int, cursor: str | None,
                 secret: str) -> Page:
    """One page of the catalog, as :class:`CourseCard` items."""
    keys = sort_keys(flt.status, flt.sort)
    after = decode_cursor(cursor, keys, secret) if cursor else None
    related = _related(flt, session.get_bind().dialect.name)
    cond = _conditions(flt)
    if related:
        candidates = _candidates(session, cond, related)
        if candidates == []:
            return Page([], None)
        if candidates is None:
            cond += [rel.holds(Course.id) for rel in related]
        else:
            cond.append(Course.id.in_(candidates))
    if after is not None:
        cond.append(_after(keys, after))
    stmt = (select(Course, Institution.slug)
            .join(Institution, Institution.id == Course.institution_id).where(*cond)
            .order_by(*[c.asc() if d == "asc" else c.desc() for c, d in keys]))
    rows = session.execute(stmt.limit(limit + 1)).all()
    rows, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more:
        last = rows[-1][0]
        next_cursor = encode_cursor([getattr(last, c.key) for c, _ in keys], keys, secret)
    return Page(cards_of(session, [(course, slug) for course, slug in rows]), next_cursor)


# --- what a page shows ----------------------------------------------------------------------

@dataclass(frozen=True)
class InstructorRef:
    id: str
    name: str


class CourseCard:
    """A course with what the API shows beside its columns: the institution's slug, tags and
    instructors (and, when loaded, prerequisites). Other attributes are the course's own."""

    def __init__(self, course: Course, institution: str, tags: list[str],
                 instructors: list[InstructorRef],
                 prerequisites: list[str] | None = None) -> None:
        self.course = course
        self.institution = institution
        self.tags = tags
        self.instructors = instructors
        self.prerequisites = prerequisites or []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.course, name)


def tags_of(session: Session, course_ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    if course_ids:
        rows = session.execute(select(CourseTag.course_id, CourseTag.tag)
                               .where(CourseTag.course_id.in_(course_ids))
                               .order_by(CourseTag.course_id, CourseTag.tag))
        for course_id, tag in rows:
            out[course_id].append(tag)
    return out


def instructors_of(session: Session,
                   course_ids: Sequence[str]) -> dict[str, list[InstructorRef]]:
    out: dict[str, list[InstructorRef]] = defaultdict(list)
    if course_ids:
        rows = session.execute(select(CourseInstructor.course_id, User.id, User.name)
                               .join(User, User.id == CourseInstructor.user_id)
                               .where(CourseInstructor.course_id.in_(course_ids))
                               .order_by(CourseInstructor.course_id, User.name, User.id))
        for course_id, user_id, name in rows:
            out[course_id].append(InstructorRef(user_id, name))
    return out


def cards_of(session: Session, courses: Sequence[tuple[Course, str]]) -> list[CourseCard]:
    """Cards of courses given with their institution's slug: two queries however many."""
    ids = [c.id for c, _ in courses]
    tags, instructors = tags_of(session, ids), instructors_of(session, ids)
    return [CourseCard(c, slug, tags.get(c.id, []), instructors.get(c.id, []))
            for c, slug in courses]
