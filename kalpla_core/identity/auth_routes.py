"""``/api/v1/auth``: registration, e-mail verification, password reset, tokens and logout.
Thin: the work is in :mod:`accounts`, :mod:`sessions` and :mod:`mfa`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import request
from flask.views import MethodView

from kalpla_core.context import current_institution, current_principal, db_session, kalpla
from kalpla_core.context import request_meta as _request_meta
from kalpla_core.http.api import Blueprint
from kalpla_core.identity import accounts, mfa
from kalpla_core.identity.auth_schemas import (
    AcceptedSchema,
    EmailSchema,
    MFALoginSchema,
    RefreshSchema,
    RegisterSchema,
    ResetPasswordSchema,
    TokenPairSchema,
    TokenRequestSchema,
    TokenResponseSchema,
    TokenSchema,
)
from kalpla_core.identity.schemas import UserSchema
from kalpla_core.identity.sessions import Client, end_session, refresh_session
from kalpla_core.ratelimit import per_account, per_ip, rate_limit

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth",
                description="Accounts, tokens and sessions. Every endpoint here is rate "
                            "limited per client IP, and those naming an account per account "
                            "too (`RateLimit-*` headers; 429 with `Retry-After`).")

# Token responses must not be stored by caches or browsers (RFC 6749, section 5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def client() -> Client:
    meta = _request_meta()
    return Client(ip=meta["ip"], user_agent=(request.user_agent.string or "")[:300],
                  request_id=meta["request_id"])


def accepted(detail: str) -> dict[str, str]:
    return {"status": "accepted", "detail": detail}


@blp.route("/register")
class Register(MethodView):
    @rate_limit(per_ip("10/hour"))
    @blp.arguments(RegisterSchema)
    @blp.response(201, UserSchema)
    @blp.alt_response(409, description="The e-mail address is taken (`email-taken`).")
    @blp.alt_response(422, description="Invalid fields, or the password breaks the policy.")
    def post(self, body: dict[str, Any]) -> Any:
        """Create an account and mail a verification link.

        The account becomes a student of the institution named by `Kalpla-Institution` (the
        default institution without the header). It can log in once the address is
        verified."""
        return accounts.register(db_session(), kalpla(), email=body["email"],
                                 password=body["password"], name=body["name"],
                                 institution_id=current_institution().id, client=client())


@blp.route("/verify-email")
class VerifyEmail(MethodView):
    @rate_limit(per_ip("20/minute"))
    @blp.arguments(TokenSchema)
    @blp.response(204)
    @blp.alt_response(400, description="Invalid, expired or used token (`invalid-token`).")
    def post(self, body: dict[str, Any]) -> None:
        """Confirm an e-mail address with the single-use token from the verification mail."""
        accounts.verify_email(db_session(), body["token"], client())


@blp.route("/verify-email/resend")
class ResendVerification(MethodView):
    @rate_limit(per_ip("10/hour"), per_account("3/hour"))
    @blp.arguments(EmailSchema)
    @blp.response(202, AcceptedSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Mail a new verification link. The answer is the same whether or not an unverified
        account uses the address."""
        accounts.resend_verification(db_session(), kalpla(), body["email"], client())
        return accepted("If an unverified account uses this address, a new link is on its way.")


@blp.route("/password/forgot")
class ForgotPassword(MethodView):
    @rate_limit(per_ip("10/hour"), per_account("3/hour"))
    @blp.arguments(EmailSchema)
    @blp.response(202, AcceptedSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Mail a password-reset link (valid one hour, single use). The answer is the same
        whether or not an account uses the address."""
        accounts.forgot_password(db_session(), kalpla(), body["email"], client())
        return accepted("If an account uses this address, a reset link is on its way.")


@blp.route("/password/reset")
class ResetPassword(MethodView):
    @rate_limit(per_ip("10/minute"))
    @blp.arguments(ResetPasswordSchema)
    @blp.response(204)
    @blp.alt_response(400, description="Invalid, expired or used token (`invalid-token`).")
    @blp.alt_response(422, description="The new password breaks the policy.")
    def post(self, body: dict[str, Any]) -> None:
        """Set a new password with the token from the reset mail. Every session of the
        account ends, and its address counts as verified."""
        accounts.reset_password(db_session(), kalpla(), body["token"], body["password"],
                                client())


@blp.route("/token")
class Token(MethodView):
    @rate_limit(per_ip("30/minute"), per_account("10/minute"))
    @blp.arguments(TokenRequestSchema)
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, description="Wrong e-mail or password, or the account is disabled "
                                       "(one answer for all).")
    @blp.alt_response(403, description="The address is not verified (`email-not-verified`).")
    @blp.alt_response(429, description="Rate limited (`rate-limited`) or the account is "
                                       "locked after repeated failures (`login-locked`).")
    def post(self, body: dict[str, Any]) -> Any:
        """Log in with e-mail and password.

        Answers a token pair; or, when the account has two-step verification,
        `{"mfa_required": true, "mfa_token": …}` to complete at `/auth/token/mfa`; or, when
        an institution requires MFA for the user's role and none is set up,
        `{"mfa_enrolment_required": true, "mfa_enrolment_token": …}`, a token that only
        `POST /me/mfa/totp` and `/me/mfa/totp/confirm` accept."""
        result = accounts.password_login(db_session(), kalpla(), body["email"],
                                         body["password"], client())
        return asdict(result), NO_STORE


@blp.route("/token/mfa")
class TokenMFA(MethodView):
    @rate_limit(per_ip("30/minute"))
    @blp.arguments(MFALoginSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Invalid challenge, or wrong or reused code.")
    def post(self, body: dict[str, Any]) -> Any:
        """Complete a login with the challenge token and a TOTP code or a recovery code
        (each code works once)."""
        pair = mfa.complete_login(db_session(), kalpla(), body["mfa_token"], body["code"],
                                  client())
        return asdict(pair), NO_STORE


@blp.route("/refresh")
class Refresh(MethodView):
    @rate_limit(per_ip("60/minute"))
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Invalid, expired or revoked refresh token.")
    @blp.alt_response(403, description="MFA enrolment is now required "
                                       "(`mfa-enrolment-required`).")
    def post(self, body: dict[str, Any]) -> Any:
        """Trade a refresh token for a new pair (the old refresh token stops working).
        Presenting an already-used refresh token revokes its whole session."""
        session, k, c = db_session(), kalpla(), client()
        pair = refresh_session(session, k, body["refresh_token"], user_agent=c.user_agent,
                               ip=c.ip, request_id=c.request_id,
                               gate=lambda user: mfa.enrolment_gate(session, k, user))
        return asdict(pair), NO_STORE


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(204)
    @blp.doc(security=[{"bearer": []}])
    def post(self) -> None:
        """End the session of the access token presented (its refresh token stops working;
        the access token itself expires within minutes)."""
        principal = current_principal()
        assert principal is not None
        if principal.method == "token" and principal.credential_id:
            meta = client()
            end_session(db_session(), principal.user, principal.credential_id, ip=meta.ip,
                        request_id=meta.request_id)
