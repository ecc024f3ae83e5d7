"""Plugin models and routes: checked and mounted once, gated per institution on each request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, request

from kalpla_core.db import Base
from kalpla_core.http.problems import APIError
from kalpla_core.plugins.manager import CORE, PluginError, PluginManager

if TYPE_CHECKING:
    from kalpla_core.app import Kalpla
    from kalpla_core.http.api import Api


def core_tables() -> set[str]:
    """Tables owned by the core: every table on the metadata whose model is in kalpla_core."""
    out = set()
    for mapper in Base.registry.mappers:
        if mapper.class_.__module__.startswith("kalpla_core."):
            out.add(mapper.local_table.name)
    return out


def register_models(pm: PluginManager) -> None:
    """Check each plugin's models: tables named ``<plugin>_…``, foreign keys only to core
    tables or the plugin's own."""
    core = core_tables()
    for plugin, model in pm.collect("kalpla_models"):
        if plugin == CORE:
            continue
        table = getattr(model, "__table__", None)
        if table is None or table.metadata is not Base.metadata:
            raise PluginError(f"plugin {plugin!r}: model {model!r} is not on kalpla_core.db.Base")
        if not table.name.startswith(f"{plugin}_"):
            raise PluginError(f"plugin {plugin!r}: table {table.name!r} must be named "
                              f"'{plugin}_…'")
        for fk in table.foreign_keys:
            target = fk.target_fullname.split(".")[0]
            if target not in core and not target.startswith(f"{plugin}_"):
                raise PluginError(f"plugin {plugin!r}: table {table.name!r} has a foreign key "
                                  f"to {target!r}, which is neither a core table nor its own")


ANY_INSTITUTION = "kalpla_any_institution"


def any_institution(view: Any) -> Any:
    """Mark a plugin view (function or MethodView class) as called from outside any
    institution: a provider's webhook or a media server's callback, which cannot send the
    ``Kalpla-Institution`` header. The core then skips its per-institution check for it; the
    view must find its object's institution and call ``require_enabled`` itself."""
    setattr(view, ANY_INSTITUTION, True)
    return view


def _any_institution(view: Any) -> bool:
    return bool(getattr(view, ANY_INSTITUTION, False)
                or getattr(getattr(view, "view_class", None), ANY_INSTITUTION, False))


def init_plugin_routes(app: Flask, api: Api, kalpla: Kalpla) -> None:
    for plugin, bp in kalpla.plugins.collect("kalpla_blueprints"):
        if plugin == CORE:
            continue
        if bp.name != plugin and not bp.name.startswith(f"{plugin}_"):
            raise PluginError(f"plugin {plugin!r}: blueprint {bp.name!r} must be named "
                              f"{plugin!r} or '{plugin}_…'")
        if bp.name in app.blueprints:
            raise PluginError(f"plugin {plugin!r}: blueprint name {bp.name!r} is already "
                              "taken by the core or another plugin")
        api.register_blueprint(bp, url_prefix=f"/api/v1/{plugin}{bp.url_prefix or ''}")
        kalpla.plugin_blueprints[bp.name] = plugin

    @app.before_request
    def _plugin_enabled() -> Any:
        plugin = kalpla.plugin_blueprints.get(request.blueprint or "")
        if plugin is None or request.method == "OPTIONS":
            return None
        if _any_institution(app.view_functions.get(request.endpoint or "")):
            return None  # the view finds its object's institution and checks it itself
        from kalpla_core.context import current_institution, db_session

        inst = current_institution()
        if plugin not in kalpla.enabled_plugins(db_session(), inst.id):
            raise APIError(404, f"Nothing is found at {request.path}.")
        return None
