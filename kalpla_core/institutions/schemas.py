from __future__ import annotations

from marshmallow import Schema, fields, validate

from kalpla_core.institutions.service import SLUG_RE
from kalpla_core.institutions.settings import InstitutionSettingsSchema


class InstitutionSchema(Schema):
    id = fields.String(dump_only=True)
    slug = fields.String(required=True, validate=validate.Regexp(SLUG_RE))
    name = fields.String(required=True, validate=validate.Length(1, 200))
    created_at = fields.DateTime(dump_only=True)


class InstitutionDetailSchema(InstitutionSchema):
    settings = fields.Nested(InstitutionSettingsSchema, load_default=dict)


class InstitutionPatchSchema(Schema):
    name = fields.String(validate=validate.Length(1, 200))
    # Replaces the whole settings object; send the keys to keep along with the changed ones.
    settings = fields.Nested(InstitutionSettingsSchema)


class EnabledPluginSchema(Schema):
    plugin = fields.String(dump_only=True)
    settings = fields.Dict(dump_only=True)
    enabled_at = fields.DateTime(dump_only=True)


class EnablePluginSchema(Schema):
    settings = fields.Dict(keys=fields.String(), load_default=dict)
