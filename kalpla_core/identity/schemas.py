from __future__ import annotations

from marshmallow import Schema, fields


class UserSchema(Schema):
    id = fields.String(dump_only=True)
    email = fields.Email(dump_only=True)
    name = fields.String(dump_only=True)
    is_platform_admin = fields.Boolean(dump_only=True)
    email_verified_at = fields.DateTime(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
