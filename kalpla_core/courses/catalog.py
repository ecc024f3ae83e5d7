"""The course catalog: filters, sorts and keyset pages whose cost does not follow the size of
the catalog. No Flask here.

Every filter is answered from an index: the institution, level and language from composite
indexes on ``courses`` that end in the sort keys, tags, instructors and words from their own
tables' indexes. A page is one query (joined with the institution for its slug), then one
query each for the page's tags and instructors.

Free text: the words of a course's title and summary are stored folded in
``course_search_terms``; each word of ``q`` must be the prefix of one of them (``pyth`` finds
"Python", ``cafe`` finds "Café"). That runs the same on SQLite and PostgreSQL, with no
extension and no trigger, at the price of not matching inside a word.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, delete, insert, literal, or_, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from kalpla_core.courses.models import Course, CourseInstructor, CourseSearchTerm, CourseTag
from kalpla_core.http.pagination import Page, decode_cursor, encode_cursor
from kalpla_core.identity.models import User
from kalpla_core.institutions.models import Institution

SORTS = ("newest", "title", "popularity")
MAX_QUERY_WORDS = 8
TERM_LENGTH = 64
# Above every code point a term can hold (a noncharacter is never part of a word).
_TOP = "\U0010ffff"

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


def index_course(session: Session, course: Course) -> None:
    """Store the words of the course's title and summary (after either changed)."""
    session.execute(delete(CourseSearchTerm).where(CourseSearchTerm.course_id == course.id))
    terms = course_terms(course.title, course.summary)
    if terms:
        session.execute(insert(CourseSearchTerm),
                        [{"course_id": course.id, "term": t} for t in terms])


def _prefix(column: InstrumentedAttribute[str], word: str, dialect: str) -> ColumnElement[bool]:
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


def _conditions(flt: CatalogFilter, dialect: str) -> list[ColumnElement[bool]]:
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
    if flt.tag is not None:
        cond.append(Course.id.in_(select(CourseTag.course_id).where(CourseTag.tag == flt.tag)))
    if flt.instructor is not None:
        cond.append(Course.id.in_(select(CourseInstructor.course_id).where(
            CourseInstructor.user_id == flt.instructor)))
    for word in search_terms(flt.q or "")[:MAX_QUERY_WORDS]:
        cond.append(Course.id.in_(select(CourseSearchTerm.course_id).where(
            _prefix(CourseSearchTerm.term, word, dialect))))
    return cond


def _after(keys: Sequence[tuple[InstrumentedAttribute[Any], Direction]],
           values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows past the cursor, as one row-value comparison (both keys run the same way), which
    SQLite and PostgreSQL turn into an index range."""
    left = tuple_(*[col for col, _ in keys])
    right = tuple_(*[literal(v, col.type) for (col, _), v in zip(keys, values, strict=True)])
    return left > right if keys[0][1] == "asc" else left < right


def catalog_statement(flt: CatalogFilter, dialect: str) -> Select[Any]:
    return (select(Course, Institution.slug)
            .join(Institution, Institution.id == Course.institution_id)
            .where(*_conditions(flt, dialect)))


def catalog_page(session: Session, flt: CatalogFilter, limit: int, cursor: str | None,
                 secret: str) -> Page:
    """One page of the catalog, as :class:`CourseCard` items."""
    keys = sort_keys(flt.status, flt.sort)
    stmt = catalog_statement(flt, session.get_bind().dialect.name)
    if cursor:
        stmt = stmt.where(_after(keys, decode_cursor(cursor, keys, secret)))
    stmt = stmt.order_by(*[c.asc() if d == "asc" else c.desc() for c, d in keys])
    rows = session.execute(stmt.limit(limit + 1)).all()
    rows, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more:
        last = rows[-1][0]
        next_cursor = encode_cursor([getattr(last, c.key) for c, _ in keys], keys, secret)
    cards = cards_of(session, [(course, slug) for course, slug in rows])
    return Page(cards, next_cursor)


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
