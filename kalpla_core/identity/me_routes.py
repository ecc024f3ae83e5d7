"""``/api/v1/me/…``: the signed-in user's profile, password, sessions and two-step
verification. Every endpoint acts on the caller's own account only."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import request
from flask.views import MethodView

from kalpla_core.context import current_principal, current_user, db_session, kalpla
from kalpla_core.http.api import Blueprint
from kalpla_core.http.etag import etag_of, require_if_match, set_etag
from kalpla_core.http.pagination import PageArgs, page_of, page_response, paginate
from kalpla_core.http.problems import APIError
from kalpla_core.identity import accounts, mfa
from kalpla_core.identity.auth_routes import NO_STORE, client
from kalpla_core.identity.auth_schemas import (
    ChangePasswordSchema,
    MFAStatusSchema,
    ProfilePatchSchema,
    SessionSchema,
    TokenPairSchema,
    TOTPCodeSchema,
    TOTPConfirmedSchema,
    TOTPDisableSchema,
    TOTPEnrolmentSchema,
)
from kalpla_core.identity.authn import Principal, bearer_token
from kalpla_core.identity.models import RefreshToken, User
from kalpla_core.identity.schemas import UserSchema
from kalpla_core.identity.sessions import end_session, live_sessions, start_session
from kalpla_core.ratelimit import per_ip, per_user, rate_limit

blp = Blueprint("me", __name__, url_prefix="/api/v1/me",
                description="The signed-in user's profile, password, sessions and MFA.")

BEARER = [{"bearer": []}]


def profile_etag(user: User) -> str:
    """Changes whenever the representation at ``GET /me`` does."""
    verified = user.email_verified_at.isoformat() if user.email_verified_at else ""
    return etag_of("user", user.id, f"{user.email}|{user.name}|{verified}|"
                                    f"{user.is_platform_admin}")


def session_principal() -> Principal:
    """The caller, signed in with one of our session tokens: API keys and other credentials
    cannot change the password, MFA or sessions of the user behind them (403)."""
    principal = current_principal()
    assert principal is not None
    if principal.method != "token" or not principal.credential_id:
        raise APIError(403, "This needs a signed-in session, not an API key or another "
                            "credential.", "session-required")
    return principal


@blp.route("")
class Profile(MethodView):
    @rate_limit(per_user("30/minute"))
    @blp.arguments(ProfilePatchSchema)
    @blp.response(200, UserSchema)
    @blp.alt_response(412, description="`If-Match` names an older version.")
    @blp.doc(security=BEARER)
    def patch(self, body: dict[str, Any]) -> Any:
        """Change the profile (the name). With `If-Match` (the `ETag` of `GET /me`) a stale
        write is refused with 412; the address cannot be changed here."""
        user = session_principal().user
        if request.headers.get("If-Match"):
            require_if_match(profile_etag(user))
        accounts.update_profile(db_session(), user, name=body.get("name"), client=client())
        set_etag(profile_etag(user))
        return user


@blp.route("/password")
class Password(MethodView):
    @rate_limit(per_user("5/minute"), per_ip("20/minute"))
    @blp.arguments(ChangePasswordSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(403, description="The current password is wrong.")
    @blp.alt_response(422, description="The new password breaks the policy.")
    @blp.doc(security=BEARER)
    def post(self, body: dict[str, Any]) -> Any:
        """Change the password. Every session ends (other devices are signed out); the
        answer is a fresh token pair for this client."""
        user = session_principal().user
        pair = accounts.change_password(db_session(), kalpla(), user, body["current_password"],
                                        body["new_password"], client())
        return asdict(pair), NO_STORE


@blp.route("/sessions")
class Sessions(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(SessionSchema))
    @blp.doc(security=BEARER)
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's live sessions, most recently used first."""
        principal = session_principal()
        page = paginate(db_session(), live_sessions(principal.user.id),
                        [(RefreshToken.created_at, "desc"), (RefreshToken.id, "desc")],
                        args["limit"], args["cursor"])
        page.items = [{"id": row.family_id, "last_used_at": row.created_at,
                       "expires_at": row.expires_at, "user_agent": row.user_agent,
                       "ip": row.ip, "current": row.family_id == principal.credential_id}
                      for row in page.items]
        return page_response(page)


