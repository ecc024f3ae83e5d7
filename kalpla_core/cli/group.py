"""The ``kalpla`` command group: Flask's CLI (``routes``, ``shell``) with Kalpla's commands
and those plugins add through the ``kalpla_cli_commands`` registration hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, ScriptInfo
from sqlalchemy.exc import OperationalError, ProgrammingError

from kalpla_core.config import ConfigError
from kalpla_core.http.problems import APIError
from kalpla_core.plugins.manager import PluginError

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla

AppFactory = Callable[[], Flask]


class StartupError(click.ClickException):
    """The app cannot start (configuration or plugins): one line, exit status 2."""

    exit_code = 2


def kalpla() -> Kalpla:
    """The Kalpla object of the app the command runs in."""
    return current_app.extensions["kalpla"]


def _flatten(errors: Any, path: str = "") -> list[str]:
    if isinstance(errors, Mapping):
        out = []
        for key, value in errors.items():
            out += _flatten(value, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(errors, list | tuple) and errors and not all(
            isinstance(e, str) for e in errors):
        return [line for e in errors for line in _flatten(e, path)]
    messages = errors if isinstance(errors, list | tuple) else [errors]
    return [f"  {path}: {' '.join(map(str, messages))}"]


def describe_api_error(exc: APIError) -> str:
    """A service error as text: its detail, then one line per invalid field."""
    errors = exc.extra.get("errors")
    return "\n".join([exc.detail, *(_flatten(errors) if errors else [])])


def _database_error(exc: OperationalError | ProgrammingError) -> str:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    return f"Database error: {reason} (has 'kalpla db upgrade' been run?)"


class KalplaGroup(FlaskGroup):
    """Builds the app at most once per invocation, lazily: ``kalpla --help`` and plugin
    commands need it, ``kalpla db --help`` does not."""

    def __init__(self, app_factory: AppFactory, **extra: Any) -> None:
        super().__init__(create_app=self._build_app, add_version_option=False, **extra)
        self.app_factory = app_factory

    def _build_app(self) -> Flask:
        app = self.app_factory()
        for plugin, command in app.extensions["kalpla"].plugins.collect("kalpla_cli_commands"):
            if not isinstance(command, click.Command) or not command.name:
                raise PluginError(f"plugin {plugin!r} returned {command!r} from "
                                  "kalpla_cli_commands, not a named click command")
            if command.name in self.commands or command.name in app.cli.commands:
                raise PluginError(f"plugin {plugin!r} adds the command {command.name!r}, "
                                  "which already exists")
            app.cli.add_command(command)
        return app

    def _load_app(self, ctx: click.Context) -> Flask:
        try:
            return ctx.ensure_object(ScriptInfo).load_app()
        except (ConfigError, PluginError) as exc:
            raise StartupError(str(exc)) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        # Load here first: Flask would print a traceback for a configuration error.
        self._load_app(ctx)
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, PluginError) as exc:
            raise StartupError(str(exc)) from None
        except APIError as exc:
            raise click.ClickException(describe_api_error(exc)) from None
        except (OperationalError, ProgrammingError) as exc:
            raise click.ClickException(_database_error(exc)) from None
