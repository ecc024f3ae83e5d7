"""Enrollment and progress benchmark: 10 000 students in one course, 1 000 000 progress events.

    .venv/bin/python bench/enrollment.py --events 1000000  # the full run, temporary SQLite
    .venv/bin/python bench/enrollment.py                   # 100 000 events (a few minutes)
    .venv/bin/python bench/enrollment.py --database-url postgresql+psycopg://…/empty_db

The default is a tenth of the events because the full million takes a quarter of an hour or
more (each event is a whole service call: see below); throughput and the CPU time per event
(of this process; other work sharing the cores lowers the throughput, not that) are printed.

A published course of ``--modules`` × ``--lessons`` lessons (a third of them videos) is
created and ``--students`` students are enrolled in it by bulk inserts. Then ``--events``
learning events are recorded through the progress service
(:func:`kalpla_core.enrollment.progress.record_event`: access check, enrollment lock, upsert,
completion rules, summary recomputation, course completion, events after commit), ``--batch``
events per transaction. Students progress through the course in outline order, interleaved at
random, with videos reported several times as they play, some reports repeated and some
arriving late, so that some students finish the course along the way.

Then the whole request is timed through the Flask test client, ``--requests`` times each:
``GET /api/v1/courses/{id}/progress`` of random students, and the roster
(``GET /api/v1/courses/{id}/enrollments``) for the course's instructor, first and deep pages.
Last, one lesson is added and the time to recompute every summary is printed. The database
must be empty: it is migrated here. Figures depend on the machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from kalpla_core import create_app, migrate
from kalpla_core.courses import structure
from kalpla_core.courses.models import Course, CourseInstructor, Lesson, Module
from kalpla_core.db import new_id
from kalpla_core.enrollment import progress
from kalpla_core.enrollment.models import Enrollment, LessonProgress
from kalpla_core.identity.models import Membership, User
from kalpla_core.institutions.models import Institution

INSERT_BATCH = 5_000
VIDEO_SECONDS = 600
START = datetime.now(UTC) - timedelta(days=30)

Plan = list[tuple[str, str, dict[str, Any]]]  # (lesson id, event, fields)


def _setup(kalpla: Any, modules: int, lessons: int, students: int
           ) -> tuple[str, str, list[tuple[str, str]], list[str]]:
    """The institution, instructor, course and enrolled students, bulk-inserted; returns
    (course id, instructor id, [(lesson id, kind)] in outline order, student ids)."""
    now = datetime.now(UTC)
    inst, instructor, course = new_id(), new_id(), new_id()
    with kalpla.db.engine.begin() as conn:
        conn.execute(insert(Institution), [{"id": inst, "slug": "bench", "name": "Bench",
                                            "settings": {}, "version": 1, "created_at": now,
                                            "updated_at": now}])
        conn.execute(insert(User), [{"id": instructor, "email": "mentor@bench.test",
                                     "name": "Mentor", "is_active": True,
                                     "is_platform_admin": False, "token_generation": 0,
                                     "created_at": now, "updated_at": now}])
        conn.execute(insert(Membership), [{"user_id": instructor, "institution_id": inst,
                                           "role": "mentor", "created_at": now,
                                           "updated_at": now}])
        conn.execute(insert(Course.__table__), [{
            "id": course, "institution_id": inst, "slug": "bench", "title": "Bench course",
            "summary": "", "description": "", "language": "en", "level": "all",
            "status": "published", "published_at": now, "enrollment_count": students,
            "structure_version": 1, "version": 1, "created_by": instructor,
            "created_at": now, "updated_at": now}])
        conn.execute(insert(CourseInstructor.__table__), [{
            "course_id": course, "user_id": instructor, "status": "published",
            "newest_at": now, "title": "Bench course", "enrollment_count": students}])
        outline: list[tuple[str, str]] = []
        for m in range(modules):
            module = new_id()
            conn.execute(insert(Module.__table__), [{
                "id": module, "course_id": course, "title": f"Module {m}", "summary": "",
                "position": m, "version": 1, "created_at": now, "updated_at": now}])
            rows = []
            for n in range(lessons):
                kind = "video" if n % 3 == 1 else "text"
                lesson = new_id()
                outline.append((lesson, kind))
                rows.append({
                    "id": lesson, "module_id": module, "course_id": course,
                    "title": f"Lesson {m}.{n}", "kind": kind, "position": n,
                    "body": "" if kind == "video" else "Read me.",
                    "video_url": "https://video.example/v.mp4" if kind == "video" else None,
                    "duration_seconds": VIDEO_SECONDS if kind == "video" else None,
                    "is_preview": False, "is_required": True, "data": {}, "version": 1,
                    "created_at": now, "updated_at": now})
            conn.execute(insert(Lesson.__table__), rows)
        ids = [new_id() for _ in range(students)]
        for first in range(0, students, INSERT_BATCH):
            chunk = ids[first:first + INSERT_BATCH]
            conn.execute(insert(User), [{
                "id": uid, "email": f"s{first + n}@bench.test", "name": f"Student {first + n}",
                "is_active": True, "is_platform_admin": False, "token_generation": 0,
                "created_at": now, "updated_at": now} for n, uid in enumerate(chunk)])
            conn.execute(insert(Membership), [{
                "user_id": uid, "institution_id": inst, "role": "student", "created_at": now,
                "updated_at": now} for uid in chunk])
            conn.execute(insert(Enrollment.__table__), [{
                "id": new_id(), "institution_id": inst, "course_id": course, "user_id": uid,
                "status": "active", "source": "bulk", "activated_at": START,
                "lessons_completed": 0, "lessons_required": len(outline),
                "progress_percent": 0, "structure_version": 1, "version": 1,
                "created_at": now, "updated_at": now} for uid in chunk])
    return course, instructor, outline, ids


def _plan(outline: list[tuple[str, str]], rng: random.Random) -> Plan:
    """One student's events through the course: views, videos reported as they play, a few
    repeats and a few late arrivals (events keep the time they happened)."""
    events: Plan = []
    clock = START + timedelta(minutes=rng.randrange(60 * 24))
    for lesson, kind in outline:
        if kind == "video":
            percents = sorted(rng.sample(range(5, 95), rng.randint(2, 4)))
            if rng.random() < 0.97:  # most watch to the end
                percents.append(100)
            for percent in percents:
                clock += timedelta(seconds=VIDEO_SECONDS * percent // 400 + 1)
                events.append((lesson, "video", {"position_seconds":
                                                 VIDEO_SECONDS * percent // 100,
                                                 "percent": percent, "occurred_at": clock}))
        else:
            clock += timedelta(minutes=rng.randint(1, 10))
            events.append((lesson, "viewed", {"occurred_at": clock}))
        if rng.random() < 0.15:  # a retried request
            events.append(events[-1])
        if len(events) > 2 and rng.random() < 0.1:  # a report overtaken by the next one
            events[-1], events[-2] = events[-2], events[-1]
    return events


def _schedule(students: list[str], outline: list[tuple[str, str]], total: int,
              rng: random.Random) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """``total`` events, students interleaved at random, each in their own order."""
    plans: dict[str, Plan] = {}
    active = list(students)
    for _ in range(total):
        if not active:
            return
        index = rng.randrange(len(active))
        student = active[index]
        plan = plans.get(student)
        if plan is None:
            plan = plans[student] = _plan(outline, random.Random(rng.random()))
            plan.reverse()
        lesson, event, fields = plan.pop()
        if not plan:
            active[index] = active[-1]
            active.pop()
        yield student, lesson, event, fields


def record(kalpla: Any, schedule: Iterator[tuple[str, str, str, dict[str, Any]]],
           total: int, batch: int) -> tuple[int, int, float, float]:
    """Record the events through the service, ``batch`` per transaction; (events, lessons
    completed, wall seconds, CPU seconds of this process)."""
    done = completed = 0
    cpu = time.process_time()
    started = last = time.perf_counter()
    pending = list(_take(schedule, batch))
    while pending:
        with kalpla.app.app_context(), kalpla.db.session() as session:
            for student, lesson, event, fields in pending:
                user = session.get(User, student)
                result = progress.record_event(session, kalpla, user, lesson, event, **fields)
                completed += result.lesson_completed
        done += len(pending)
        now = time.perf_counter()
        if now - last > 30:
            print(f"  {done:,}/{total:,} events, {done / (now - started):,.0f}/s", flush=True)
            last = now
        pending = list(_take(schedule, batch))
    return done, completed, time.perf_counter() - started, time.process_time() - cpu


def _take(items: Iterator[Any], n: int) -> Iterator[Any]:
    for _, item in zip(range(n), items, strict=False):
        yield item


def measure(call: Callable[[int], Any], requests: int) -> tuple[float, float]:
    """Median and p95 wall time (ms) of ``call(i)``, after one warm-up call."""
    call(0)
    times = []
    for i in range(requests):
        started = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]


def _get(client: Any, url: str, headers: dict[str, str], **query: Any) -> Any:
    r = client.get(url, headers=headers, query_string=query)
    if r.status_code != 200:
        raise SystemExit(f"GET {url} answered {r.status_code}: {r.get_data(as_text=True)}")
    return r


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="an empty database (default: temporary SQLite)")
    parser.add_argument("--students", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000,
                        help="progress events to record (1000000 for the full run)")
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--lessons", type=int, default=12, help="lessons per module")
    parser.add_argument("--batch", type=int, default=100, help="events per transaction")
    parser.add_argument("--requests", type=int, default=200, help="requests per read")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kalpla-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'enrollment.db'}"
        app = create_app({"database_url": url, "instance_path": tmp, "plugins": [],
                          "secret_key": "bench-secret-key-long-enough-for-kalpla",
                          "log_level": "WARNING", "celery_broker_url": None})
        kalpla = app.extensions["kalpla"]
        migrate.upgrade(kalpla)
        with kalpla.db.engine.connect() as conn:
            if conn.scalar(select(func.count()).select_from(Enrollment)):
                sys.exit("the database already holds enrollments; give an empty one")
        rng = random.Random(args.seed)
        started = time.perf_counter()
        course, instructor, outline, students = _setup(kalpla, args.modules, args.lessons,
                                                       args.students)
        print(f"database: {kalpla.db.dialect}; a course of {len(outline)} lessons "
              f"({sum(k == 'video' for _, k in outline)} videos); enrolled "
              f"{len(students):,} students in {time.perf_counter() - started:.1f}s", flush=True)

        schedule = _schedule(students, outline, args.events, rng)
        events, lessons_done, seconds, cpu = record(kalpla, schedule, args.events, args.batch)
        with kalpla.db.session() as s:
            finished = s.scalar(select(func.count()).select_from(Enrollment).where(
                Enrollment.course_id == course, Enrollment.status == "completed"))
            rows = s.scalar(select(func.count()).select_from(LessonProgress))
        print(f"recorded {events:,} events in {seconds:.0f}s: {events / seconds:,.0f} "
              f"events/s ({args.batch} per transaction); CPU {cpu:.0f}s of this process, "
              f"{cpu / events * 1e6:,.0f} µs per event; {rows:,} progress rows, "
              f"{lessons_done:,} lessons and {finished:,} courses completed", flush=True)

        client = app.test_client()
        with kalpla.db.session() as s:
            sample = random.Random(1).sample(students, min(args.requests, len(students)))
            tokens = {uid: kalpla.keys.issue(s, uid, {"gen": 0})
                      for uid in [*sample, instructor]}
        bearer = {uid: {"Authorization": f"Bearer {t}", "Kalpla-Institution": "bench"}
                  for uid, t in tokens.items()}
        staff = bearer[instructor]
        roster = f"/api/v1/courses/{course}/enrollments"
        cursors = [None]
        for _ in range(min(args.requests, 400)):  # the cursors of the first pages
            nxt = _get(client, roster, staff, limit=20,
                       **({"cursor": cursors[-1]} if cursors[-1] else {})).json["next_cursor"]
            if nxt is None:
                break
            cursors.append(nxt)
        deep = cursors[-1]
        reads = {
            "GET /courses/{id}/progress (a student)": lambda i: _get(
                client, f"/api/v1/courses/{course}/progress", bearer[sample[i % len(sample)]]),
            "roster, first page (20)": lambda i: _get(client, roster, staff, limit=20),
            f"roster, page {len(cursors)} (20)": lambda i: _get(
                client, roster, staff, limit=20, **({"cursor": deep} if deep else {})),
            "roster, status=completed": lambda i: _get(client, roster, staff, limit=20,
                                                       status="completed"),
            "roster, 100 per page": lambda i: _get(client, roster, staff, limit=100),
        }
        print(f"\n{'request':<44} {'median ms':>9} {'p95 ms':>8}")
        for name, call in reads.items():
            median, p95 = measure(call, args.requests)
            print(f"{name:<44} {median:9.2f} {p95:8.2f}", flush=True)

        started = time.perf_counter()
        with kalpla.app.app_context(), kalpla.db.session() as s:
            target = s.get(Course, course)
            module = s.scalars(select(Module).where(Module.course_id == course)
                               .order_by(Module.position.desc())).first()
            structure.create_lesson(s, kalpla, target, module, {"title": "New", "kind": "text",
                                                                "body": "New."})
        # The lesson-changed event recomputed (inline) or queued a job; wait for either.
        kalpla.jobs.wait(600)
        with kalpla.app.app_context():
            left = progress.recompute_course_in_batches(kalpla, course)
        print(f"\nadded a required lesson: {len(students):,} summaries recomputed in "
              f"{time.perf_counter() - started:.2f}s ({left} left for the last pass)")
        kalpla.jobs.shutdown(30)
        kalpla.db.dispose()


if __name__ == "__main__":
    main()