@blp.route("/sessions/<session_id>")
class SessionItem(MethodView):
    @blp.response(204)
    @blp.alt_response(404, description="No such session of the caller.")
    @blp.doc(security=BEARER)
    def delete(self, session_id: str) -> None:
        """Sign one session out (its refresh token stops working)."""
        principal = session_principal()
        meta = client()
        end_session(db_session(), principal.user, session_id, ip=meta.ip,
                    request_id=meta.request_id)


@blp.route("/mfa")
class MFAStatus(MethodView):
    @blp.response(200, MFAStatusSchema)
    @blp.doc(security=BEARER)
    def get(self) -> Any:
        """Whether TOTP is on, how many recovery codes are left, and whether an institution
        requires MFA for one of the caller's roles."""
        user = current_user()
        assert user is not None
        return asdict(mfa.status(db_session(), user))


def enrolling_user() -> tuple[User, bool]:
    """The caller of an enrolment endpoint, and whether they came with an enrolment token
    (issued at login when policy requires MFA) rather than a session."""
    token = bearer_token(request.headers)
    session, k = db_session(), kalpla()
    if token and mfa.token_type(session, k, token) == mfa.ENROLMENT_TYP:
        return mfa.user_from_token(session, k, token, mfa.ENROLMENT_TYP), True
    return session_principal().user, False


@blp.route("/mfa/totp")
class TOTP(MethodView):
    @rate_limit(per_user("10/minute"), per_ip("30/minute"))
    @blp.response(201, TOTPEnrolmentSchema)
    @blp.alt_response(409, description="TOTP is already on (`mfa-already-enabled`).")
    @blp.doc(security=BEARER)
    def post(self) -> Any:
        """Start TOTP enrolment: a new secret, its `otpauth://` URI and a QR code (SVG), shown
        this once. Accepts a session or an enrolment token."""
        user, _ = enrolling_user()
        enrolment = mfa.begin_enrolment(db_session(), kalpla(), user, client())
        return asdict(enrolment), NO_STORE

    @rate_limit(per_user("5/minute"), per_ip("20/minute"))
    @blp.arguments(TOTPDisableSchema)
    @blp.response(204)
    @blp.alt_response(403, description="Wrong password or code, or MFA is required by an "
                                       "institution.")
    @blp.doc(security=BEARER)
    def delete(self, body: dict[str, Any]) -> None:
        """Turn TOTP off, with the password and a TOTP or recovery code."""
        user = session_principal().user
        accounts.disable_mfa(db_session(), kalpla(), user, body["password"], body["code"],
                             client())


@blp.route("/mfa/totp/confirm")
class TOTPConfirm(MethodView):
    @rate_limit(per_user("10/minute"), per_ip("30/minute"))
    @blp.arguments(TOTPCodeSchema)
    @blp.response(200, TOTPConfirmedSchema)
    @blp.alt_response(422, description="Wrong code.")
    @blp.doc(security=BEARER)
    def post(self, body: dict[str, Any]) -> Any:
        """Turn TOTP on with a first code from the device. Answers ten single-use recovery
        codes, shown this once; with an enrolment token, also the session's token pair."""
        user, enrolling = enrolling_user()
        session, k, meta = db_session(), kalpla(), client()
        out: dict[str, Any] = {
            "recovery_codes": mfa.confirm_enrolment(session, k, user, body["code"], meta)}
        if enrolling:
            out.update(asdict(start_session(session, k, user, method="password+totp",
                                            user_agent=meta.user_agent, ip=meta.ip,
                                            request_id=meta.request_id)))
        return out, NO_STORE
