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
@click.option("--max-wait", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="With in-process jobs, how long to wait for the jobs run here "
                   "[default: KALPLA_JOB_TIMEOUT].")
@with_appcontext
def reap(queued_grace: int, max_wait: int | None) -> None:
    """Settle jobs whose worker was lost; for cron.

    Running jobs past their timeout are failed (or queued again once, when retry-safe), and
    jobs queued for longer than --queued-grace are handed to a worker again. With in-process
    jobs (no KALPLA_CELERY_BROKER_URL) they run in this command, which waits for them up to
    --max-wait; jobs still running then are left to a later reap, and the exit status is 1.
    """
    k = kalpla()
    service = k.jobs
    wait = max_wait if max_wait is not None else int(k.settings.job_timeout)
    finished = True
    try:
        report = service.reap(queued_grace=queued_grace)
        click.echo(f"failed: {len(report.failed)}, queued again: {len(report.requeued)}, "
                   f"handed to a worker: {len(report.dispatched)}")
        if report.dispatched and service.backend == "inprocess":
            click.echo("Running them here…")
            finished = service.wait(wait)
    finally:
        # Jobs still running are not waited for again; the next reap settles them.
        service.shutdown(0 if not finished else 30)
    if not finished:
        raise click.ClickException(
            f"Jobs were still running after {wait} s; a later reap settles them.")
