"""Institutions and per-institution plugin enablement. No Flask here."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.contract import PluginEnablementChanged
from kalpla_core.http.problems import APIError
from kalpla_core.institutions.models import DEFAULT_INSTITUTION_SLUG, Institution, InstitutionPlugin

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def get_by_slug(session: Session, slug: str) -> Institution:
    inst = session.scalar(select(Institution).where(Institution.slug == slug))
    if inst is None:
        raise APIError(404, f"There is no institution {slug!r}.", "unknown-institution")
    return inst


def create_institution(session: Session, slug: str, name: str,
                       settings: dict[str, Any] | None = None) -> Institution:
    if not SLUG_RE.match(slug):
        raise APIError(422, "The slug must be lower-case letters, digits and dashes.",
                       "validation", errors={"slug": ["Invalid slug."]})
    if session.scalar(select(Institution.id).where(Institution.slug == slug)):
        raise APIError(409, f"The slug {slug!r} is taken.", "slug-taken")
    inst = Institution(slug=slug, name=name, settings=settings or {})
    session.add(inst)
    session.flush()
    return inst


def ensure_default_institution(session: Session) -> Institution:
    inst = session.scalar(select(Institution).where(Institution.slug == DEFAULT_INSTITUTION_SLUG))
    if inst is None:
        inst = create_institution(session, DEFAULT_INSTITUTION_SLUG, "Default institution")
    return inst


def enabled_plugin_names(session: Session, institution_id: str) -> list[str]:
    return list(session.scalars(select(InstitutionPlugin.plugin).where(
        InstitutionPlugin.institution_id == institution_id)))


def enabled_institutions(session: Session, plugin: str) -> list[str]:
    return list(session.scalars(
        select(Institution.slug).join(InstitutionPlugin,
                                      InstitutionPlugin.institution_id == Institution.id)
        .where(InstitutionPlugin.plugin == plugin).order_by(Institution.slug)))


def _validate_settings(schema_cls: type[Schema] | Schema | None, plugin: str,
                       settings: dict[str, Any]) -> dict[str, Any]:
    if schema_cls is None:
        if settings:
            raise APIError(422, f"Plugin {plugin!r} takes no settings.", "validation",
                           errors={"settings": ["This plugin takes no settings."]})
        return {}
    schema = schema_cls() if isinstance(schema_cls, type) else schema_cls
    try:
        loaded = schema.load(settings)
    except ValidationError as exc:
        raise APIError(422, f"The settings of plugin {plugin!r} are invalid.", "validation",
                       errors={"settings": exc.messages}) from None
    return schema.dump(loaded)


def enable_plugin(session: Session, kalpla: Any, institution: Institution, plugin: str,
                  settings: dict[str, Any] | None) -> InstitutionPlugin:
    """Enable (or reconfigure) ``plugin`` for ``institution`` with validated settings."""
    if plugin not in kalpla.plugins.names:
        raise APIError(404, f"Plugin {plugin!r} is not loaded.", "unknown-plugin")
    clean = _validate_settings(kalpla.settings_schemas.get(plugin), plugin, settings or {})
    row = session.scalar(select(InstitutionPlugin).where(
        InstitutionPlugin.institution_id == institution.id, InstitutionPlugin.plugin == plugin))
    if row is None:
        row = InstitutionPlugin(institution_id=institution.id, plugin=plugin, settings=clean)
        session.add(row)
    else:
        row.settings = clean
    session.flush()
    kalpla.emit(session, "kalpla_plugin_enablement_changed", PluginEnablementChanged(
        institution_id=institution.id, occurred_at=datetime.now(UTC).isoformat(),
        plugin=plugin, enabled=True, settings=clean))
    return row


def disable_plugin(session: Session, kalpla: Any, institution: Institution, plugin: str) -> None:
    row = session.scalar(select(InstitutionPlugin).where(
        InstitutionPlugin.institution_id == institution.id, InstitutionPlugin.plugin == plugin))
    if row is None:
        raise APIError(404, f"Plugin {plugin!r} is not enabled for {institution.slug!r}.",
                       "not-enabled")
    session.delete(row)
    session.flush()
    # The plugin itself hears that it was disabled, though it is no longer enabled there.
    event = PluginEnablementChanged(institution_id=institution.id,
                                    occurred_at=datetime.now(UTC).isoformat(),
                                    plugin=plugin, enabled=False)
    kalpla.emit(session, "kalpla_plugin_enablement_changed", event, only=[plugin])


def plugin_settings(session: Session, institution_id: str, plugin: str) -> dict[str, Any] | None:
    """The plugin's settings for the institution, or None when it is not enabled there."""
    return session.scalar(select(InstitutionPlugin.settings).where(
        InstitutionPlugin.institution_id == institution_id, InstitutionPlugin.plugin == plugin))
