"""``kalpla enrollments …``: the periodic work of enrollment, for cron or a scheduler."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from kalpla_core.db import utcnow
from kalpla_core.enrollment.service import expire_enrollments
from kalpla_core.enrollment.waitlist import expire_offers

enrollments = AppGroup("enrollments", help="Enrollment upkeep.")


@enrollments.command("expire")
def expire() -> None:
    """Expire enrollments whose access ran out and pass on seat offers that were not
    accepted in time; freed seats are offered to waitlisted students. Safe to run often
    (every few minutes, say); each part commits on its own."""
    kalpla = current_app.extensions["kalpla"]
    now = utcnow()
    with kalpla.db.session() as session:
        expired = expire_enrollments(session, kalpla, now)
    with kalpla.db.session() as session:
        passed_on = expire_offers(session, kalpla, now)
    click.echo(f"{expired} enrollment(s) expired, {passed_on} seat offer(s) passed on.")
