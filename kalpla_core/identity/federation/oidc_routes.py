"""Sign in with an OpenID Connect provider: ``/start`` redirects to it, ``/callback`` ends
with a Kalpla session. The flow state travels in an encrypted, short-lived, HttpOnly cookie
that is cleared by the callback whatever its outcome."""

from __future__ import annotations

from typing import Any

from flask import Response, after_this_request, current_app, redirect, request
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields

from kalpla_core.audit.service import record
from kalpla_core.context import db_session, kalpla, request_meta
from kalpla_core.http.api import Blueprint
from kalpla_core.http.problems import APIError
from kalpla_core.identity.federation.accounts import LinkRefused, resolve_user
from kalpla_core.identity.federation.oidc import FLOW_TTL, OIDCError, OIDCService
from kalpla_core.identity.sessions import start_session

blp = Blueprint("oidc", __name__, url_prefix="/api/v1/auth/oidc",
                description="Sign in with an external OpenID Connect provider (Google, "
                            "Facebook, LinkedIn or any OIDC issuer configured in "
                            "KALPLA_OIDC_PROVIDERS).")

FLOW_COOKIE = "kalpla_oidc"
COOKIE_PATH = "/api/v1/auth/oidc/"


class CallbackArgs(Schema):
    class Meta:
        unknown = EXCLUDE  # providers add their own parameters (scope, authuser, iss …)

    state = fields.String(load_default="")
    code = fields.String(load_default=None)
    error = fields.String(load_default=None)


class TokenPairSchema(Schema):
    access_token = fields.String(dump_only=True)
    refresh_token = fields.String(dump_only=True)
    expires_in = fields.Integer(dump_only=True)
    token_type = fields.String(dump_only=True)


def oidc_service() -> OIDCService:
    """The app's OIDC service, built on first use (discovery happens lazily too)."""
    service = current_app.extensions.get("kalpla_oidc")
    if service is None:
        settings = kalpla().settings
        service = OIDCService(settings.oidc_providers, settings.secret_key, settings.base_url)
        current_app.extensions["kalpla_oidc"] = service
    return service


def _problem(exc: OIDCError | LinkRefused) -> APIError:
    return APIError(exc.status, exc.detail, exc.code)


@blp.route("/<provider>/start")
class Start(MethodView):
    @blp.doc(responses={"302": {"description": "Redirect to the provider's sign-in page."},
                        "404": {"description": "No such provider."}})
    def get(self, provider: str) -> Response:
        """Start signing in with ``provider``: redirects to it (state, nonce and PKCE)."""
        try:
            url, sealed = oidc_service().begin(provider)
        except OIDCError as exc:
            raise _problem(exc) from None
        response = redirect(url, 302)
        response.set_cookie(FLOW_COOKIE, sealed, max_age=FLOW_TTL, path=COOKIE_PATH,
                            secure=kalpla().settings.base_url.startswith("https:"),
                            httponly=True, samesite="Lax")
        response.headers["Cache-Control"] = "no-store"
        return response


@blp.route("/<provider>/callback")
class Callback(MethodView):
    @blp.arguments(CallbackArgs, location="query")
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="State, code or ID token refused.")
    @blp.alt_response(409, description="The email belongs to an account that cannot be "
                                       "linked (unverified address).")
    def get(self, args: dict[str, Any], provider: str) -> Any:
        """Where the provider sends the browser back: verifies the login, links or creates
        the account (by a verified email), and answers a Kalpla token pair."""

        @after_this_request
        def _forget_flow(response: Response) -> Response:
            response.delete_cookie(FLOW_COOKIE, path=COOKIE_PATH)
            response.headers["Cache-Control"] = "no-store"
            return response

        session = db_session()
        meta = request_meta()
        try:
            identity = oidc_service().finish(provider, request.cookies.get(FLOW_COOKIE),
                                             {k: v for k, v in args.items() if v is not None})
            user = resolve_user(session, kalpla(), identity, ip=meta["ip"],
                                request_id=meta["request_id"])
        except (OIDCError, LinkRefused) as exc:
            if exc.status != 404:
                # The request's unit of work rolls back on errors: keep the audit record.
                record(session, "login.failed", target_type="oidc", target_id=provider,
                       ip=meta["ip"], request_id=meta["request_id"],
                       method=f"oidc:{provider}", reason=exc.code)
                session.commit()
            raise _problem(exc) from None
        return start_session(session, kalpla(), user, method=f"oidc:{provider}",
                             user_agent=request.user_agent.string, ip=meta["ip"],
                             request_id=meta["request_id"])
