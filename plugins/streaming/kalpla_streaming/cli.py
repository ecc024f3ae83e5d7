"""``kalpla streaming …`` commands."""

from __future__ import annotations

import click
from flask import current_app

from kalpla_core.toolkit import utcnow


@click.group("streaming")
def streaming() -> None:
    """Live classes: housekeeping of the streaming providers."""


@streaming.command("prune-channels")
@click.option("--dry-run", is_flag=True, help="List the channels without deleting them.")
def prune_channels(dry_run: bool) -> None:
    """Delete the Amazon IVS channels of sessions that were deleted or cancelled."""
    from kalpla_streaming.providers import PORT, ProviderContext

    kalpla = current_app.extensions["kalpla"]
    provider = kalpla.providers.get(PORT, "ivs", current_app)
    with kalpla.db.session() as session:
        ctx = ProviderContext(session=session, settings={}, secret_key=kalpla.settings.secret_key,
                              config=current_app.extensions["kalpla_streaming"], now=utcnow())
        pruned = provider.prune_channels(ctx, dry_run=dry_run)
    for arn in pruned:
        click.echo(arn)
    click.echo(f"{'would delete' if dry_run else 'deleted'} {len(pruned)} channel(s)", err=True)
