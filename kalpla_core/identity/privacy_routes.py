"""The caller's own data: export everything, or delete the account."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from kalpla_core.audit.service import record
from kalpla_core.context import current_principal, db_session, kalpla, request_meta
from kalpla_core.http.api import Blueprint
from kalpla_core.http.problems import APIError
from kalpla_core.identity import privacy
from kalpla_core.identity.auth_routes import client
from kalpla_core.identity.authn import Principal

blp = Blueprint("privacy", __name__, url_prefix="/api/v1/me",
                description="Your data: export it, or delete your account.")

_records = fields.List(fields.Dict(), dump_only=True)


class UserExportSchema(Schema):
    format = fields.String(dump_only=True, metadata={"description": privacy.EXPORT_FORMAT})
    exported_at = fields.String(dump_only=True)
    profile = fields.Dict(dump_only=True)
    memberships = _records
    sessions = _records
    mfa = fields.Dict(dump_only=True)
    identities = _records
    email_tokens = _records
    api_keys = _records
    audit_events = _records
    jobs = _records
    mail = _records
    plugins = fields.Dict(keys=fields.String(), dump_only=True, metadata={
        "description": "Each plugin's section (hook `kalpla_user_export`), by plugin name."})


class DeleteAccountSchema(Schema):
    password = fields.String(load_default=None, validate=validate.Length(max=1024), metadata={
        "description": "Your password; not needed within minutes of a login."})


def personal_principal() -> Principal:
    """The caller, if they act as themselves: an API key acts for an institution, never on
    its creator's personal account."""
    principal = current_principal()
    assert principal is not None
    if principal.method == "api_key":
        raise APIError(403, "API keys cannot act on their creator's personal account.",
                       "forbidden")
    return principal


@blp.route("/export")
class Export(MethodView):
    @blp.response(200, UserExportSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self) -> Any:
        """Everything stored about you, core and plugins, as one JSON document."""
        principal = personal_principal()
        session = db_session()
        body = privacy.export_user(session, kalpla(), principal.user)
        record(session, "user.exported", actor_id=principal.user.id, target_type="user",
               target_id=principal.user.id, **request_meta())
        return body, 200, {"Cache-Control": "no-store"}


@blp.route("")
class Account(MethodView):
    @blp.arguments(DeleteAccountSchema)
    @blp.response(204)
    @blp.doc(security=[{"bearer": []}])
    def delete(self, data: dict[str, Any]) -> Any:
        """Delete your account: personal data is erased or anonymised in the core and every
        plugin, all sessions and keys are revoked. Needs your password, or a login within
        the last minutes."""
        principal = personal_principal()
        session = db_session()
        recent = (principal.method == "token"
                  and privacy.recently_logged_in(session, principal.user.id,
                                                 principal.credential_id))
        privacy.delete_account(session, kalpla(), principal.user, password=data["password"],
                               recent_login=recent, client=client())
        return None
