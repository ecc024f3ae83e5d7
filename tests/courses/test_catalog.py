"""The catalog: filters, sorts, stable cursor pages, visibility and a bounded cost per page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import event, update

from kalpla_core.courses import catalog, service
from kalpla_core.courses.models import Course
from kalpla_core.identity.models import User

PROBLEM = "application/problem+json"
URL = "/api/v1/courses"


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    return response.get_json(force=True)


def _add(factories, inst, author, slug: str, publish: bool = True, **fields: Any) -> str:
    """A course written through the service (faster than HTTP for many courses)."""
    kalpla = factories.kalpla
    with kalpla.db.session() as s:
        caller = service.Caller(s.get(User, author.id), lambda _perm, _inst: True)
        course = service.create_course(s, caller, inst.id,
                                       {"slug": slug, "title": slug.title(), **fields})
        if publish:
            service.publish_course(s, kalpla, course)
        return course.id


def _set_popularity(factories, counts: dict[str, int]) -> None:
    with factories.kalpla.db.session() as s:
        for course_id, count in counts.items():
            s.execute(update(Course).where(Course.id == course_id)
                      .values(enrollment_count=count))
            catalog.sync_enrollment_count(s, course_id, count)


def _ids(client, headers: dict[str, str] | None = None, **query: Any) -> list[str]:
    r = client.get(URL, query_string=query, headers=headers or {})
    assert r.status_code == 200, r.get_data(as_text=True)
    return [c["id"] for c in r.json["items"]]


# --- filters and sorts ----------------------------------------------------------------------

def test_a_student_finds_courses_through_each_filter_and_sort(client, factories):
    school = factories.institution("school")
    other = factories.institution("other")
    mentor = factories.user(roles={school: ["mentor"]})
    mentor2 = factories.user(roles={school: ["mentor"]})
    foreign_mentor = factories.user(roles={other: ["mentor"]})
    student = factories.user(roles={school: ["student"]})
    headers = factories.auth(student, school)

    mentor_headers = factories.auth(mentor, school)
    r = client.post(URL, headers=mentor_headers, json={
        "slug": "python", "title": "Python for everyone", "summary": "Programming basics",
        "level": "beginner", "language": "en", "tags": ["Python", "Programming"]})
    python = r.json["id"]
    client.post(f"{URL}/{python}/publish", headers=mentor_headers)
    cafe = _add(factories, school, mentor, "cafe", title="Café culture",
                summary="Coffee and conversation", level="all", language="pt-BR",
                tags=["languages"])
    hindi = _add(factories, school, mentor, "hindi", title="हिन्दी व्याकरण",
                 summary="Grammar of Hindi", level="intermediate", language="hi",
                 tags=["languages"], instructors=[mentor2.id])
    stats = _add(factories, school, mentor2, "stats", title="Advanced statistics",
                 summary="Data science with Python", level="advanced", language="en",
                 tags=["data"])
    abroad = _add(factories, other, foreign_mentor, "abroad", title="Zen of Python",
                  summary="Elsewhere", level="beginner", language="en", tags=["python"])
    _add(factories, school, mentor, "draft-python", publish=False, title="Python draft",
         tags=["python"])

    # Newest first, drafts never.
    assert _ids(client, headers) == [abroad, stats, hindi, cafe, python]
    assert _ids(client) == [abroad, stats, hindi, cafe, python]
    assert _ids(client, headers, institution="school") == [stats, hindi, cafe, python]
    assert _ids(client, headers, institution="other") == [abroad]
    assert _ids(client, headers, institution="nowhere") == []
    assert _ids(client, headers, tag="PYTHON") == [abroad, python]
    assert _ids(client, headers, tag="languages") == [hindi, cafe]
    assert _ids(client, headers, level="advanced") == [stats]
    assert _ids(client, headers, level="beginner") == [abroad, python]
    assert _ids(client, headers, language="EN") == [abroad, stats, python]
    assert _ids(client, headers, language="pt-br") == [cafe]
    assert _ids(client, headers, instructor=mentor2.id) == [stats, hindi]
    assert _ids(client, headers, instructor=foreign_mentor.id) == [abroad]
    assert _ids(client, headers, institution="school", level="beginner", tag="python",
                language="en", instructor=mentor.id) == [python]

    # Words: prefixes of words of the title or summary, every word needed, accents folded.
    assert _ids(client, headers, q="pyth") == [abroad, stats, python]
    assert _ids(client, headers, q="python data") == [stats]
    assert _ids(client, headers, q="CAFE") == [cafe]
    assert _ids(client, headers, q="café") == [cafe]
    assert _ids(client, headers, q="व्याकरण") == [hindi]
    assert _ids(client, headers, q="grammar hindi") == [hindi]
    assert _ids(client, headers, q="ython") == []
    assert _ids(client, headers, q="draft") == []
    assert _ids(client, headers, q="!!!") == _ids(client, headers)  # no word: no filter
    assert _ids(client, headers, q="python", institution="school", sort="title") == [
        stats, python]

    # Sorts.
    assert _ids(client, headers, sort="title") == [stats, cafe, python, abroad, hindi]
    _set_popularity(factories, {python: 30, cafe: 5, hindi: 30, abroad: 1})
    expected_tie = sorted([python, hindi], reverse=True)  # same count: id, descending
    assert _ids(client, headers, sort="popularity") == [*expected_tie, cafe, abroad, stats]
    assert _ids(client, headers, sort="popularity", tag="python") == [python, abroad]

    r = client.get(URL, headers=headers)
    assert r.headers["Cache-Control"] == "public, max-age=60"
    card = next(c for c in r.json["items"] if c["id"] == hindi)
    assert card["institution"] == "school" and card["tags"] == ["languages"]
    assert {i["id"] for i in card["instructors"]} == {mentor.id, mentor2.id}
    assert "description" not in card


def test_invalid_query_arguments(client):
    for query in ({"level": "expert"}, {"sort": "random"}, {"language": "not a tag"},
                  {"status": "deleted"}, {"limit": 0}, {"limit": 101}, {"q": "x" * 201}):
        _problem(client.get(URL, query_string=query), 422)
    _problem(client.get(URL, query_string={"cursor": "garbage"}), 400)


def test_a_cursor_belongs_to_its_ordering(client, factories):
    school = factories.institution("school")
    mentor = factories.user(roles={school: ["mentor"]})
    for n in range(3):
        _add(factories, school, mentor, f"c{n}")
    cursor = client.get(URL, query_string={"limit": 1, "sort": "title"}).json["next_cursor"]
    _problem(client.get(URL, query_string={"limit": 1, "cursor": cursor}), 400)
    assert client.get(URL, query_string={"limit": 1, "sort": "title",
                                         "cursor": cursor}).status_code == 200


# --- drafts and archived courses ------------------------------------------------------------

def test_drafts_and_archived_courses_are_listed_only_to_their_staff(client, factories):
    school = factories.institution("school")
    other = factories.institution("other")
    mentor = factories.user(roles={school: ["mentor"]})
    mentor2 = factories.user(roles={school: ["mentor"]})
    admin = factories.user(roles={school: ["admin"]})
    student = factories.user(roles={school: ["student"]})
    outsider = factories.user(roles={other: ["mentor", "admin"]})
    root = factories.user(platform_admin=True)
    mine = _add(factories, school, mentor, "mine", publish=False)
    shared = _add(factories, school, mentor2, "shared", publish=False,
                  instructors=[mentor.id])
    theirs = _add(factories, school, mentor2, "theirs", publish=False)
    elsewhere = _add(factories, other, outsider, "elsewhere", publish=False)
    published = _add(factories, school, mentor, "published")
    archived = _add(factories, school, mentor, "archived")
    with factories.kalpla.db.session() as s:
        service.archive_course(s, factories.kalpla, s.get(Course, archived))

    assert _ids(client) == [published]  # drafts and archived never in the public catalog
    assert _ids(client, factories.auth(admin, school)) == [published]

    drafts = {"status": "draft"}
    _problem(client.get(URL, query_string=drafts, headers={"Kalpla-Institution": "school"}),
             401)
    _problem(client.get(URL, query_string=drafts, headers=factories.auth(student, school)),
             403)
    _problem(client.get(URL, query_string={**drafts, "institution": "school"},
                        headers=factories.auth(outsider, other)), 403)
    r = client.get(URL, query_string=drafts, headers=factories.auth(mentor, school))
    assert r.headers["Cache-Control"] == "private, no-store"
    assert {c["id"] for c in r.json["items"]} == {mine, shared}
    assert set(_ids(client, factories.auth(mentor2, school), **drafts)) == {shared, theirs}
    assert set(_ids(client, factories.auth(admin, school), **drafts)) == {mine, shared, theirs}
    assert set(_ids(client, factories.auth(admin), institution="school", **drafts)) == {
        mine, shared, theirs}
    assert set(_ids(client, factories.auth(root), institution="school", **drafts)) == {
        mine, shared, theirs}
    assert _ids(client, factories.auth(outsider, other), **drafts) == [elsewhere]
    assert _ids(client, factories.auth(admin, school), status="archived") == [archived]
    # Newest, for courses never published: by creation.
    assert _ids(client, factories.auth(admin, school), **drafts) == [theirs, shared, mine]


# --- pages ----------------------------------------------------------------------------------

def _follow(client, query: dict[str, Any], between=None) -> tuple[list[str], int]:
    """Every id of a listing, page after page through the Link header."""
    seen: list[str] = []
    pages = 0
    r = client.get(URL, query_string=query)
    while True:
        assert r.status_code == 200, r.get_data(as_text=True)
        pages += 1
        seen += [c["id"] for c in r.json["items"]]
        if r.json["next_cursor"] is None:
            assert "Link" not in r.headers
            return seen, pages
        link = r.headers["Link"]
        assert link.endswith('>; rel="next"')
        url = urlsplit(link[1:link.index(">")])
        assert parse_qs(url.query)["cursor"] == [r.json["next_cursor"]]
        if between is not None:
            between(pages)
        r = client.get(f"{url.path}?{url.query}")


@pytest.mark.parametrize("sort", ["newest", "title", "popularity"])
def test_pages_are_stable_while_courses_are_added(client, factories, sort):
    school = factories.institution("school")
    mentor = factories.user(roles={school: ["mentor"]})
    words = ["delta", "alpha", "kilo", "echo", "bravo", "mike", "golf", "zulu", "hotel"]
    originals = [_add(factories, school, mentor, f"{words[n % 9]}-{n}",
                      tags=["stable"] if n % 2 else []) for n in range(30)]
    # Ties on the sort key are common: the id decides between them.
    _set_popularity(factories, {cid: n % 4 for n, cid in enumerate(originals)})
    added: list[str] = []

    def add_three(page: int) -> None:
        for n in range(3):
            added.append(_add(factories, school, mentor, f"{words[(page + n) % 9]}-new{page}{n}",
                              tags=["stable"]))

    seen, pages = _follow(client, {"sort": sort, "limit": 7}, add_three)
    assert len(seen) == len(set(seen)), "a course was listed twice"
    assert set(originals) <= set(seen), "a course was skipped"
    assert pages >= 5 and added
    if sort == "newest":
        assert seen[:30] == list(reversed(originals))  # newer ones went above the cursor

    tagged, _ = _follow(client, {"sort": sort, "limit": 4, "tag": "stable"})
    assert len(tagged) == len(set(tagged)) == 15 + len(added)


@pytest.mark.parametrize("query", [{}, {"tag": "t1"}, {"q": "course"}, {"level": "all"},
                                   {"institution": "school", "sort": "title"},
                                   {"instructor": "?"}])
def test_a_page_costs_the_same_few_queries_however_many_courses(client, factories,
                                                                query_counter, query):
    school = factories.institution("school")
    mentors = [factories.user(roles={school: ["mentor"]}) for _ in range(3)]
    if query.get("instructor") == "?":
        query = {"instructor": mentors[0].id}

    def add(count: int, start: int) -> None:
        for n in range(start, start + count):
            _add(factories, school, mentors[0], f"course-{n}", tags=["t1", "t2", f"x{n}"],
                 instructors=[m.id for m in mentors[1:]])

    def page() -> Any:
        with query_counter() as counter:
            r = client.get(URL, query_string={**query, "limit": 20})
        assert r.status_code == 200
        return r, counter

    add(3, 0)
    page()  # warm caches
    small, few = page()
    add(30, 3)
    large, many = page()
    assert len(small.json["items"]) == 3 and len(large.json["items"]) == 20
    assert all(len(c["tags"]) == 3 and len(c["instructors"]) == 3
               for c in large.json["items"])
    assert many.count == few.count, many.statements
    # The page, its tags, its instructors; a related filter adds one bounded probe.
    related = any(k in query for k in ("tag", "q", "instructor"))
    assert many.count <= (4 if related else 3), many.statements


def test_dense_and_sparse_related_filters_list_the_same(client, factories, monkeypatch):
    """A related filter matching few courses is answered from its matches, one matching many
    by probing courses in order: both give the same pages."""
    school = factories.institution("school")
    mentor = factories.user(roles={school: ["mentor"]})
    for n in range(12):
        _add(factories, school, mentor, f"course-{n}", summary="even" if n % 2 else "odd",
             tags=["common", f"t{n % 3}"])
    queries = [{"tag": "t1"}, {"tag": "common", "q": "even"}, {"q": "course ev"},
               {"tag": "t2", "sort": "title"}, {"q": "od", "sort": "popularity"}]
    sparse = [_follow(client, {**q, "limit": 2})[0] for q in queries]
    monkeypatch.setattr(catalog, "CANDIDATES", 1)
    dense = [_follow(client, {**q, "limit": 2})[0] for q in queries]
    assert dense == sparse
    assert [len(ids) for ids in sparse] == [4, 6, 6, 4, 6]


# --- indexes --------------------------------------------------------------------------------

@contextmanager
def _statements(engine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def _before(_conn, _cursor, statement, parameters, *_args):
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", _before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", _before)


@pytest.mark.parametrize("sort", ["newest", "title", "popularity"])
def test_every_filter_reads_courses_through_an_index(client, factories, sort):
    engine = factories.kalpla.db.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("reads SQLite query plans")
    school = factories.institution("school")
    mentor = factories.user(roles={school: ["mentor"]})
    _add(factories, school, mentor, "python", summary="code", tags=["t"])
    _add(factories, school, mentor, "second")
    cursor = client.get(URL, query_string={"sort": sort, "limit": 1}).json["next_cursor"]
    for query in ({}, {"cursor": cursor}, {"institution": "school"}, {"level": "all"},
                  {"language": "en"}, {"tag": "t"}, {"instructor": mentor.id},
                  {"q": "pyth"}, {"institution": "school", "level": "all", "language": "en"}):
        with _statements(engine) as seen:
            r = client.get(URL, query_string={**query, "sort": sort, "limit": 1})
        assert r.status_code == 200 and r.json["items"]
        (statement, params), = [s for s in seen if "JOIN institutions" in s[0]]
        with engine.connect() as conn:
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                           params)]
        courses = [step for step in plan if " courses " in f"{step} "]
        assert courses and all("USING" in step for step in courses), (query, plan)
        # Rows come in index order: no sort of the whole filtered set. A related filter's
        # rows come in order from its index for the sort; only the page is sorted again.
        related = {"tag": "tags", "instructor": "instructors", "q": "search_terms"}
        table = next((t for k, t in related.items() if k in query), None)
        if table is None:
            assert not any("TEMP B-TREE" in step for step in plan), (query, plan)
        else:
            index = f"INDEX ix_course_{table}_{sort} ("
            assert any(index in step for step in plan), (query, plan)


# --- words ----------------------------------------------------------------------------------

def test_search_terms_fold_case_and_latin_accents_and_keep_other_scripts():
    assert catalog.search_terms("Intro to Python 3, part_2: Café & ÜBER Straße — intro") == [
        "intro", "to", "python", "3", "part", "2", "cafe", "uber", "strasse"]
    # Devanagari vowel signs are part of the word, not accents.
    assert catalog.search_terms("हिन्दी व्याकरण") == ["हिन्दी", "व्याकरण"]
    assert catalog.search_terms("x" * 100) == ["x" * 64]
    # The fast path for ASCII agrees with the general one.
    text = "Data-Science_101 (advanced) naïve"
    assert catalog.search_terms(text) == catalog.search_terms(text.replace("ï", "i")) == [
        "data", "science", "101", "advanced", "naive"]


def test_the_word_of_fewest_rows_drives_two_words(client, factories, monkeypatch):
    """"data" is in every course and "rare" in two: "rare" drives, though shorter, and the
    page is the same as when the rows are not counted far enough to tell them apart."""
    school = factories.institution("school")
    mentor = factories.user(roles={school: ["mentor"]})
    ids = [_add(factories, school, mentor, f"course-{n}",
                summary="database" + (" rarely" if n % 5 == 0 else "")) for n in range(10)]

    def words() -> list[tuple[str, list[str] | None, int]]:
        with factories.kalpla.db.session() as s:
            flt = catalog.CatalogFilter(q="databa rare")
            found = catalog._words(s, catalog._related(flt, s.get_bind().dialect.name))
        return [(w.rel.value, w.terms, w.rows) for w in found]

    assert words() == [("rare", ["rarely"], 2), ("databa", ["database"], 10)]
    found = _follow(client, {"q": "databa rare", "limit": 1})[0]
    assert sorted(found) == sorted(ids[::5])
    monkeypatch.setattr(catalog, "ESTIMATED_ROWS", 1)  # both reach it: the longest drives
    assert words() == [("databa", ["database"], 1), ("rare", ["rarely"], 1)]
    assert _follow(client, {"q": "databa rare", "limit": 1})[0] == found
