from __future__ import annotations

from typing import Any

from flask.views import MethodView
from sqlalchemy import select

from kalpla_core.context import (
    current_user,
    db_session,
    has_permission,
    kalpla,
    require_permission,
)
from kalpla_core.http.api import Blueprint
from kalpla_core.http.etag import conditional_get, etag_of, require_if_match, set_etag
from kalpla_core.http.pagination import PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.institutions import service
from kalpla_core.institutions.models import Institution, InstitutionPlugin
from kalpla_core.institutions.schemas import (
    EnabledPluginSchema,
    EnablePluginSchema,
    InstitutionDetailSchema,
    InstitutionPatchSchema,
    InstitutionSchema,
)

blp = Blueprint("institutions", __name__, url_prefix="/api/v1/institutions",
                description="Institutions (tenants) and the plugins each has enabled.")


def _etag(inst: Institution) -> str:
    return etag_of("institution", inst.id, inst.version)


@blp.route("")
class Institutions(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(InstitutionSchema))
    def get(self, args: dict[str, Any]) -> Any:
        """List institutions (public: slug and name)."""
        page = paginate(db_session(), select(Institution),
                        [(Institution.slug, "asc"), (Institution.id, "asc")],
                        args["limit"], args["cursor"])
        return page_response(page)

    @blp.arguments(InstitutionDetailSchema)
    @blp.response(201, InstitutionDetailSchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, data: dict[str, Any]) -> Any:
        """Create an institution (platform admins)."""
        user = current_user()
        if not user or not user.is_platform_admin:
            raise APIError(403, "Only platform admins create institutions.", "forbidden")
        inst = service.create_institution(db_session(), data["slug"], data["name"],
                                          data.get("settings"))
        set_etag(_etag(inst))
        return inst


@blp.route("/<slug>")
class InstitutionItem(MethodView):
    @blp.response(200, InstitutionDetailSchema)
    def get(self, slug: str) -> Any:
        """Read an institution; its settings only for those who may manage it."""
        inst = service.get_by_slug(db_session(), slug)
        conditional_get(_etag(inst))
        if not has_permission("institutions.manage", inst.id):
            return {k: getattr(inst, k) for k in InstitutionSchema().fields}
        return inst

    @blp.arguments(InstitutionPatchSchema)
    @blp.response(200, InstitutionDetailSchema)
    @blp.doc(security=[{"bearer": []}])
    def patch(self, data: dict[str, Any], slug: str) -> Any:
        """Change the name or settings (``If-Match`` required)."""
        session = db_session()
        inst = service.get_by_slug(session, slug)
        require_permission("institutions.manage", inst.id)
        require_if_match(_etag(inst))
        for key, value in data.items():
            setattr(inst, key, value)
        session.flush()
        set_etag(_etag(inst))
        return inst


@blp.route("/<slug>/plugins")
class InstitutionPlugins(MethodView):
    @blp.response(200, EnabledPluginSchema(many=True))
    @blp.doc(security=[{"bearer": []}])
    def get(self, slug: str) -> Any:
        """Plugins enabled for the institution, with their settings."""
        session = db_session()
        inst = service.get_by_slug(session, slug)
        require_permission("plugins.manage", inst.id)
        return session.scalars(select(InstitutionPlugin).where(
            InstitutionPlugin.institution_id == inst.id).order_by(InstitutionPlugin.plugin)).all()


@blp.route("/<slug>/plugins/<plugin>")
class InstitutionPluginItem(MethodView):
    @blp.arguments(EnablePluginSchema)
    @blp.response(200, EnabledPluginSchema)
    @blp.doc(security=[{"bearer": []}])
    def put(self, data: dict[str, Any], slug: str, plugin: str) -> Any:
        """Enable the plugin (or change its settings), validated by the plugin's schema."""
        session = db_session()
        inst = service.get_by_slug(session, slug)
        require_permission("plugins.manage", inst.id)
        return service.enable_plugin(session, kalpla(), inst, plugin, data["settings"])

    @blp.response(204)
    @blp.doc(security=[{"bearer": []}])
    def delete(self, slug: str, plugin: str) -> Any:
        """Disable the plugin for the institution."""
        session = db_session()
        inst = service.get_by_slug(session, slug)
        require_permission("plugins.manage", inst.id)
        service.disable_plugin(session, kalpla(), inst, plugin)
        return None
