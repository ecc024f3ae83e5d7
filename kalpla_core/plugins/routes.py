from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from kalpla_core.context import current_user, db_session, kalpla
from kalpla_core.http.api import Blueprint
from kalpla_core.institutions.service import enabled_institutions

blp = Blueprint("plugins", __name__, url_prefix="/api/v1/plugins",
                description="Installed plugins and where they are enabled.")


class PluginInfoSchema(Schema):
    name = fields.String()
    version = fields.String(allow_none=True)
    label = fields.String()
    description = fields.String()
    core_requires = fields.String(allow_none=True)
    requires = fields.List(fields.String())
    hooks = fields.List(fields.String())
    loaded = fields.Boolean()
    error = fields.String(allow_none=True)
    enabled_institutions = fields.List(fields.String(), allow_none=True, metadata={
        "description": "Slugs of institutions that enabled it (platform admins only)."})


def describe_plugins(session: Any, show_institutions: bool) -> list[dict[str, Any]]:
    out = []
    for info in kalpla().plugins.describe_available():
        info["enabled_institutions"] = (enabled_institutions(session, info["name"])
                                        if show_institutions else None)
        out.append(info)
    return out


@blp.route("")
class Plugins(MethodView):
    @blp.response(200, PluginInfoSchema(many=True))
    def get(self) -> Any:
        """Every installed plugin: version, hooks, loaded or not (one short list, unpaginated)."""
        user = current_user(required=False)
        return describe_plugins(db_session(), bool(user and user.is_platform_admin))
