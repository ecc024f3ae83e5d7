from __future__ import annotations

from marshmallow import Schema, fields, validate

from kalpla_core.http.pagination import PageArgs


class AuditEventSchema(Schema):
    id = fields.Integer(dump_only=True)
    occurred_at = fields.DateTime(dump_only=True)
    institution_id = fields.String(dump_only=True, allow_none=True)
    actor_id = fields.String(dump_only=True, allow_none=True)
    action = fields.String(dump_only=True)
    target_type = fields.String(dump_only=True)
    target_id = fields.String(dump_only=True)
    ip = fields.String(dump_only=True)
    request_id = fields.String(dump_only=True)
    data = fields.Dict(dump_only=True)


class AuditEventArgs(PageArgs):
    action = fields.String(load_default=None, validate=validate.Length(1, 64),
                           metadata={"description": "Only events with this action, e.g. "
                                                    "`member.roles_changed`."})
    actor_id = fields.String(load_default=None, validate=validate.Length(1, 32),
                             metadata={"description": "Only events caused by this user."})
    since = fields.AwareDateTime(load_default=None, metadata={
        "description": "Only events at or after this time (ISO 8601 with a time zone)."})
    institution = fields.String(load_default=None, validate=validate.Length(1, 63), metadata={
        "description": "An institution's slug. Platform admins see every institution's "
                       "events without it; others read the institution named here or in "
                       "the `Kalpla-Institution` header."})
