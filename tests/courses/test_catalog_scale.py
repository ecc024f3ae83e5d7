"""The catalog at scale: pages of thousands of courses stay exact while courses are added,
related filters (alone and combined) list what a plain reading of the rows would, a page's
statements do not grow with the catalog, and the sort keys copied beside tags, instructors
and words follow every change of their course."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select, text, update

from kalpla_core import migrate
from kalpla_core.courses import catalog, service
from kalpla_core.courses.models import Course, CourseInstructor, CourseSearchTerm, CourseTag
from kalpla_core.db import new_id
from kalpla_core.enrollment.state import lock_course
from kalpla_core.identity.models import User

URL = "/api/v1/courses"
ON_POSTGRES = (os.environ.get("KALPLA_TEST_DATABASE_URL") or "").startswith("postgresql")
START = datetime(2024, 1, 1, tzinfo=UTC)
LEVELS = ("beginner", "intermediate", "advanced", "all")
LANGUAGES = ("en", "hi", "ta")
# Few words, several sharing prefixes ("data", "database", "datum"), so that a word of a
# query starts one term or many.
WORDS = ("data", "database", "datum", "python", "pythonic", "pyramid", "graph", "graphics",
         "garden", "music", "museum", "mural", "zen", "zebra", "code", "coder", "coding",
         "kalpa", "kalpla", "river")


@dataclass
class Spec:
    """A course as inserted: what the catalog filters and sorts on."""

    id: str
    institution_id: str
    title: str
    summary: str
    status: str
    created_at: datetime
    published_at: datetime | None
    enrollment_count: int
    level: str
    language: str
    tags: list[str]
    instructors: list[str]

    def key(self, sort: str) -> tuple[Any, ...]:
        """Its place in the catalog's order, as Python compares (titles are ASCII digits and
        letters, ordered alike by every collation the tests meet)."""
        if sort == "title":
            return (self.title, self.id)
        if sort == "popularity":
            return (-self.enrollment_count, _reverse(self.id))
        moment = self.published_at if self.status == "published" else self.created_at
        assert moment is not None
        return (-moment.timestamp(), _reverse(self.id))


def _reverse(course_id: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in course_id)


@dataclass
class Catalog:
    """Courses bulk-inserted through the models, with their tags, instructors and words."""

    kalpla: Any
    institutions: dict[str, str]  # slug -> id
    mentors: list[str]
    rng: random.Random
    courses: dict[str, Spec] = field(default_factory=dict)
    _n: int = 0

    def spec(self, **fields: Any) -> Spec:
        self._n += 1
        rng = self.rng
        published = fields.pop("published", rng.random() >= 0.1)
        moment = START + timedelta(minutes=rng.randrange(10**6))
        values: dict[str, Any] = {
            "id": new_id(), "institution_id": rng.choice(list(self.institutions.values())),
            # Titles tie now and then: the id decides between them.
            "title": f"Course {rng.randrange(10**4):04d}",
            "summary": " ".join(rng.sample(WORDS, 3)),
            "status": "published" if published else "draft", "created_at": moment,
            "published_at": moment + timedelta(days=1) if published else None,
            "enrollment_count": rng.choice((0, 0, 1, 2, 3, 5, 8, 13, 400)),
            "level": rng.choice(LEVELS), "language": rng.choice(LANGUAGES),
            "tags": rng.sample(["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"], 2),
            "instructors": rng.sample(self.mentors, rng.randint(1, 2))}
        values.update(fields)
        return Spec(**values)

    def add(self, specs: Sequence[Spec]) -> None:
        courses, tags, instructors, terms = [], [], [], []
        for sp in specs:
            row = {
                "id": sp.id, "institution_id": sp.institution_id, "slug": f"c-{sp.id}",
                "title": sp.title, "summary": sp.summary, "description": "",
                "language": sp.language, "level": sp.level, "status": sp.status,
                "published_at": sp.published_at, "enrollment_count": sp.enrollment_count,
                "structure_version": 1, "version": 1, "created_at": sp.created_at,
                "updated_at": sp.created_at}
            courses.append(row)
            keys = {"course_id": sp.id, **catalog.sort_key_values(
                Course(**row), sp.enrollment_count)}
            tags += [{**keys, "tag": t} for t in sp.tags]
            instructors += [{**keys, "user_id": u} for u in sp.instructors]
            terms += [{**keys, "term": t} for t in catalog.course_terms(sp.title, sp.summary)]
            self.courses[sp.id] = sp
        with self.kalpla.db.engine.begin() as conn:
            conn.execute(insert(Course.__table__), courses)
            for table, rows in ((CourseTag, tags), (CourseInstructor, instructors),
                                (CourseSearchTerm, terms)):
                if rows:
                    conn.execute(insert(table.__table__), rows)

    def fill(self, count: int, **fields: Any) -> list[Spec]:
        specs = [self.spec(**fields) for _ in range(count)]
        self.add(specs)
        return specs

    def matching(self, query: dict[str, Any]) -> list[str]:
        """The published courses ``query`` selects, read plainly from the specs, in the
        catalog's order."""
        slug_ids = self.institutions
        words = catalog.search_terms(query.get("q", ""))

        def selected(sp: Spec) -> bool:
            terms = catalog.course_terms(sp.title, sp.summary)
            return (sp.status == "published"
                    and ("tag" not in query or query["tag"] in sp.tags)
                    and ("instructor" not in query or query["instructor"] in sp.instructors)
                    and ("level" not in query or sp.level == query["level"])
                    and ("language" not in query or sp.language == query["language"])
                    and ("institution" not in query
                         or sp.institution_id == slug_ids[query["institution"]])
                    and all(any(t.startswith(w) for t in terms) for w in words))

        sort = query.get("sort", "newest")
        return [sp.id for sp in sorted(filter(selected, self.courses.values()),
                                       key=lambda sp: sp.key(sort))]


