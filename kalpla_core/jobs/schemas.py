from __future__ import annotations

from marshmallow import Schema, fields

from kalpla_core.jobs.models import JOB_STATUSES


class JobSchema(Schema):
    id = fields.String()
    name = fields.String()
    owner_id = fields.String(allow_none=True)
    institution_id = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": list(JOB_STATUSES)})
    progress = fields.Integer(metadata={"description": "0–100"})
    progress_message = fields.String()
    result = fields.Raw(allow_none=True, metadata={"description": "Set when succeeded."})
    error = fields.String(allow_none=True, metadata={"description": "Set when failed."})
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    heartbeat_at = fields.DateTime(allow_none=True, metadata={
        "description": "When its worker last showed the run alive."})
    finished_at = fields.DateTime(allow_none=True)
