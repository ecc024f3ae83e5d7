"""Institution API keys (admins), and the per-key quota applied to requests made with them."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, request
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from kalpla_core.context import (
    current_principal,
    current_user,
    db_session,
    kalpla,
    request_meta,
    require_permission,
)
from kalpla_core.http.api import Blueprint
from kalpla_core.http.pagination import PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.identity import apikeys
from kalpla_core.identity.models import APIKey
from kalpla_core.identity.quotas import QuotaCounter
from kalpla_core.institutions.models import Institution
from kalpla_core.institutions.service import get_by_slug
from kalpla_core.ratelimit import limiter_of

blp = Blueprint("api_keys", __name__, url_prefix="/api/v1/institutions/<slug>/api-keys",
                description="API keys of an institution: scoped, rate-limited, shown once.")

_PLANS_DOC = "; ".join(f"`{p.name}`: {p.description}" for p in apikeys.RATE_PLANS.values())


class APIKeySchema(Schema):
    id = fields.String(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(1, 200))
    prefix = fields.String(dump_only=True, metadata={
        "description": "The public part of the key (`klp_<prefix>_…`), to recognise it."})
    scopes = fields.List(fields.String(validate=validate.Length(1, 128)), load_default=list,
                         validate=validate.Length(max=200), metadata={
                             "description": "Permissions the key acts with; each must be a "
                                            "registered permission you hold here."})
    rate_plan = fields.String(load_default="standard",
                              validate=validate.OneOf(list(apikeys.RATE_PLANS)),
                              metadata={"description": f"The key's quota. {_PLANS_DOC}."})
    created_by = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    revoked_at = fields.DateTime(dump_only=True, allow_none=True)
    last_used_at = fields.DateTime(dump_only=True, allow_none=True)
    usage_count = fields.Integer(dump_only=True)


class CreatedAPIKeySchema(APIKeySchema):
    key = fields.String(dump_only=True, metadata={
        "description": "The key itself, shown only in this answer: send it as "
                       "`Authorization: Bearer <key>` or `X-API-Key: <key>`."})


class APIKeyListArgs(PageArgs):
    include_revoked = fields.Boolean(load_default=False)


def _institution(slug: str) -> Institution:
    inst = get_by_slug(db_session(), slug)
    require_permission("apikeys.manage", inst.id)
    return inst


@blp.route("")
class APIKeys(MethodView):
    @blp.arguments(APIKeyListArgs, location="query")
    @blp.response(200, page_of(APIKeySchema))
    @blp.doc(security=[{"bearer": []}])
    def get(self, args: dict[str, Any], slug: str) -> Any:
        """The institution's keys, newest first, without their secrets (``apikeys.manage``)."""
        inst = _institution(slug)
        page = paginate(db_session(), apikeys.keys_query(inst.id, args["include_revoked"]),
                        [(APIKey.created_at, "desc"), (APIKey.id, "desc")],
                        args["limit"], args["cursor"])
        return page_response(page)

    @blp.arguments(APIKeySchema)
    @blp.response(201, CreatedAPIKeySchema)
    @blp.doc(security=[{"bearer": []}])
    def post(self, data: dict[str, Any], slug: str) -> Any:
        """Create a key (``apikeys.manage``). The key is in this answer only; it is stored
        hashed and cannot be shown again."""
        inst = _institution(slug)
        principal = current_principal()
        assert principal is not None
        if principal.method == "api_key":
            raise APIError(403, "API keys cannot create API keys.", "forbidden")
        session = db_session()
        created = apikeys.create_key(session, kalpla(), inst, principal.user, data["name"],
                                     data["scopes"], data["rate_plan"], **request_meta())
        return created, 201, {"Cache-Control": "no-store"}


@blp.route("/<key_id>")
class APIKeyItem(MethodView):
    @blp.response(200, APIKeySchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self, slug: str, key_id: str) -> Any:
        """One key, without its secret (``apikeys.manage``)."""
        inst = _institution(slug)
        return apikeys.get_key(db_session(), inst.id, key_id)

    @blp.response(204)
    @blp.doc(security=[{"bearer": []}])
    def delete(self, slug: str, key_id: str) -> Any:
        """Revoke the key: requests made with it are refused from now on."""
        inst = _institution(slug)
        user = current_user()
        assert user is not None
        apikeys.revoke_key(db_session(), inst.id, key_id, user.id, **request_meta())
        return None


# --- per-key quotas -------------------------------------------------------------------------

def init_api_key_quotas(app: Flask) -> None:
    """Count every request made with an API key against its plan, in the app's rate-limit
    store: 429 problem+json with ``Retry-After`` beyond it, ``RateLimit-*`` headers on every
    answer (those of the nearer limit when the route has its own)."""
    counter = QuotaCounter(lambda: limiter_of(app).limiter)

    @app.before_request
    def _count() -> None:
        if apikeys.presented_key(request.headers) is None:
            return
        principal = current_principal(required=False)  # a bad key is answered 401 here
        if principal is None or principal.method != "api_key":
            return
        row = db_session().get(APIKey, principal.credential_id)  # already in the session
        plan = apikeys.RATE_PLANS.get(row.rate_plan) if row else None
        state = counter.hit(row.id, plan) if row and plan else None
        if state is None:
            return
        g.api_key_quota = state
        if not state.allowed:
            raise APIError(429, f"The API key's quota of {state.plan.limit} requests per "
                           f"{state.plan.window} seconds is used up; retry later.",
                           "rate-limited", headers=state.headers(), retry_after=state.reset)

    @app.after_request
    def _headers(response: Response) -> Response:
        state = g.pop("api_key_quota", None)
        route_remaining = response.headers.get("RateLimit-Remaining", "")
        if state is not None and not (route_remaining.isdigit()
                                      and int(route_remaining) < state.remaining):
            response.headers.update(state.headers())
        return response
