"""``kalpla institutions …``."""

from __future__ import annotations

from collections import defaultdict

import click
from flask.cli import AppGroup
from sqlalchemy import select

from kalpla_core.cli.group import kalpla
from kalpla_core.institutions import service
from kalpla_core.institutions.models import Institution, InstitutionPlugin


@click.group(cls=AppGroup)
def institutions() -> None:
    """Institutions (tenants)."""


@institutions.command("list")
def list_institutions() -> None:
    """Every institution with the plugins it has enabled."""
    with kalpla().db.session() as session:
        rows = session.execute(select(Institution.id, Institution.slug, Institution.name)
                               .order_by(Institution.slug)).all()
        enabled: dict[str, list[str]] = defaultdict(list)
        for inst_id, plugin in session.execute(select(
                InstitutionPlugin.institution_id, InstitutionPlugin.plugin)
                .order_by(InstitutionPlugin.plugin)):
            enabled[inst_id].append(plugin)
    if not rows:
        click.echo("No institutions yet; 'kalpla db upgrade' creates the default one.")
    width = max((len(r.slug) for r in rows), default=0)
    for inst_id, slug, name in rows:
        plugins = ", ".join(enabled[inst_id]) or "-"
        click.echo(f"{slug:<{width}}  {name}  (plugins: {plugins})")


@institutions.command()
@click.argument("slug")
@click.option("--name", required=True, help="Display name.")
def create(slug: str, name: str) -> None:
    """Create an institution; SLUG is lower-case letters, digits and dashes."""
    with kalpla().db.session() as session:
        service.create_institution(session, slug, name)
    click.echo(f"Created institution {slug} ({name})")
