"""``kalpla plugins …``: what is installed and loaded, and enablement per institution."""

from __future__ import annotations

import json
from typing import Any

import click
from flask.cli import AppGroup

from kalpla_core.cli.group import kalpla
from kalpla_core.institutions import service
from kalpla_core.plugins.routes import describe_plugins


class JsonObject(click.ParamType):
    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"not valid JSON: {exc}", param, ctx)
        if not isinstance(loaded, dict):
            self.fail("must be a JSON object, such as '{\"greeting\": \"Hi\"}'", param, ctx)
        return loaded


@click.group(cls=AppGroup)
def plugins() -> None:
    """Installed plugins and their enablement per institution."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_plugins(as_json: bool) -> None:
    """Every installed plugin: version, loaded or not, hooks, enabled institutions."""
    with kalpla().db.session() as session:
        rows = describe_plugins(session, show_institutions=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No plugins are installed.")
    for row in rows:
        state = "loaded" if row["loaded"] else "not loaded"
        click.echo(f"{row['name']} {row['version'] or '?'} ({state})")
        if row["description"]:
            click.echo(f"  {row['description']}")
        if row["error"]:
            click.echo(f"  error: {row['error']}")
        click.echo(f"  hooks: {', '.join(row['hooks']) or '-'}")
        click.echo(f"  enabled for: {', '.join(row['enabled_institutions']) or '-'}")


@plugins.command()
@click.argument("name")
@click.option("--institution", "slug", required=True, metavar="SLUG")
@click.option("--settings", type=JsonObject(), default="{}",
              help="The plugin's settings for the institution, as a JSON object.")
def enable(name: str, slug: str, settings: dict[str, Any]) -> None:
    """Enable plugin NAME for an institution (or change its settings)."""
    k = kalpla()
    with k.db.session() as session:
        inst = service.get_by_slug(session, slug)
        row = service.enable_plugin(session, k, inst, name, settings)
        keys = sorted(row.settings)
    # Setting names only: values may be credentials.
    click.echo(f"Enabled {name} for {slug} (settings: {', '.join(keys) or 'none'})")


@plugins.command()
@click.argument("name")
@click.option("--institution", "slug", required=True, metavar="SLUG")
def disable(name: str, slug: str) -> None:
    """Disable plugin NAME for an institution."""
    k = kalpla()
    with k.db.session() as session:
        service.disable_plugin(session, k, service.get_by_slug(session, slug), name)
    click.echo(f"Disabled {name} for {slug}")
