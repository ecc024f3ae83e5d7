"""``kalpla worker``: a Celery worker for the job API."""

from __future__ import annotations

import importlib.util

import click
from flask import current_app
from flask.cli import with_appcontext

from kalpla_core.cli.group import kalpla


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1),
              help="Worker processes  [default: one per CPU]")
@with_appcontext
def worker(concurrency: int | None) -> None:
    """Run background jobs on Celery (needs KALPLA_CELERY_BROKER_URL)."""
    settings = kalpla().settings
    if not settings.celery_broker_url:
        raise click.ClickException(
            "KALPLA_CELERY_BROKER_URL is not set, so jobs run in-process in the web server "
            "and need no worker. Set it to a redis:// or amqp:// URL to run them on Celery.")
    if importlib.util.find_spec("celery") is None:
        raise click.ClickException("Celery is not installed: pip install 'kalpla[celery]'")
    from kalpla_core.jobs.celery_app import make_worker

    # Jobs run on the app this command built, so they see the same plugins and database.
    celery = make_worker(current_app._get_current_object())  # type: ignore[attr-defined]
    broker = settings.redacted()["KALPLA_CELERY_BROKER_URL"]
    click.echo(f"Celery worker for Kalpla jobs on {broker}")
    argv = ["worker", f"--loglevel={settings.log_level}"]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    celery.worker_main(argv)
