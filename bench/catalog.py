"""Catalog benchmark: page latency of ``GET /api/v1/courses`` at 1k, 10k and 100k courses.

    .venv/bin/python bench/catalog.py                      # a temporary SQLite file
    .venv/bin/python bench/catalog.py --database-url postgresql+psycopg://…/empty_db

Courses are bulk-inserted (with their tags, instructors and search words) in stages; after
each stage every scenario is requested ``--requests`` times through the Flask test client
(the whole request: routing, authentication of an anonymous caller, queries, serialisation)
and the median and 95th percentile are printed. The database must be empty: it is migrated
here. Figures depend on the machine; what matters is how little they move between sizes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from kalpla_core import create_app, migrate
from kalpla_core.courses.catalog import course_terms, sort_keys
from kalpla_core.courses.models import Course, CourseInstructor, CourseSearchTerm, CourseTag
from kalpla_core.db import new_id
from kalpla_core.http.pagination import encode_cursor
from kalpla_core.identity.models import Membership, User
from kalpla_core.institutions.models import Institution

INSTITUTIONS = 20
MENTORS_PER_INSTITUTION = 25
TAGS = [f"topic-{n}" for n in range(300)]
LEVELS = ("beginner", "intermediate", "advanced", "all")
# Most courses in English, a long tail of other languages.
LANGUAGES = ["en"] * 12 + ["hi", "hi", "pt-BR", "es", "fr", "de", "ja", "ta"]
BATCH = 5_000
START = datetime(2020, 1, 1, tzinfo=UTC)


def _vocabulary(rng: random.Random, size: int = 3_000) -> list[str]:
    syllables = ["ka", "la", "pa", "ri", "to", "men", "sa", "vi", "dra", "no", "ex", "gor",
                 "lin", "qu", "zen", "ta", "bo", "cy", "fu", "mo", "ne", "ph", "st", "ul"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


@dataclass
class Fixture:
    institutions: list[tuple[str, str]]  # (id, slug)
    mentors: dict[str, list[str]]  # institution id -> user ids
    words: list[str]


def _people(conn: Connection, rng: random.Random) -> Fixture:
    now = datetime.now(UTC)
    institutions = [(new_id(), f"bench-{n}") for n in range(INSTITUTIONS)]
    conn.execute(insert(Institution), [
        {"id": i, "slug": s, "name": s.title(), "settings": {}, "version": 1,
         "created_at": now, "updated_at": now} for i, s in institutions])
    mentors: dict[str, list[str]] = {}
    users, memberships = [], []
    for inst_id, slug in institutions:
        mentors[inst_id] = []
        for n in range(MENTORS_PER_INSTITUTION):
            uid = new_id()
            mentors[inst_id].append(uid)
            users.append({"id": uid, "email": f"m{n}@{slug}.bench", "name": f"Mentor {n}",
                          "is_active": True, "is_platform_admin": False,
                          "token_generation": 0, "created_at": now, "updated_at": now})
            memberships.append({"user_id": uid, "institution_id": inst_id, "role": "mentor",
                                "created_at": now, "updated_at": now})
    conn.execute(insert(User), users)
    conn.execute(insert(Membership), memberships)
    return Fixture(institutions, mentors, _vocabulary(rng))


def _course_rows(fx: Fixture, rng: random.Random, start: int,
                 stop: int) -> Iterator[tuple[list[dict], list[dict], list[dict], list[dict]]]:
    """Batches of (courses, tags, instructors, search words) for course numbers start..stop."""
    for first in range(start, stop, BATCH):
        courses, tags, instructors, terms = [], [], [], []
        for n in range(first, min(first + BATCH, stop)):
            # Time-ordered ids (like UUIDv7) keep the bulk load appending to its indexes;
            # the catalog does not care which ids courses have.
            cid = f"{n:012x}{rng.getrandbits(80):020x}"
            inst_id, _ = fx.institutions[n % INSTITUTIONS]
            title = " ".join(rng.choice(fx.words) for _ in range(rng.randint(3, 6))).title()
            summary = " ".join(rng.choice(fx.words) for _ in range(rng.randint(8, 20)))
            # 1 in 20 is a draft; publication times grow with the course number.
            published = rng.random() >= 0.05
            moment = START + timedelta(minutes=n)
            status = "published" if published else "draft"
            language, level = rng.choice(LANGUAGES), rng.choice(LEVELS)
            count = int(rng.paretovariate(1.2)) - 1
            courses.append({
                "id": cid, "institution_id": inst_id, "slug": f"course-{n}", "title": title,
                "summary": summary, "description": "", "language": language,
                "level": level, "status": status,
                "published_at": moment if published else None, "enrollment_count": count,
                "structure_version": 1, "version": 1, "created_at": moment,
                "updated_at": moment, "created_by": fx.mentors[inst_id][0]})
            # The course's sort keys, copied beside its tags, instructors and words (a draft's
            # "newest" time is its creation, the same moment here).
            keys = {"course_id": cid, "status": status, "newest_at": moment, "title": title,
                    "enrollment_count": count}
            tags += [{**keys, "tag": t} for t in rng.sample(TAGS, 3)]
            instructors += [{**keys, "user_id": u}
                            for u in rng.sample(fx.mentors[inst_id], rng.randint(1, 2))]
            terms += [{**keys, "term": t} for t in course_terms(title, summary)]
        yield courses, tags, instructors, terms


def load(conn: Connection, fx: Fixture, rng: random.Random, start: int, stop: int) -> int:
    """Insert courses start..stop; returns how many search-word rows came with them."""
    words = 0
    for courses, tags, instructors, terms in _course_rows(fx, rng, start, stop):
        conn.execute(insert(Course.__table__), courses)
        conn.execute(insert(CourseTag.__table__), tags)
        conn.execute(insert(CourseInstructor.__table__), instructors)
        conn.execute(insert(CourseSearchTerm.__table__), terms)
        words += len(terms)
    return words


def _middle_cursor(conn: Connection, secret: str, sort: str) -> str:
    keys = sort_keys("published", sort)
    total = conn.scalar(select(func.count()).select_from(Course)
                        .where(Course.status == "published")) or 0
    row = conn.execute(select(*[c for c, _ in keys]).where(Course.status == "published")
                       .order_by(*[c.asc() if d == "asc" else c.desc() for c, d in keys])
                       .offset(total // 2).limit(1)).one()
    return encode_cursor(list(row), keys, secret)


def scenarios(conn: Connection, fx: Fixture, secret: str,
              rng: random.Random) -> dict[str, Callable[[int], dict[str, Any]]]:
    """Named query strings, each a function of the request number (values vary)."""
    deep_newest = _middle_cursor(conn, secret, "newest")
    deep_title = _middle_cursor(conn, secret, "title")
    instructors = [u for users in fx.mentors.values() for u in users]
    common = [w[:3] for w in rng.sample(fx.words, 50)]
    # Real combinations: the institution, level and a tag of sampled published courses.
    sample = conn.execute(
        select(Institution.slug, Course.level, CourseTag.tag)
        .join(Course, Course.institution_id == Institution.id)
        .join(CourseTag, CourseTag.course_id == Course.id)
        .where(Course.status == "published").order_by(Course.id).limit(50)).all()
    pairs = [" ".join(rng.sample(fx.words, 2)) for _ in range(50)]
    return {
        "first page (newest)": lambda i: {},
        "first page, title": lambda i: {"sort": "title"},
        "first page, popularity": lambda i: {"sort": "popularity"},
        "deep page (newest)": lambda i: {"cursor": deep_newest},
        "deep page, title": lambda i: {"sort": "title", "cursor": deep_title},
        "institution": lambda i: {"institution": fx.institutions[i % INSTITUTIONS][1]},
        "institution, title": lambda i: {"institution": fx.institutions[i % INSTITUTIONS][1],
                                         "sort": "title"},
        "tag": lambda i: {"tag": TAGS[i % len(TAGS)]},
        "tag, popularity": lambda i: {"tag": TAGS[i % len(TAGS)], "sort": "popularity"},
        "level": lambda i: {"level": LEVELS[i % len(LEVELS)]},
        "language (common)": lambda i: {"language": "en"},
        "language (rare)": lambda i: {"language": "ta"},
        "language (absent)": lambda i: {"language": "sv"},
        "instructor": lambda i: {"instructor": instructors[i % len(instructors)]},
        "q, one word": lambda i: {"q": fx.words[(i * 61) % len(fx.words)]},
        "q, 3-letter prefix": lambda i: {"q": common[i % len(common)]},
        "q, two words": lambda i: {"q": pairs[i % len(pairs)]},
        "q, no match": lambda i: {"q": f"nomatch{i}"},
        "institution+level+tag": lambda i: dict(zip(("institution", "level", "tag"),
                                                    sample[i % len(sample)], strict=True)),
    }


def measure(client: Any, params: Callable[[int], dict[str, Any]],
            requests: int) -> tuple[float, float, float, int]:
    """Median and p95 wall time, median CPU time (ms) and items per page."""
    client.get("/api/v1/courses", query_string=params(0))  # warm up
    wall, cpu, items = [], [], 0
    for i in range(requests):
        started, started_cpu = time.perf_counter(), time.process_time()
        r = client.get("/api/v1/courses", query_string=params(i))
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{params(i)} answered {r.status_code}: {r.get_data(as_text=True)}")
        items += len(r.json["items"])
    wall.sort()
    p95 = wall[max(0, int(len(wall) * 0.95) - 1)]
    return statistics.median(wall), p95, statistics.median(cpu), items // requests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="an empty database (default: temporary SQLite)")
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="catalog sizes to measure at, comma-separated")
    parser.add_argument("--requests", type=int, default=50, help="requests per scenario")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))

    with tempfile.TemporaryDirectory(prefix="kalpla-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'catalog.db'}"
        app = create_app({"database_url": url, "instance_path": tmp, "plugins": [],
                          "secret_key": "bench-secret-key-long-enough-for-kalpla",
                          "log_level": "WARNING"})
        kalpla = app.extensions["kalpla"]
        migrate.upgrade(kalpla)
        engine = kalpla.db.engine
        with engine.connect() as conn:
            if conn.scalar(select(func.count()).select_from(Course)):
                sys.exit("the database already holds courses; give an empty one")
        rng = random.Random(args.seed)
        with engine.begin() as conn:
            fx = _people(conn, rng)
        client = app.test_client()
        results: dict[str, dict[int, tuple[float, float, float, int]]] = {}
        loaded = 0
        print(f"database: {engine.dialect.name}; {args.requests} requests per scenario, "
              "20 items per page", flush=True)
        for size in sizes:
            started = time.perf_counter()
            with engine.begin() as conn:
                sqlite = engine.dialect.name == "sqlite"
                if sqlite:  # room for the indexes while loading; the default afterwards
                    conn.exec_driver_sql("PRAGMA cache_size = -262144")
                words = load(conn, fx, rng, loaded, size)
                if sqlite:
                    conn.exec_driver_sql("PRAGMA cache_size = -2000")
            if engine.dialect.name == "postgresql":  # as autovacuum would, soon after a load
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("VACUUM ANALYZE")
            print(f"loaded {size - loaded} courses ({words} search words) in "
                  f"{time.perf_counter() - started:.1f}s; {size} in all", flush=True)
            loaded = size
            with engine.connect() as conn:
                named = scenarios(conn, fx, app.config["SECRET_KEY"], random.Random(size))
            for name, params in named.items():
                results.setdefault(name, {})[size] = measure(client, params, args.requests)
        _report(results, sizes)
        kalpla.db.dispose()


def _report(results: dict[str, dict[int, tuple[float, float, float, int]]],
            sizes: list[int]) -> None:
    head = "".join(f" | {f'{s:,} courses':>26}" for s in sizes)
    sub = "".join(f" | {'median':>7} {'p95':>6} {'cpu':>6} {'n':>3}" for _ in sizes)
    print(f"\n{'scenario':<24}{head}\n{'(ms)':<24}{sub}")
    for name, by_size in results.items():
        cells = "".join(f" | {m:7.2f} {p:6.2f} {c:6.2f} {n:3d}"
                        for m, p, c, n in (by_size[s] for s in sizes))
        print(f"{name:<24}{cells}")
    print("\nmedian, p95: wall time of the whole request; cpu: median CPU time of this process "
          "(steadier on a busy machine); n: items on the page.")


if __name__ == "__main__":
    main()
