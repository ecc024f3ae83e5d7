"""Purging abandoned uploads: pending files whose upload window ended a while ago. No Flask
here.

A file stays ``pending`` when its upload never came, or came and failed confirmation (the
object is deleted then, the row kept so the uploader may try again while the instructions
last). Once the window (:data:`~kalpla_core.storage.service.UPLOAD_TTL`) has ended and a grace
period passed, nothing can be uploaded for it any more: :func:`purge_pending` deletes its
objects (every key it may have one at), then its row. Each file is purged in its own
transaction with its row locked, so a confirm running at the same moment either finishes
first (the file is ready and kept) or finds no file; a file whose objects cannot be deleted
keeps its row, is counted and logged, and is tried again next time.

Run by ``kalpla files purge-pending`` (cron) or as the ``core.purge_pending_files`` job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from kalpla_core.db import utcnow
from kalpla_core.enrollment.state import serialise_writes
from kalpla_core.storage.models import StoredFile
from kalpla_core.storage.port import StorageProvider
from kalpla_core.storage.service import UPLOAD_TTL, storage, stored_keys

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla
    from kalpla_core.jobs import JobContext

log = logging.getLogger("kalpla.storage")

JOB = "core.purge_pending_files"
# Past the upload window, so an upload that started just before the window ended has
# finished streaming, and a confirm of it is not raced for long.
DEFAULT_GRACE_MINUTES = 60
DEFAULT_GRACE = timedelta(minutes=DEFAULT_GRACE_MINUTES)
BATCH = 100


@dataclass(frozen=True)
class PurgeResult:
    purged: int
    failed: int


def purge_pending(kalpla: Kalpla, older_than: timedelta = DEFAULT_GRACE,
                  now: datetime | None = None, batch: int = BATCH) -> PurgeResult:
    """Delete the pending files whose upload window ended more than ``older_than`` before
    ``now``, ``batch`` rows read at a time, each file in its own transaction."""
    if older_than < timedelta(0) or batch < 1:
        raise ValueError("older_than must not be negative and batch must be positive")
    cutoff = (now or utcnow()) - timedelta(seconds=UPLOAD_TTL) - older_than
    providers: dict[str, StorageProvider] = {}
    purged = failed = 0
    after: tuple[datetime, str] | None = None
    while True:
        with kalpla.db.session() as session:
            rows = _candidates(session, cutoff, after, batch)
        for _created_at, file_id in rows:
            try:
                with kalpla.db.session() as session:
                    purged += _purge_one(session, kalpla, providers, file_id, cutoff)
            except Exception:
                failed += 1
                log.exception("a pending upload could not be purged", extra={"file_id": file_id})
        if len(rows) < batch:
            return PurgeResult(purged, failed)
        # Past the last row read: rows that failed are not read again in this run.
        after = rows[-1]


def _candidates(session: Session, cutoff: datetime, after: tuple[datetime, str] | None,
                batch: int) -> list[tuple[datetime, str]]:
    stmt = select(StoredFile.created_at, StoredFile.id).where(
        StoredFile.status == "pending", StoredFile.created_at <= cutoff)
    if after is not None:
        stmt = stmt.where(or_(StoredFile.created_at > after[0],
                              and_(StoredFile.created_at == after[0], StoredFile.id > after[1])))
    rows = session.execute(stmt.order_by(StoredFile.created_at, StoredFile.id).limit(batch))
    return [(row.created_at, row.id) for row in rows]


def _purge_one(session: Session, kalpla: Kalpla, providers: dict[str, StorageProvider],
               file_id: str, cutoff: datetime) -> int:
    """1 when the file was purged, 0 when it was confirmed or deleted meanwhile."""
    serialise_writes(session)
    file = session.scalars(select(StoredFile).where(
        StoredFile.id == file_id, StoredFile.status == "pending",
        StoredFile.created_at <= cutoff).with_for_update()
        .execution_options(populate_existing=True)).one_or_none()
    if file is None:
        return 0
    provider = providers.get(file.provider)
    if provider is None:
        provider = providers[file.provider] = storage(kalpla, file.provider)
    # The objects first: if one cannot be deleted the row stays, and so does the next try.
    for key in stored_keys(file):
        provider.delete(key)
    session.delete(file)
    return 1


def purge_pending_job(ctx: JobContext,
                      older_than_minutes: int = DEFAULT_GRACE_MINUTES) -> dict[str, Any]:
    """The ``core.purge_pending_files`` job: :func:`purge_pending`, its counts as the
    result. Safe to run again after a partial run."""
    from kalpla_core.jobs import JobError

    if isinstance(older_than_minutes, bool) or not isinstance(older_than_minutes, int) \
            or older_than_minutes < 0:
        raise JobError("older_than_minutes must be a whole number of minutes, 0 or more.")
    result = purge_pending(ctx.app.extensions["kalpla"],
                           timedelta(minutes=older_than_minutes))
    return {"purged": result.purged, "failed": result.failed,
            "older_than_minutes": older_than_minutes}
