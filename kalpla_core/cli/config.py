"""``kalpla config show``."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from kalpla_core.cli.group import kalpla


@click.group(cls=AppGroup)
def config() -> None:
    """The deployment's settings."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(as_json: bool) -> None:
    """Every KALPLA_* setting in effect, secrets redacted."""
    values = kalpla().settings.redacted()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    width = max(map(len, values), default=0)
    for name, value in values.items():
        click.echo(f"{name:<{width}}  {value}")
