"""Sign in with an OpenID Connect provider: ``/start`` redirects to it, ``/callback`` ends
with a Kalpla session. The flow state travels in an encrypted, short-lived, HttpOnly cookie
that is cleared by the callback whatever its outcome."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Response, after_this_request, current_app, redirect, request
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields

from kalpla_core.context import current_institution, db_session, kalpla, request_meta
from kalpla_core.http.api import Blueprint
from kalpla_core.http.problems import APIError
from kalpla_core.identity.auth_schemas import TokenResponseSchema
from kalpla_core.identity.federation.oidc import FLOW_TTL, OIDCError, OIDCService, complete_login
from kalpla_core.institutions.service import get_by_slug
from kalpla_core.ratelimit import per_ip, rate_limit

blp = Blueprint("oidc", __name__, url_prefix="/api/v1/auth/oidc",
                description="Sign in with an external OpenID Connect provider (Google, "
                            "Facebook, LinkedIn or any OIDC issuer configured in "
                            "KALPLA_OIDC_PROVIDERS).")

RATE = "30/minute"  # per client IP, for each of the two legs
FLOW_COOKIE = "kalpla_oidc"
COOKIE_PATH = "/api/v1/auth/oidc/"


class StartArgs(Schema):
    institution = fields.String(load_default=None, metadata={
        "description": "Slug of the institution an account created by this sign-in joins "
                       "as a student (default: the `Kalpla-Institution` header's, or the "
                       "default institution)."})


class CallbackArgs(Schema):
    class Meta:
        unknown = EXCLUDE  # providers add their own parameters (scope, authuser, iss …)

    state = fields.String(load_default="")
    code = fields.String(load_default=None)
    error = fields.String(load_default=None)


def oidc_service() -> OIDCService:
    """The app's OIDC service, built on first use (discovery happens lazily too)."""
    service = current_app.extensions.get("kalpla_oidc")
    if service is None:
        settings = kalpla().settings
        service = OIDCService(settings.oidc_providers, settings.secret_key, settings.base_url)
        current_app.extensions["kalpla_oidc"] = service
    return service


@blp.route("/<provider>/start")
class Start(MethodView):
    @rate_limit(per_ip(RATE))
    @blp.arguments(StartArgs, location="query")
    @blp.doc(responses={"302": {"description": "Redirect to the provider's sign-in page."},
                        "404": {"description": "No such provider or institution."},
                        "429": {"description": "Rate limited (`rate-limited`)."},
                        "502": {"description": "The provider's discovery document cannot be "
                                               "read (`oidc-provider-unavailable`)."}})
    def get(self, args: dict[str, Any], provider: str) -> Response:
        """Start signing in with ``provider``: redirects to it (state, nonce and PKCE)."""
        slug = args["institution"]
        inst = get_by_slug(db_session(), slug) if slug else current_institution()
        try:
            url, sealed = oidc_service().begin(provider, inst.id)
        except OIDCError as exc:
            raise APIError(exc.status, exc.detail, exc.code) from None
        response = redirect(url, 302)
        response.set_cookie(FLOW_COOKIE, sealed, max_age=FLOW_TTL, path=COOKIE_PATH,
                            secure=kalpla().settings.base_url.startswith("https:"),
                            httponly=True, samesite="Lax")
        response.headers["Cache-Control"] = "no-store"
        return response


@blp.route("/<provider>/callback")
class Callback(MethodView):
    @rate_limit(per_ip(RATE))
    @blp.arguments(CallbackArgs, location="query")
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, description="State, code or ID token refused.")
    @blp.alt_response(403, description="The provider shares no email address, or does not "
                                       "vouch for it (`email-unverified`).")
    @blp.alt_response(429, description="Rate limited (`rate-limited`).")
    @blp.alt_response(502, description="The provider cannot be reached "
                                       "(`oidc-provider-unavailable`).")
    @blp.alt_response(409, description="The address belongs to an account whose own address "
                                       "was never verified (`account-unverified`).")
    def get(self, args: dict[str, Any], provider: str) -> Any:
        """Where the provider sends the browser back: verifies the login, links or creates
        the account (by a verified email; a created account joins the institution chosen at
        the start as a student), and answers like `POST /auth/token`: a token pair, or an
        MFA challenge (or enrolment token) when the account has or needs a second factor."""

        @after_this_request
        def _forget_flow(response: Response) -> Response:
            response.delete_cookie(FLOW_COOKIE, path=COOKIE_PATH)
            response.headers["Cache-Control"] = "no-store"
            return response

        meta = request_meta()
        result = complete_login(
            db_session(), kalpla(), oidc_service(), provider, request.cookies.get(FLOW_COOKIE),
            {k: v for k, v in args.items() if v is not None},
            user_agent=request.user_agent.string, ip=meta["ip"], request_id=meta["request_id"])
        return asdict(result)
