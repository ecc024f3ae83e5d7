"""Purge benchmark: what ``kalpla files purge-pending`` costs as the files table grows (10k,
100k, 300k ready files).

    .venv/bin/python bench/purge_pending.py                      # a temporary SQLite file
    .venv/bin/python bench/purge_pending.py --database-url postgresql+psycopg://…/empty_db

Run from cron, the purge that finds nothing is the common one: it is timed ``--runs`` times
at each size (median and 95th percentile). Then ``--abandoned`` pending files past their
window, each with an object on the ``local`` provider, are added and one purge that deletes
them (objects, then rows, a transaction per file) is timed, with its rate. Ready files, most
of the table in practice, are bulk-inserted without objects. The database must be empty: it
is migrated here.
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

from sqlalchemy import func, insert, select

from kalpla_core import create_app, migrate
from kalpla_core.db import new_id
from kalpla_core.institutions.models import Institution
from kalpla_core.storage.models import StoredFile
from kalpla_core.storage.purge import purge_pending
from kalpla_core.storage.service import final_key, upload_key

BATCH = 10_000
NOW = datetime.now(UTC)


def _files(institution_id: str, count: int, status: str, age: timedelta) -> list[dict[str, Any]]:
    rows = []
    for n in range(count):
        file_id = new_id()
        rows.append({
            "id": file_id, "institution_id": institution_id, "purpose": "resource",
            "provider": "local", "filename": f"notes-{n}.pdf",
            "storage_key": upload_key(institution_id, file_id) if status == "pending"
            else final_key(institution_id, file_id),
            "content_type": "application/pdf", "size": 1024, "status": status,
            "created_at": NOW - age - timedelta(seconds=n % 86_400)})
    return rows


def _timed(fn: Any, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="an empty database (default: temporary SQLite)")
    parser.add_argument("--sizes", default="10000,100000,300000",
                        help="ready files in the table at each step, comma-separated")
    parser.add_argument("--runs", type=int, default=20, help="idle purges timed per size")
    parser.add_argument("--abandoned", type=int, default=500,
                        help="abandoned uploads purged per size")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))

    with tempfile.TemporaryDirectory(prefix="kalpla-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'files.db'}"
        app = create_app({"database_url": url, "instance_path": tmp, "plugins": [],
                          "secret_key": "bench-secret-key-long-enough-for-kalpla",
                          "log_level": "ERROR"})
        kalpla = app.extensions["kalpla"]
        migrate.upgrade(kalpla)
        engine = kalpla.db.engine
        with engine.connect() as conn:
            if conn.scalar(select(func.count()).select_from(StoredFile)):
                sys.exit("the database already holds files; give an empty one")
        institution_id = new_id()
        with engine.begin() as conn:
            conn.execute(insert(Institution), [{"id": institution_id, "slug": "bench",
                                                "name": "Bench"}])
        local = kalpla.providers.get("storage", "local", app)
        print(f"database: {engine.dialect.name}; {args.runs} idle purges per size, then "
              f"{args.abandoned} abandoned uploads", flush=True)
        print(f"{'ready files':>11} | {'idle purge ms: median':>21} {'p95':>7} | "
              f"{'purging ms':>10} {'files/s':>8}")
        loaded = 0
        for size in sizes:
            with engine.begin() as conn:
                for first in range(loaded, size, BATCH):
                    conn.execute(insert(StoredFile), _files(
                        institution_id, min(BATCH, size - first), "ready", timedelta(days=30)))
                # Uploads still within their window or grace: read past, never purged.
                conn.execute(insert(StoredFile), _files(
                    institution_id, 50, "pending", timedelta(minutes=5)))
            if engine.dialect.name == "postgresql":  # as autovacuum would, soon after
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("VACUUM ANALYZE files")
            loaded = size
            purge_pending(kalpla)  # warm the pool and caches
            median, p95 = _timed(lambda: purge_pending(kalpla), args.runs)

            abandoned = _files(institution_id, args.abandoned, "pending", timedelta(hours=3))
            with engine.begin() as conn:
                conn.execute(insert(StoredFile), abandoned)
            for row in abandoned:
                path = local.path(row["storage_key"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"%PDF-1.7\n" + b"x" * 1015)
            start = time.perf_counter()
            result = purge_pending(kalpla)
            elapsed = time.perf_counter() - start
            assert (result.purged, result.failed) == (args.abandoned, 0), result
            print(f"{size:>11,} | {median:21.2f} {p95:7.2f} | {elapsed * 1000:10.0f} "
                  f"{args.abandoned / elapsed:8.0f}", flush=True)
        kalpla.db.dispose()


if __name__ == "__main__":
    main()
