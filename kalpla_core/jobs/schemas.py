from __future__ import annotations

from marshmallow import Schema, fields


class JobSchema(Schema):
    id = fields.String()
    name = fields.String()
    status = fields.String(metadata={"enum": ["queued", "running", "succeeded", "failed"]})
    progress = fields.Integer()
    progress_message = fields.String()
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
