"""An example plugin: notes shared within an institution.

It shows every part of the contract a typical plugin uses: metadata, a model and its migration
branch, a permission, per-institution settings, routes, an event hook and the data hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kalpla_core.hookspecs import Permission, PluginEnablementChanged, PluginMeta, hookimpl

KALPLA_PLUGIN = PluginMeta(
    name="example",
    version="0.1.0",
    core_requires=">=0.1,<0.2",
    label="Example notes",
    description="Notes shared within an institution; a template for plugin authors.",
)


class ExampleSettings(Schema):
    greeting = fields.String(load_default="Welcome!", validate=validate.Length(1, 200))
    max_note_length = fields.Integer(load_default=2000, validate=validate.Range(1, 10000))


@hookimpl
def kalpla_models() -> list[type[Any]]:
    from kalpla_example.models import ExampleNote

    return [ExampleNote]


@hookimpl
def kalpla_migrations() -> Path:
    return Path(__file__).parent / "migrations" / "versions"


@hookimpl
def kalpla_permissions() -> list[Permission]:
    return [Permission("example.write_notes", "Write institution notes",
                       ("mentor", "moderator", "admin"))]


@hookimpl
def kalpla_settings_schema() -> type[Schema]:
    return ExampleSettings


@hookimpl
def kalpla_blueprints() -> list[Any]:
    from kalpla_example.routes import blp

    return [blp]


@hookimpl
def kalpla_plugin_enablement_changed(event: PluginEnablementChanged) -> None:
    """When enabled for an institution, post the configured greeting as its first note."""
    if event.plugin != "example" or not event.enabled or event.institution_id is None:
        return
    from kalpla_core.toolkit import kalpla
    from kalpla_example.models import ExampleNote

    with kalpla().db.session() as session:
        exists = session.scalar(select(ExampleNote.id).where(
            ExampleNote.institution_id == event.institution_id,
            ExampleNote.author_id.is_(None)))
        if exists is None:
            session.add(ExampleNote(institution_id=event.institution_id, author_id=None,
                                    body=str(event.settings.get("greeting", "Welcome!"))))


@hookimpl
def kalpla_user_export(session: Session, user_id: str) -> dict[str, Any]:
    from kalpla_example.models import ExampleNote

    notes = session.scalars(select(ExampleNote).where(ExampleNote.author_id == user_id))
    return {"notes": [{"id": n.id, "body": n.body, "created_at": n.created_at.isoformat()}
                      for n in notes]}


@hookimpl
def kalpla_user_erase(session: Session, user_id: str) -> None:
    from kalpla_example.models import ExampleNote

    session.execute(delete(ExampleNote).where(ExampleNote.author_id == user_id))