def _catalog(factories: Any, seed: int = 7) -> Catalog:
    institutions = {slug: factories.institution(slug).id for slug in ("north", "south")}
    mentors = [factories.user(roles={i: ["mentor"] for i in institutions.values()}).id
               for _ in range(4)]
    return Catalog(factories.kalpla, institutions, mentors, random.Random(seed))


def _walk(client: Any, query: dict[str, Any], between: Any = None) -> list[str]:
    """Every id of a listing, following its cursors; ``between(ids so far)`` runs between
    pages."""
    seen: list[str] = []
    cursor = None
    for _ in range(500):  # a cursor that does not move would loop for ever
        r = client.get(URL, query_string={**query, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.get_data(as_text=True)
        seen += [c["id"] for c in r.json["items"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            return seen
        if between is not None:
            between(seen)
    raise AssertionError("the listing never ended")


# --- stable pages -------------------------------------------------------------------------------

@pytest.mark.parametrize("sort", ["newest", "title", "popularity"])
@pytest.mark.parametrize("tag", [None, "t3"])
def test_thousands_of_courses_page_exactly_while_courses_are_added(client, factories,
                                                                   sort, tag):
    cat = _catalog(factories)
    cat.fill(2000)
    before = cat.matching({"sort": sort, **({"tag": tag} if tag else {})})
    added: list[tuple[Spec, bool]] = []  # (course, whether it sorted past the cursor)

    def add_some(seen: list[str]) -> None:
        # Courses sorting on both sides of the cursor, tagged or not, ties included.
        last = cat.courses[seen[-1]]
        specs = [cat.spec(published=True, tags=[tag or "t0"] if n % 3 else ["other"])
                 for n in range(5)]
        specs.append(cat.spec(published=True, tags=[tag or "t0"], title=last.title,
                              published_at=last.published_at,
                              enrollment_count=last.enrollment_count))
        cat.add(specs)
        added.extend((sp, sp.key(sort) > last.key(sort)) for sp in specs
                     if tag is None or tag in sp.tags)

    query = {"sort": sort, "limit": 40 if tag else 100, **({"tag": tag} if tag else {})}
    seen = _walk(client, query, add_some)
    assert len(seen) == len(set(seen)), "a course was listed twice"
    assert not set(before) - set(seen), "a course was skipped"
    assert len(before) >= 300 and len(added) >= 20
    behind = {sp.id for sp, past in added if past}
    ahead = {sp.id for sp, past in added if not past}
    assert behind and ahead
    assert behind <= set(seen), "a course added past the cursor was skipped"
    assert not ahead & set(seen), "a course added before the cursor was listed"
    # What was listed is in the catalog's order.
    assert seen == [i for i in cat.matching({k: v for k, v in query.items() if k != "limit"})
                    if i in set(seen)]


# --- related filters, alone and combined ------------------------------------------------------

QUERIES: list[dict[str, Any]] = [
    {"tag": "t1"}, {"tag": "t2", "level": "beginner"},
    {"tag": "t5", "institution": "north", "language": "hi"},
    {"instructor": 0}, {"instructor": 1, "tag": "t4"}, {"instructor": 2, "level": "all"},
    {"q": "python"}, {"q": "pyth"}, {"q": "data"}, {"q": "d"}, {"q": "co"},
    {"q": "graph zen"}, {"q": "mu data", "level": "advanced"}, {"q": "course 00"},
    {"q": "kalp", "tag": "t6"}, {"q": "rive", "instructor": 3, "institution": "south"},
    {"q": "nothing"}, {"tag": "absent"},
]


def _resolve(cat: Catalog, query: dict[str, Any]) -> dict[str, Any]:
    if "instructor" in query:
        return {**query, "instructor": cat.mentors[query["instructor"]]}
    return query


@pytest.mark.parametrize("sort", ["newest", "title", "popularity"])
def test_related_filters_list_what_the_rows_say_in_every_way_of_reading(
        client, factories, monkeypatch, sort):
    """Merged runs of a word's terms, the older reading through the courses' indexes, and
    the few-candidates shortcut all give the pages a plain reading of the rows gives."""
    cat = _catalog(factories, seed=11)
    cat.fill(600)
    queries = [{**_resolve(cat, q), "sort": sort} for q in QUERIES]
    expected = [cat.matching(q) for q in queries]
    assert sum(map(bool, expected)) >= len(QUERIES) - 2
    assert [_walk(client, {**q, "limit": 9}) for q in queries] == expected
    monkeypatch.setattr(catalog, "MERGED_TERMS", 1)  # most words through the courses
    assert [_walk(client, {**q, "limit": 40}) for q in queries] == expected
    monkeypatch.setattr(catalog, "CANDIDATES", 10_000)  # every such word from candidates
    assert [_walk(client, {**q, "limit": 40}) for q in queries] == expected


# --- statements per page ----------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    {"tag": "t1"}, {"tag": "t1", "level": "beginner", "sort": "title"},
    {"instructor": 0, "sort": "popularity"}, {"q": "python"}, {"q": "pyth", "sort": "title"},
    {"q": "data graph", "institution": "north"}])
def test_a_filtered_page_costs_the_same_statements_at_any_size(client, factories,
                                                               query_counter, query):
    cat = _catalog(factories)
    query = {**_resolve(cat, query), "limit": 20}

    def page(cursor: str | None = None) -> tuple[list[str], int, str | None]:
        with query_counter() as counter:
            r = client.get(URL, query_string={**query, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.get_data(as_text=True)
        return [c["id"] for c in r.json["items"]], counter.count, r.json["next_cursor"]

    cat.fill(60)
    # A few courses every query finds, so that the small page has cards too.
    cat.fill(3, published=True, tags=["t1"], level="beginner", instructors=[cat.mentors[0]],
             institution_id=cat.institutions["north"], summary="python data graph")
    page()  # warm caches
    ids, small, cursor = page()
    _, small_next, _ = page(cursor) if cursor else (None, small, None)
    cat.fill(3000)
    ids, large, cursor = page()
    assert len(ids) == 20 and cursor
    _, large_next, _ = page(cursor)
    assert small == large == small_next == large_next
    # The page, its tags and its instructors; a word adds the look-up of its terms.
    assert large == (4 if "q" in query else 3)


# --- the copies follow their course -------------------------------------------------------------

def _copies_disagree(kalpla: Any) -> list[tuple[str, str]]:
    """(table, course id) of every copied row whose sort keys differ from its course's."""
    wrong = []
    with kalpla.db.session() as s:
        courses = {c.id: c for c in s.scalars(select(Course))}
        for table in catalog.SORTED_TABLES:
            for row in s.scalars(select(table)):
                course = courses[row.course_id]
                expected = catalog.sort_key_values(course, course.enrollment_count)
                if {k: getattr(row, k) for k in expected} != expected:
                    wrong.append((table.__tablename__, row.course_id))
    return wrong


def _rows(kalpla: Any, table: Any, course_id: str) -> int:
    with kalpla.db.session() as s:
        return len(s.scalars(select(table).where(table.course_id == course_id)).all())


def test_the_copied_sort_keys_follow_every_change_of_their_course(client, factories):
    kalpla = factories.kalpla
    school = factories.institution("school")
    mentor = factories.user(roles={school: ["mentor"]})
    other = factories.user(roles={school: ["mentor"]})
    students = [factories.user(roles={school: ["student"]}) for _ in range(2)]
    h = factories.auth(mentor, school)
    r = client.post(URL, headers=h, json={"slug": "intro", "title": "Intro to data",
                                          "summary": "rows", "tags": ["a", "b"]})
    course_id = r.json["id"]
    assert _copies_disagree(kalpla) == [] and _rows(kalpla, CourseTag, course_id) == 2

    def edit(body: dict[str, Any]) -> None:
        etag = client.get(f"{URL}/{course_id}", headers=h).headers["ETag"]
        r = client.patch(f"{URL}/{course_id}", headers={**h, "If-Match": etag}, json=body)
        assert r.status_code == 200, r.get_data(as_text=True)
        assert _copies_disagree(kalpla) == []

    edit({"title": "Data, gently"})
    assert client.post(f"{URL}/{course_id}/publish", headers=h).status_code == 200
    assert _copies_disagree(kalpla) == []
    for student in students:
        r = client.post(f"{URL}/{course_id}/enrollments", headers=factories.auth(student))
        assert r.status_code == 201, r.get_data(as_text=True)
        assert _copies_disagree(kalpla) == []
    with kalpla.db.session() as s:
        assert s.get(Course, course_id).enrollment_count == 2
    edit({"tags": ["b", "c", "d"], "instructors": [mentor.id, other.id]})
    edit({"summary": "rows and columns"})
    assert _rows(kalpla, CourseTag, course_id) == 3
    assert _rows(kalpla, CourseInstructor, course_id) == 2
    enrollment = client.get("/api/v1/me/enrollments",
                            headers=factories.auth(students[0])).json["items"][0]["id"]
    r = client.delete(f"/api/v1/enrollments/{enrollment}", headers=factories.auth(students[0]))
    assert r.status_code in (200, 204), r.get_data(as_text=True)
    assert _copies_disagree(kalpla) == []
    ids = [c["id"] for c in client.get(URL, query_string={
        "q": "columns", "tag": "d", "instructor": other.id, "sort": "popularity"}).json["items"]]
    assert ids == [course_id]
    assert client.post(f"{URL}/{course_id}/archive", headers=h).status_code == 200
    assert _copies_disagree(kalpla) == []
    assert client.get(URL, query_string={"tag": "d"}).json["items"] == []


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="needs KALPLA_TEST_DATABASE_URL (PostgreSQL)")
def test_a_tag_added_while_an_enrollment_commits_copies_the_new_count(client, factories):
    """The editor reads the count under the lock enrollment writers hold: it waits for the
    enrollment's commit and copies the count that one left, not the one before it."""
    kalpla = factories.kalpla
    school = factories.institution("school")
    mentor = factories.user(roles={school: ["mentor"]})
    h = factories.auth(mentor, school)
    course_id = client.post(URL, headers=h, json={"slug": "c", "title": "C"}).json["id"]
    assert client.post(f"{URL}/{course_id}/publish", headers=h).status_code == 200
    etag = client.get(f"{URL}/{course_id}", headers=h).headers["ETag"]
    with kalpla.db.session() as enrolling:
        lock_course(enrolling, course_id)  # as the enrollment service does, then counts
        enrolling.execute(update(Course).where(Course.id == course_id)
                          .values(enrollment_count=7))
        catalog.sync_enrollment_count(enrolling, course_id, 7)
        with ThreadPoolExecutor(max_workers=1) as pool:
            editing = pool.submit(lambda: kalpla.app.test_client().patch(
                f"{URL}/{course_id}", headers={**h, "If-Match": etag}, json={"tags": ["new"]}))
            _wait_for_a_lock_wait(kalpla, editing)
            enrolling.commit()
            r = editing.result()
    assert r.status_code == 200, r.get_data(as_text=True)
    assert _copies_disagree(kalpla) == []
    assert client.get(URL, query_string={"tag": "new", "sort": "popularity"}).json[
        "items"][0]["enrollment_count"] == 7


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="needs KALPLA_TEST_DATABASE_URL (PostgreSQL)")
def test_the_terms_of_a_word_are_looked_up_by_index_in_a_prepared_plan(client, factories):
    """psycopg prepares a statement run often, and PostgreSQL may then plan it once for any
    parameters: the look-up must still be an index range (``term LIKE $1`` would read every
    term of the catalog)."""
    cat = _catalog(factories)
    cat.fill(50)
    sql = catalog._TERMS_SQL["postgresql"]
    for n, name in enumerate((":word", ":top", ":most"), start=1):
        sql = sql.replace(name, f"${n}")
    with factories.kalpla.db.engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE terms (text, text, int) AS {sql}")
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(
            "EXPLAIN EXECUTE terms ('pyth', 'pyth' || chr(1114111), 32)"))
        found = conn.exec_driver_sql("EXECUTE terms ('pyth', 'pyth' || chr(1114111), 32)")
        assert [row[0] for row in found] == ["python", "pythonic"]
    assert "$1" in plan, plan  # the generic plan, for any word
    assert "Index Cond: ((term ~>=~ $1) AND (term ~<~ $2))" in plan.replace("::text", ""), plan
    assert "Seq Scan" not in plan and "~~" not in plan, plan


def _wait_for_a_lock_wait(kalpla: Any, editing: Future[Any]) -> None:
    """Until another connection waits for a row lock (or the edit is over, which fails the
    test: it should have waited)."""
    with kalpla.db.engine.connect() as conn:
        for _ in range(600):
            assert not editing.done(), editing.result().get_data(as_text=True)
            if conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE "
                                "wait_event_type = 'Lock' AND datname = current_database()")):
                return
            conn.rollback()
            threading.Event().wait(0.05)
    raise AssertionError("the edit never waited for the enrollment")


