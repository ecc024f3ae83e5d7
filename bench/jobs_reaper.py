"""Job reaper benchmark: what one sweep costs as the jobs table grows (10k, 100k, 500k rows).

    .venv/bin/python bench/jobs_reaper.py                      # a temporary SQLite file
    .venv/bin/python bench/jobs_reaper.py --database-url postgresql+psycopg://…/empty_db

Each serving process with in-process jobs sweeps every 5 minutes, so the sweep that finds
nothing to do is the one that matters: it is timed ``--sweeps`` times at each size (median and
95th percentile, wall and CPU), with 100 runs in progress whose heartbeats are fresh (read by
the sweep and left alone). Then 100 running jobs whose heartbeats stopped half an hour ago
(within their timeout) and 100 queued jobs left behind are added and one sweep that settles
them is timed: the running ones are failed, the queued ones handed to a runner that only
records them. Finished jobs, most of a table's
rows in practice, are bulk-inserted. The database must be empty: it is migrated here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from kalpla_core import create_app, migrate
from kalpla_core.db import new_id, utcnow
from kalpla_core.jobs.models import Job

BATCH = 10_000
NOW = datetime.now(UTC)
STALE = 100
LIVE = 100


class RecordingRunner:
    """Takes job ids and runs nothing: the sweep is measured, not the jobs."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def submit(self, job_id: str) -> None:
        self.ids.append(job_id)

    def wait(self, timeout: float | None = 30) -> bool:
        return True

    def shutdown(self, timeout: float | None = 30) -> bool:
        return True


def _rows(first: int, count: int) -> list[dict[str, Any]]:
    rows = []
    for n in range(first, first + count):
        created = NOW - timedelta(days=90) + timedelta(seconds=n * 7)
        status = "failed" if n % 50 == 0 else "succeeded"
        rows.append({"id": new_id(), "name": "bench.job", "params": {"n": n},
                     "status": status, "progress": 100, "progress_message": "",
                     "result": {"ok": True} if status == "succeeded" else None,
                     "error": "no" if status == "failed" else None, "created_at": created,
                     "started_at": created + timedelta(seconds=1),
                     "finished_at": created + timedelta(seconds=5)})
    return rows


def _stale(kind: str) -> list[dict[str, Any]]:
    old = NOW - timedelta(minutes=30)
    running = kind == "running"
    return [{"id": new_id(), "name": "bench.job", "params": {}, "status": kind, "progress": 0,
             "progress_message": "", "created_at": old, "started_at": old if running else None,
             "heartbeat_at": old if running else None} for _ in range(STALE)]


def _live() -> list[dict[str, Any]]:
    started = NOW - timedelta(minutes=10)
    return [{"id": new_id(), "name": "bench.job", "params": {"live": True}, "status": "running",
             "progress": 50, "progress_message": "", "created_at": started,
             "started_at": started, "heartbeat_at": NOW} for _ in range(LIVE)]


def _timed(fn: Any, times: int) -> tuple[float, float, float]:
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(times):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    wall.sort()
    return statistics.median(wall), wall[max(0, int(len(wall) * 0.95) - 1)], statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="an empty database (default: temporary SQLite)")
    parser.add_argument("--sizes", default="10000,100000,500000",
                        help="jobs table sizes to measure at, comma-separated")
    parser.add_argument("--sweeps", type=int, default=30, help="idle sweeps timed per size")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))

    with tempfile.TemporaryDirectory(prefix="kalpla-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'jobs.db'}"
        app = create_app({"database_url": url, "instance_path": tmp, "plugins": [],
                          "secret_key": "bench-secret-key-long-enough-for-kalpla",
                          "log_level": "ERROR"})
        kalpla = app.extensions["kalpla"]
        migrate.upgrade(kalpla)
        jobs = kalpla.jobs
        jobs.register("core", "bench.job", lambda ctx, **_: None)
        runner = RecordingRunner()
        jobs._runner = runner  # the sweep hands jobs over to it
        engine = kalpla.db.engine
        with engine.connect() as conn:
            if conn.scalar(select(func.count()).select_from(Job)):
                sys.exit("the database already holds jobs; give an empty one")
        print(f"database: {engine.dialect.name}; {args.sweeps} idle sweeps per size, "
              f"{LIVE} runs in progress", flush=True)
        print(f"{'jobs':>9} | {'idle sweep ms: median':>21} {'p95':>7} {'cpu':>6} | "
              f"{'settling 100 + 100 ms':>21}")
        loaded = 0
        with engine.begin() as conn:
            conn.execute(insert(Job), _live())
        for size in sizes:
            with engine.begin() as conn:
                for first in range(loaded, size, BATCH):
                    conn.execute(insert(Job), _rows(first, min(BATCH, size - first)))
                # Their workers beat: loading a size may take longer than LOST_AFTER.
                conn.execute(update(Job).where(Job.status == "running")
                             .values(heartbeat_at=utcnow()))
            if engine.dialect.name == "postgresql":  # as autovacuum would, soon after
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("VACUUM ANALYZE jobs")
            loaded = size
            with app.app_context():
                jobs.reap()  # warm the connection pool and caches
                median, p95, cpu = _timed(jobs.reap, args.sweeps)
                with engine.begin() as conn:
                    conn.execute(insert(Job), _stale("running") + _stale("queued"))
                runner.ids.clear()
                settle, _p95, _cpu = _timed(jobs.reap, 1)
            assert len(runner.ids) == STALE, len(runner.ids)  # the queued ones
            with engine.connect() as conn:
                live = conn.scalar(select(func.count()).select_from(Job)
                                   .where(Job.status == "running"))
            assert live == LIVE, live  # the silent ones failed, the beating ones left alone
            with engine.begin() as conn:  # back to finished jobs only, for the next size
                conn.execute(Job.__table__.delete().where(
                    (Job.status == "queued") | Job.error.like("worker lost%")))
            print(f"{size:>9,} | {median:21.2f} {p95:7.2f} {cpu:6.2f} | {settle:21.2f}",
                  flush=True)
        kalpla.db.dispose()


if __name__ == "__main__":
    main()
