"""The ``kalpla`` command line, built on Flask's (so ``kalpla routes`` and ``kalpla shell``
work too). Plugins add commands through the ``kalpla_cli_commands`` registration hook."""

from __future__ import annotations

import click
from flask import Flask

from kalpla_core.cli.config import config
from kalpla_core.cli.db import db
from kalpla_core.cli.demo import demo
from kalpla_core.cli.group import AppFactory, KalplaGroup, StartupError
from kalpla_core.cli.institutions import institutions
from kalpla_core.cli.jobs import jobs
from kalpla_core.cli.plugins import plugins
from kalpla_core.cli.serve import serve
from kalpla_core.cli.users import users
from kalpla_core.cli.worker import worker
from kalpla_core.version import __version__

__all__ = ["KalplaGroup", "StartupError", "cli", "main", "make_cli"]


def _from_environment() -> Flask:
    from kalpla_core import create_app

    return create_app()


def make_cli(create_app: AppFactory | None = None) -> KalplaGroup:
    """The ``kalpla`` group over apps built by ``create_app`` (default: from the
    ``KALPLA_*`` environment); tests and embedding code pass their own factory."""
    group = KalplaGroup(
        app_factory=create_app or _from_environment, name="kalpla",
        help="Kalpla: a plugin-based backend for e-learning platforms.",
        context_settings={"help_option_names": ["-h", "--help"]})
    for command in (serve, db, plugins, institutions, users, demo, config, worker,
                    jobs):
        group.add_command(command)
    click.version_option(__version__, prog_name="kalpla", message="%(prog)s %(version)s")(group)
    return group


cli = make_cli()


def main() -> None:
    cli.main(prog_name="kalpla")
