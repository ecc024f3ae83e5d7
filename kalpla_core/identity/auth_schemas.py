"""Request and response bodies of the account, token, session and MFA endpoints."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from kalpla_core.identity.policy import MAX_LENGTH

# Login fields accept any string: a malformed address is just an unknown account (401), and
# validation errors must not answer differently from a wrong password.
_LOGIN_TEXT = validate.Length(max=1024)


class Address(fields.Email):
    """An e-mail address; surrounding white space, as pasted into forms, is dropped."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
        return super()._deserialize(value, attr, data, **kwargs)


class RegisterSchema(Schema):
    email = Address(required=True, validate=validate.Length(max=320))
    password = fields.String(required=True, load_only=True,
                             validate=validate.Length(max=MAX_LENGTH * 4),
                             metadata={"description": "12–128 characters, not a common "
                                                      "password, not the e-mail address."})
    name = fields.String(required=True, validate=validate.Length(1, 200))


class TokenRequestSchema(Schema):
    email = fields.String(required=True, validate=_LOGIN_TEXT)
    password = fields.String(required=True, load_only=True, validate=_LOGIN_TEXT)


class TokenResponseSchema(Schema):
    """Either a token pair, or (``mfa_required``) a challenge to complete at
    ``/auth/token/mfa``, or (``mfa_enrolment_required``) a token that only the TOTP enrolment
    endpoints accept."""

    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer(metadata={"description": "Seconds the token is valid."})
    mfa_required = fields.Boolean()
    mfa_token = fields.String()
    mfa_enrolment_required = fields.Boolean()
    mfa_enrolment_token = fields.String()


class TokenPairSchema(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)


class MFALoginSchema(Schema):
    mfa_token = fields.String(required=True, validate=validate.Length(max=4096))
    code = fields.String(required=True, load_only=True, validate=validate.Length(1, 64),
                         metadata={"description": "A TOTP code or a recovery code."})


class RefreshSchema(Schema):
    refresh_token = fields.String(required=True, load_only=True,
                                  validate=validate.Length(1, 512))


class TokenSchema(Schema):
    token = fields.String(required=True, load_only=True, validate=validate.Length(1, 512))


class EmailSchema(Schema):
    email = Address(required=True, validate=validate.Length(max=320))


class ResetPasswordSchema(Schema):
    token = fields.String(required=True, load_only=True, validate=validate.Length(1, 512))
    password = fields.String(required=True, load_only=True,
                             validate=validate.Length(max=MAX_LENGTH * 4))


class AcceptedSchema(Schema):
    status = fields.String(required=True)
    detail = fields.String(required=True)


class ChangePasswordSchema(Schema):
    current_password = fields.String(required=True, load_only=True, validate=_LOGIN_TEXT)
    new_password = fields.String(required=True, load_only=True,
                                 validate=validate.Length(max=MAX_LENGTH * 4))


class ProfilePatchSchema(Schema):
    name = fields.String(validate=validate.Length(1, 200))


class SessionSchema(Schema):
    id = fields.String(required=True)
    last_used_at = fields.DateTime(required=True,
                                   metadata={"description": "Last login or refresh."})
    expires_at = fields.DateTime(required=True)
    user_agent = fields.String(required=True)
    ip = fields.String(required=True)
    current = fields.Boolean(required=True,
                             metadata={"description": "The session of this request."})


class MFAStatusSchema(Schema):
    totp_enabled = fields.Boolean(required=True)
    recovery_codes_left = fields.Integer(required=True)
    required = fields.Boolean(required=True,
                              metadata={"description": "An institution requires MFA for one "
                                                       "of your roles."})


class TOTPEnrolmentSchema(Schema):
    secret = fields.String(required=True, metadata={"description": "Base32; shown once."})
    otpauth_uri = fields.String(required=True)
    qr_svg = fields.String(required=True, metadata={"description": "The URI as a QR code."})


class TOTPCodeSchema(Schema):
    code = fields.String(required=True, load_only=True, validate=validate.Length(1, 64))


class TOTPConfirmedSchema(TokenResponseSchema):
    recovery_codes = fields.List(fields.String(), required=True,
                                 metadata={"description": "Ten single-use codes, shown once."})


class TOTPDisableSchema(Schema):
    password = fields.String(required=True, load_only=True, validate=_LOGIN_TEXT)
    code = fields.String(required=True, load_only=True, validate=validate.Length(1, 64),
                         metadata={"description": "A TOTP code or a recovery code."})
