"""``kalpla jobs``: background jobs whose worker was lost."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from kalpla_core.cli.group import kalpla
from kalpla_core.jobs.reaper import QUEUED_GRACE


@click.group()
def jobs() -> None:
    """Background jobs."""


@jobs.command()
@click.option("--queued-grace", type=click.IntRange(min=0), default=QUEUED_GRACE,
              show_default=True, metavar="SECONDS",
              help="Hand again to a worker the jobs queued for longer than this.")
@with_appcontext
def reap(queued_grace: int) -> None:
    """Settle jobs whose worker was lost; for cron.

    Running jobs past their timeout are failed (or queued again once, when retry-safe), and
    jobs queued for longer than --queued-grace are handed to a worker again. With in-process
    jobs (no KALPLA_CELERY_BROKER_URL) they run in this command, which waits for them.
    """
    service = kalpla().jobs
    try:
        report = service.reap(queued_grace=queued_grace)
        click.echo(f"failed: {len(report.failed)}, queued again: {len(report.requeued)}, "
                   f"handed to a worker: {len(report.dispatched)}")
        if report.dispatched and service.backend == "inprocess":
            click.echo("Running them here…")
            service.wait(None)
    finally:
        service.shutdown()
