"""The ``s3`` storage provider: objects in ``KALPLA_S3_BUCKET``, through the project's boto3
client factory (:mod:`kalpla_core.aws`).

Uploads are presigned POSTs whose policy pins the key, the content type, the size range
(1 to the declared size) and server-side encryption (``KALPLA_S3_SSE``: ``AES256``, or
``aws:kms`` with ``KALPLA_S3_KMS_KEY_ID`` when set), so S3 itself refuses anything else.
Confirmation reads the object back with ``head_object``, then copies it to its final key
with ``copy_object`` on the condition that its ETag is still the one read
(``CopySourceIfMatch``), so an object replaced in between is never kept; the copy is
encrypted the same way. Downloads are presigned GETs.

Upload keys start with ``uploads/`` and nothing there is needed once a file is ready, so a
bucket lifecycle rule may expire that prefix (after a day, say).
"""

from __future__ import annotations

from typing import Any

from kalpla_core.storage.port import (
    ObjectChanged,
    StoredObject,
    UploadInstructions,
    content_disposition,
)

_MISSING = {"404", "NoSuchKey", "NotFound"}
# What S3 answers a copy whose source no longer has the ETag asked for, or is gone.
_CHANGED = {"412", "PreconditionFailed", *_MISSING}


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


class S3Storage:
    name = "s3"

    def __init__(self, app: Any) -> None:
        self._kalpla = app.extensions["kalpla"]
        settings = self._kalpla.settings
        if not settings.s3_bucket:
            raise LookupError("the s3 storage provider needs KALPLA_S3_BUCKET")
        self.bucket: str = settings.s3_bucket
        self.required_encryption: str | None = settings.s3_sse
        self._kms_key_id: str | None = settings.s3_kms_key_id

    @property
    def client(self) -> Any:
        from kalpla_core.aws import aws_client

        return aws_client(self._kalpla, "s3")

    def _encryption_fields(self) -> dict[str, str]:
        fields = {"x-amz-server-side-encryption": self.required_encryption or "AES256"}
        if self._kms_key_id:
            fields["x-amz-server-side-encryption-aws-kms-key-id"] = self._kms_key_id
        return fields

    def upload(self, key: str, *, content_type: str, size: int, filename: str,
               ttl: int) -> UploadInstructions:
        fields = {"Content-Type": content_type, **self._encryption_fields()}
        conditions: list[Any] = [{name: value} for name, value in fields.items()]
        conditions.append(["content-length-range", 1, size])
        post = self.client.generate_presigned_post(
            Bucket=self.bucket, Key=key, Fields=fields, Conditions=conditions, ExpiresIn=ttl)
        return UploadInstructions("POST", post["url"], ttl, fields=post["fields"])

    def stat(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError  # boto3 is the optional "aws" extra

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return StoredObject(size=int(head["ContentLength"]),
                            content_type=head.get("ContentType"),
                            encryption=head.get("ServerSideEncryption"),
                            etag=head.get("ETag"))

    def finalize(self, upload_key: str, final_key: str, expect: StoredObject) -> StoredObject:
        from botocore.exceptions import ClientError

        if not expect.etag:
            raise ValueError("finalize needs the ETag stat() reported")
        encryption = {"ServerSideEncryption": self.required_encryption or "AES256"}
        if self._kms_key_id:
            encryption["SSEKMSKeyId"] = self._kms_key_id
        try:
            # Metadata (the content type) is copied with the object.
            copied = self.client.copy_object(
                Bucket=self.bucket, Key=final_key, CopySourceIfMatch=expect.etag,
                CopySource={"Bucket": self.bucket, "Key": upload_key}, **encryption)
        except ClientError as exc:
            if _code(exc) in _CHANGED:
                raise ObjectChanged(upload_key) from None
            raise
        return StoredObject(size=expect.size, content_type=expect.content_type,
                            sha256=expect.sha256,
                            encryption=copied.get("ServerSideEncryption"),
                            etag=copied.get("CopyObjectResult", {}).get("ETag"))

    def download_url(self, key: str, *, filename: str, content_type: str, ttl: int) -> str:
        return str(self.client.generate_presigned_url("get_object", ExpiresIn=ttl, Params={
            "Bucket": self.bucket, "Key": key, "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition(filename, content_type)}))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
