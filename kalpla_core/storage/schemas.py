from __future__ import annotations

from marshmallow import Schema, fields, validate

from kalpla_core.storage.service import PURPOSES


class UploadRequestSchema(Schema):
    course_id = fields.String(required=True, validate=validate.Length(1, 32))
    lesson_id = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(1, 32),
                              metadata={"description": "A lesson of the course the file is for"})
    purpose = fields.String(required=True, validate=validate.OneOf(PURPOSES), metadata={
        "description": "resource (of the course), cover (an image), video, lesson-file"})
    filename = fields.String(required=True, validate=validate.Length(1, 255))
    content_type = fields.String(required=True, validate=validate.Length(3, 100), metadata={
        "description": "Media type; one of KALPLA_UPLOAD_TYPES"})
    size = fields.Integer(required=True, strict=True, validate=validate.Range(min=1), metadata={
        "description": "Bytes; at most KALPLA_MAX_UPLOAD_BYTES"})


class FileSchema(Schema):
    id = fields.String(dump_only=True)
    institution_id = fields.String(dump_only=True)
    course_id = fields.String(dump_only=True, allow_none=True)
    lesson_id = fields.String(dump_only=True, allow_none=True)
    owner_id = fields.String(dump_only=True, allow_none=True)
    purpose = fields.String(dump_only=True)
    provider = fields.String(dump_only=True)
    filename = fields.String(dump_only=True)
    content_type = fields.String(dump_only=True)
    size = fields.Integer(dump_only=True)
    sha256 = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "Hex digest, where the provider computes it (local)"})
    status = fields.String(dump_only=True, metadata={"description": "pending or ready"})
    created_at = fields.DateTime(dump_only=True)
    confirmed_at = fields.DateTime(dump_only=True, allow_none=True)


class UploadInstructionsSchema(Schema):
    method = fields.String(dump_only=True, metadata={
        "description": "POST: multipart/form-data with `fields` first and the file last as "
                       "`file`; PUT: the raw bytes as the body, with `headers`"})
    url = fields.String(dump_only=True)
    form_fields = fields.Dict(keys=fields.String(), values=fields.String(), dump_only=True,
                              attribute="fields", data_key="fields", metadata={
                                  "description": "Form fields of a POST upload"})
    headers = fields.Dict(keys=fields.String(), values=fields.String(), dump_only=True)
    expires_in = fields.Integer(dump_only=True, metadata={"description": "Seconds"})


class UploadSchema(FileSchema):
    upload = fields.Nested(UploadInstructionsSchema, dump_only=True)


class DownloadSchema(Schema):
    url = fields.String(dump_only=True, metadata={"description": "Short-lived download URL"})
    expires_in = fields.Integer(dump_only=True, metadata={"description": "Seconds"})
    filename = fields.String(dump_only=True)
    content_type = fields.String(dump_only=True)
    size = fields.Integer(dump_only=True)


class SignedArgs(Schema):
    """The query of a signed local-storage URL. The signature covers every parameter, so
    none may be added, removed or changed (403 otherwise, as for a missing one)."""

    expires = fields.String(load_default="", metadata={"description": "Unix time"})
    signature = fields.String(load_default="")


class SignedUploadArgs(SignedArgs):
    content_type = fields.String(load_default="")
    filename = fields.String(load_default="")
    max_size = fields.String(load_default="")
