"""The course catalog: filters, sorts and keyset pages. No Flask here.

Every page is read in its order from one index, so that it costs about the same whatever the
size of the catalog:

- filters on columns of ``courses`` (institution, level, language) each have a composite index
  (filter, status, sort key, id) per ordering;
- the tables of the related filters (``course_tags``, ``course_instructors``,
  ``course_search_terms``) carry copies of their course's sort keys (``CatalogSortKeys``: status,
  "newest" time, title, enrollment count), kept by :func:`sync_sort_keys` and
  :func:`sync_enrollment_count` in the transaction that changes the course, with an index
  (value, status, sort key, course_id) per ordering. The first related filter (instructor,
  else tag, else the word of fewest rows) drives the page: its rows are read in order, each checked
  against the other filters (probes through the course's key and the other tables' keys),
  until the page is full. A word of ``q`` is a prefix: the terms it starts (up to
  ``MERGED_TERMS``, found by hopping through the index) each give an ordered run, and the runs
  are merged. A shorter prefix, starting more terms, is read the older way, through the
  courses' indexes, or from its few matches (:func:`_candidates`).

A page of the driver's rows reads about ``limit`` rows divided by the share of them the other
filters keep: filters that seldom meet (two rare words, a tag within one institution and
level) read more, at most the driver's rows. A page is one query (joined with the institution,
for its slug); words add one look-up of their terms and of their rows, counted up to
``ESTIMATED_ROWS`` (the longest word drives when both reach it); then one query each for the
page's tags and instructors.

bench/catalog.py, median ms of a whole request at 1,000 / 10,000 / 100,000 courses, before
the copied keys → after (SQLite; PostgreSQL 15 at 100,000 in the last column). Filters that
seldom meet (the last two rows) still read more as the catalog grows; two words were slower
than before on PostgreSQL, which joined the two words' rows by hashing where each run now
probes its rows one by one (see below for the rarest word driving):

=========================  ==============  ==============  ==============  ==============
scenario                   1,000           10,000          100,000         PostgreSQL
=========================  ==============  ==============  ==============  ==============
first page (any sort)      2.5 → 2.5       2.5 → 2.5       2.5 → 2.7       3.5 → 3.4
tag                        2.4 → 2.6       4.2 → 3.3       5.6 → 3.4       10.1 → 4.2
tag, popularity            2.4 → 2.4       4.0 → 3.3       8.0 → 3.6       13.0 → 4.7
instructor                 2.0 → 2.1       4.3 → 3.4       6.0 → 3.6       12.6 → 4.6
q, one word                2.5 → 2.5       4.3 → 3.5       7.4 → 3.7       10.3 → 5.1
q, 3-letter prefix         3.5 → 4.7       5.0 → 5.1       6.1 → 4.8       23.6 → 7.5
q, two words               1.3 → 2.0       2.1 → 2.3       15.2 → 4.1      4.8 → 8.0
institution+level+tag      1.8 → 2.0       2.2 → 2.2       8.5 → 5.5       8.8 → 7.0
=========================  ==============  ==============  ==============  ==============

With the word of fewest rows driving rather than the longest, "q, two words" went, in the same
benchmark (median ms; CPU ms of the request in brackets), from 1.9 (1.9) to 2.1 (2.0) at 1,000
courses and from 13.1 (4.9) to 4.8 (4.3) at 100,000 on SQLite, from 8.5 (3.5) to 7.7 (3.2) on
PostgreSQL at 100,000 (95th percentile 20.5 → 9.7). The bench's words are about equally
common, so the gain there is small; it grows with the gap between the two words' counts.

Free text: the words of a course's title and summary are stored folded in
``course_search_terms``; each word of ``q`` must be the prefix of one of them (``pyth`` finds
"Python", ``cafe`` finds "Café"). That runs the same on SQLite and PostgreSQL, with no
extension and no trigger, at the price of not matching inside a word.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    union_all,
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
# A word of ``q`` that starts this many stored terms or fewer is paged from their indexes,
# one ordered run per term merged; a shorter prefix of more terms is paged through the
# courses' indexes (such prefixes are common, so a page is found quickly).
MERGED_TERMS = 32
# The rows of each word of ``q`` are counted up to this many, to let the rarest drive.
ESTIMATED_ROWS = 1000
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
    """``column`` starts with ``word``, as a range of the column's index: on PostgreSQL with
    the byte-wise operators of text_pattern_ops, whatever the database collation (and, unlike
    ``LIKE`` with a parameter, in a prepared statement's generic plan too)."""
    if dialect == "postgresql":
        return and_(column.op("~>=~", is_comparison=True)(word),
                    column.op("~<~", is_comparison=True)(word + _TOP))
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


Keys = Sequence[tuple[Any, Direction]]


def sort_keys(status: str, sort: str) -> list[tuple[InstrumentedAttribute[Any], Direction]]:
    """The keyset order of a listing; the id makes it total. Drafts have no publication
    date, so "newest" lists them by creation."""
    if sort == "title":
        return [(Course.title, "asc"), (Course.id, "asc")]
    if sort == "popularity":
        return [(Course.enrollment_count, "desc"), (Course.id, "desc")]
    newest = Course.published_at if status == "published" else Course.created_at
    return [(newest, "desc"), (Course.id, "desc")]


def _copied_keys(t: Any, sort: str) -> list[tuple[Any, Direction]]:
    """:func:`sort_keys` on the copies an alias ``t`` of a sorted table holds."""
    if sort == "title":
        return [(t.title, "asc"), (t.course_id, "asc")]
    if sort == "popularity":
        return [(t.enrollment_count, "desc"), (t.course_id, "desc")]
    return [(t.newest_at, "desc"), (t.course_id, "desc")]


def _direction(sort: str) -> Direction:
    return "asc" if sort == "title" else "desc"


def _order(keys: Keys) -> list[ColumnElement[Any]]:
    return [c.asc() if d == "asc" else c.desc() for c, d in keys]


@dataclass(frozen=True)
class _Related:
    """A filter on a sorted table beside ``courses`` (tags, instructors, words): rows whose
    ``column`` is ``value`` (or starts with it, for a word of ``q``)."""

    table: Any
    column: str
    value: str
    prefix: str | None = None  # the dialect, when ``value`` is a prefix

    def matches(self, t: Any, probe: bool = False) -> ColumnElement[bool]:
        """The condition on an alias ``t`` of the table (``probe``: of one course's rows)."""
        column = getattr(t, self.column)
        if self.prefix is None:
            return column == self.value
        if probe and self.prefix == "postgresql":
            # A course has few words: they are read through its key. As a range, PostgreSQL
            # (misjudging byte-wise ranges against its collation's statistics) would read the
            # word's index instead, every match of the word for each course probed.
            return func.substr(column, 1, len(self.value)) == self.value
        return _prefix(column, self.value, self.prefix)

    def holds(self, course_id: ColumnElement[Any]) -> ColumnElement[bool]:
        """True for the course ``course_id``: probed through the table's (course_id, …) key."""
        t = aliased(self.table)
        return _probe(select(t.course_id).where(t.course_id == course_id,
                                                self.matches(t, probe=True)))


def _probe(stmt: Select[Any]) -> ColumnElement[bool]:
    """EXISTS of a correlated query, run per row. ``OFFSET 0`` keeps PostgreSQL from turning
    it into a join, which would first read every match of the probed condition (all courses
    of a level, all rows of a word) to check the few rows a page reads."""
    return stmt.offset(0).exists()


def _related(flt: CatalogFilter, dialect: str) -> list[_Related]:
    """The related-table filters, the likeliest to match few courses first: the first one
    drives the page."""
    out = []
    if flt.instructor is not None:
        out.append(_Related(CourseInstructor, "user_id", flt.instructor))
    if flt.tag is not None:
        out.append(_Related(CourseTag, "tag", flt.tag))
    words = sorted(search_terms(flt.q or "")[:MAX_QUERY_WORDS], key=len, reverse=True)
    out += [_Related(CourseSearchTerm, "term", w, dialect) for w in words]
    return out


def _conditions(flt: CatalogFilter) -> list[ColumnElement[bool]]:
    """The filters on columns of ``courses`` but the status, each answered by a composite
    index when it drives the page."""
    cond: list[ColumnElement[bool]] = []
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


def _after(keys: Keys, values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows past the cursor, as one row-value comparison (both keys run the same way), which
    SQLite and PostgreSQL turn into an index range."""
    left = tuple_(*[col for col, _ in keys])
    right = tuple_(*[literal(v, col.type) for (col, _), v in zip(keys, values, strict=True)])
    return left > right if keys[0][1] == "asc" else left < right


_TERMS_SQL = {
    # The distinct terms starting with a word, found by hopping from one to the next through
    # the index (a seek each) rather than reading every row of every term.
    "sqlite": """
        WITH RECURSIVE found(term, n) AS (
          SELECT (SELECT term FROM course_search_terms WHERE term >= :word AND term < :top
                  ORDER BY term LIMIT 1), 1
          UNION ALL
          SELECT (SELECT term FROM course_search_terms WHERE term > found.term
                  AND term < :top ORDER BY term LIMIT 1), n + 1
          FROM found WHERE found.term IS NOT NULL AND n <= :most)
        SELECT term FROM found WHERE term IS NOT NULL""",
    # ~>=~, ~>~ and ~<~ compare like SQLite (bytes) and are the operators of the
    # text_pattern_ops indexes; unlike LIKE with a parameter, a prepared plan uses them too.
    "postgresql": """
        WITH RECURSIVE found(term, n) AS (
          SELECT (SELECT term FROM course_search_terms WHERE term ~>=~ :word
                  AND term ~<~ :top ORDER BY term USING ~<~ LIMIT 1), 1
          UNION ALL
          SELECT (SELECT term FROM course_search_terms WHERE term ~>~ found.term
                  AND term ~<~ :top ORDER BY term USING ~<~ LIMIT 1), n + 1
          FROM found WHERE found.term IS NOT NULL AND n <= :most)
        SELECT term FROM found WHERE term IS NOT NULL""",
}


_ROWS_SQL = {
    # How many rows of the words a prefix starts, counted up to :most (a bounded index range).
    "sqlite": """SELECT count(*) FROM (SELECT 1 FROM course_search_terms
                 WHERE term >= :word AND term < :top LIMIT :most)""",
    "postgresql": """SELECT count(*) FROM (SELECT 1 FROM course_search_terms
                     WHERE term ~>=~ :word AND term ~<~ :top LIMIT :most) AS matched""",
}


@dataclass(frozen=True)
class _Word:
    """What the look-up found of a word of ``q``: its terms (None past ``MERGED_TERMS``) and
    its rows, counted up to ``ESTIMATED_ROWS``."""

    rel: _Related
    terms: list[str] | None
    rows: int


def _words(session: Session, words: Sequence[_Related]) -> list[_Word]:
    """The terms and row counts of the words of ``q``, in one statement, the rarest first
    (the longest first among equals: counts stop at ``ESTIMATED_ROWS``)."""
    dialect = words[0].prefix or ""
    parts, params = [], {"most": MERGED_TERMS, "rows": ESTIMATED_ROWS}
    for n, rel in enumerate(words):
        params |= {f"word{n}": rel.value, f"top{n}": rel.value + _TOP}
        found = _TERMS_SQL[dialect].replace(":word", f":word{n}").replace(":top", f":top{n}")
        rows = (_ROWS_SQL[dialect].replace(":word", f":word{n}").replace(":top", f":top{n}")
                .replace(":most", ":rows"))
        if len(words) > 1:  # a lone word drives whatever its count
            parts.append(f"SELECT {n} AS word, NULL AS term, ({rows}) AS rows_")
        # Constant SQL and the word's number: the words themselves are bound parameters.
        parts.append(f"SELECT {n}, term, NULL FROM ({found}) AS found{n}")  # noqa: S608
    terms: list[list[str]] = [[] for _ in words]
    rows: list[int] = [0] * len(words)
    for n, term, count in session.execute(text("\nUNION ALL\n".join(parts)), params):
        if term is None:
            rows[n] = count
        else:
            terms[n].append(term)
    if len(words) == 1:
        rows = [len(terms[0])]
    out = [_Word(rel, found if len(found) <= MERGED_TERMS else None, count)
           for rel, found, count in zip(words, terms, rows, strict=True)]
    return sorted(out, key=lambda w: w.rows)


def _driven(flt: CatalogFilter, driver: _Related, values: Sequence[str],
            others: Sequence[_Related], after: Sequence[Any] | None,
            limit: int) -> tuple[Any, Keys]:
    """The ids and first sort key of the page, read from the driver's table in sort order:
    from its index (value, status, sort key, course_id), one ordered run per value (the terms
    of a word), each row checked against the other filters; then merged. Each run stops at
    ``limit + 1`` matches, so a page costs about ``limit`` rows per value divided by the share
    of the driver's rows the other filters keep, whatever the size of the catalog."""
    t = aliased(driver.table)
    keys = _copied_keys(t, flt.sort)
    cond = [t.status == flt.status, *[rel.holds(t.course_id) for rel in others]]
    conditions = _conditions(flt)
    if conditions:
        cond.append(_probe(select(Course.id).where(Course.id == t.course_id, *conditions)))
    if after is not None:
        cond.append(_after(keys, after))
    # The runs differ only in their value: they share the rest (each is its own scope in
    # SQL), which spares building it again per term.
    column = getattr(t, driver.column).expression
    columns = (t.course_id.label("id"), keys[0][0].label("key"))
    order = _order(keys)
    runs = [select(*columns).where(column == value, *cond).order_by(*order)
            .limit(limit + 1).subquery() for value in values]
    direction = _direction(flt.sort)
    if len(runs) == 1:
        page = runs[0]
    else:  # a course holding two of the terms comes in two runs, with the same keys
        merged = union_all(*[select(run) for run in runs]).subquery()
        page = (select(merged.c.id, merged.c.key).distinct()
                .order_by(*_order([(merged.c.key, direction), (merged.c.id, direction)]))
                .limit(limit + 1).subquery())
    return page, [(page.c.key, direction), (page.c.id, direction)]


def _candidates(session: Session, conditions: list[ColumnElement[bool]],
                related: list[_Related]) -> list[str] | None:
    """The ids of every course the filters match, when they match at most ``CANDIDATES``;
    else None.

    Read from the first related filter's index, each entry checked against the others and the
    course's columns: the read stops after ``CANDIDATES`` hits, or at the end of that filter's
    entries. A page of few matches is then sorted from those ids; with more, reading a sort
    index in order and probing each course finds a page within about
    ``limit × catalog / CANDIDATES`` rows."""
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
    stmt = select(Course, Institution.slug)
    order: Keys = keys
    values: Sequence[str] | None = None
    if related and related[0].prefix is None:  # an instructor or a tag drives
        values = [related[0].value]
    elif related:  # the rarest word drives, through the terms it starts
        words = _words(session, related)
        if words[0].rows == 0:
            return Page([], None)
        related, values = [w.rel for w in words], words[0].terms
    if related and values is not None:
        page, order = _driven(flt, related[0], values, related[1:], after, limit)
        stmt = stmt.select_from(page).join(Course, Course.id == page.c.id)
    else:
        cond = [Course.status == flt.status, *_conditions(flt)]
        if related:  # a word of many terms: the older way, through the courses' indexes
            candidates = _candidates(session, cond, related)
            if candidates == []:
                return Page([], None)
            if candidates is None:
                cond += [rel.holds(Course.id) for rel in related]
            else:
                cond.append(Course.id.in_(candidates))
        if after is not None:
            cond.append(_after(keys, after))
        stmt = stmt.where(*cond)
    stmt = stmt.join(Institution, Institution.id == Course.institution_id)
    rows = session.execute(stmt.order_by(*_order(order)).limit(limit + 1)).all()
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