def test_the_migration_fills_the_copies_and_its_downgrade_restores_the_indexes(
        make_app, empty_database_url):
    app = make_app(database_url=empty_database_url, plugins=[])
    kalpla = app.extensions["kalpla"]
    migrate.upgrade(kalpla)
    with kalpla.db.session() as s:
        from kalpla_core.identity.models import Membership
        from kalpla_core.institutions.service import create_institution

        inst = create_institution(s, "school", "School")
        user = User(email="m@example.test", name="M")
        s.add(user)
        s.flush()
        s.add(Membership(user_id=user.id, institution_id=inst.id, role="mentor"))
        caller = service.Caller(user, lambda _perm, _inst: True)
        for n, publish in enumerate((True, False, True)):
            course = service.create_course(s, caller, inst.id, {
                "slug": f"c{n}", "title": f"Course {n}", "summary": "words here",
                "tags": ["x", f"t{n}"]})
            if publish:
                service.publish_course(s, kalpla, course)
    migrate.downgrade(kalpla, "c0006")
    indexes = _index_names(kalpla, ("course_tags", "course_instructors", "course_search_terms"))
    assert {"ix_course_tags_tag_course", "ix_course_instructors_user_id",
            "ix_course_search_terms_term"} <= indexes
    assert not any(name.endswith(("_newest", "_title", "_popularity")) for name in indexes)
    columns = {c["name"] for c in inspect(kalpla.db.engine).get_columns("course_tags")}
    assert columns == {"course_id", "tag"}
    migrate.upgrade(kalpla)
    assert _copies_disagree(kalpla) == []
    assert migrate.differences(kalpla) == []
    client = app.test_client()
    assert len(client.get(URL, query_string={"tag": "x"}).json["items"]) == 2


def _index_names(kalpla: Any, tables: Iterable[str]) -> set[str]:
    inspector = inspect(kalpla.db.engine)
    return {ix["name"] for table in tables for ix in inspector.get_indexes(table)}
