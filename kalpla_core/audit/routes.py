"""Reading the audit log. There is deliberately no route that changes or deletes an event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import request
from flask.views import MethodView
from sqlalchemy import Select, select

from kalpla_core.audit.models import AuditEvent
from kalpla_core.audit.schemas import AuditEventArgs, AuditEventSchema
from kalpla_core.context import (
    INSTITUTION_HEADER,
    current_institution,
    current_principal,
    db_session,
    has_permission,
    require_permission,
)
from kalpla_core.http.api import Blueprint
from kalpla_core.http.pagination import page_of, page_response, paginate
from kalpla_core.institutions.service import get_by_slug

blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit-events",
                description="The append-only log of security events.")


def events_query(institution_id: str | None, action: str | None = None,
                 actor_id: str | None = None,
                 since: datetime | None = None) -> Select[tuple[AuditEvent]]:
    """Events matching the filters; every institution's when ``institution_id`` is None."""
    stmt = select(AuditEvent)
    if institution_id is not None:
        stmt = stmt.where(AuditEvent.institution_id == institution_id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if actor_id:
        stmt = stmt.where(AuditEvent.actor_id == actor_id)
    if since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= since)
    return stmt


def _scope(slug: str | None) -> str | None:
    """The institution whose events the caller may read (None: all, for platform admins)."""
    current_principal()  # 401 before anything else for anonymous callers
    if slug is None and has_permission("audit.read", None):
        return None
    inst = get_by_slug(db_session(), slug) if slug else current_institution()
    require_permission("audit.read", inst.id)
    return inst.id


@blp.route("")
class AuditEvents(MethodView):
    @blp.arguments(AuditEventArgs, location="query")
    @blp.response(200, page_of(AuditEventSchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any]) -> Any:
        """Security events, newest first (``audit.read`` in the institution; platform admins
        read every institution's)."""
        institution_id = _scope(args["institution"] or request.headers.get(INSTITUTION_HEADER))
        stmt = events_query(institution_id, args["action"], args["actor_id"], args["since"])
        page = paginate(db_session(), stmt,
                        [(AuditEvent.occurred_at, "desc"), (AuditEvent.id, "desc")],
                        args["limit"], args["cursor"])
        return page_response(page)
