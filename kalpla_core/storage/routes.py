"""File routes: the upload flow (ask, upload, confirm), metadata, downloads, deletion, a
course's resources, and the signed URLs of the ``local`` provider."""

from __future__ import annotations

from typing import Any

from flask import Response, after_this_request, request, send_file, url_for
from flask.views import MethodView
from werkzeug.exceptions import RequestEntityTooLarge

from kalpla_core.context import current_user, db_session, has_permission, kalpla
from kalpla_core.courses.service import Caller
from kalpla_core.http.api import Blueprint
from kalpla_core.http.pagination import PageArgs, page_of, page_response
from kalpla_core.http.problems import APIError
from kalpla_core.storage import service
from kalpla_core.storage.local import LocalStorage, too_large
from kalpla_core.storage.models import StoredFile
from kalpla_core.storage.port import UploadInstructions, content_disposition
from kalpla_core.storage.schemas import (
    DownloadSchema,
    FileSchema,
    SignedArgs,
    SignedUploadArgs,
    UploadRequestSchema,
    UploadSchema,
)

blp = Blueprint("files", __name__, url_prefix="/api/v1",
                description="Files of courses and lessons: ask for an upload, send the file "
                            "to the URL given, confirm; metadata, short-lived download URLs, "
                            "a course's resources.")

BEARER = [{"bearer": []}]
PRIVATE = "private, no-store"
BINARY = {"schema": {"type": "string", "format": "binary"}}


def _caller() -> Caller:
    return Caller(current_user(required=False), has_permission)


def _private() -> None:
    @after_this_request
    def _set(response: Any) -> Any:
        response.headers["Cache-Control"] = PRIVATE
        return response


def _with_upload(file: StoredFile, upload: UploadInstructions) -> dict[str, Any]:
    return {**{name: getattr(file, name) for name in FileSchema().fields}, "upload": upload}


@blp.route("/files")
class Files(MethodView):
    @blp.arguments(UploadRequestSchema)
    @blp.response(201, UploadSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Ask to upload a file for a course (the course's staff): a pending file and, in
        ``upload``, how to send it. Then confirm it."""
        file, upload = service.request_upload(db_session(), kalpla(), _caller(), data)
        _private()
        return _with_upload(file, upload), {"Location": url_for("files.FileItem",
                                                                file_id=file.id)}


@blp.route("/files/<file_id>/confirm")
class FileConfirm(MethodView):
    @blp.response(200, FileSchema)
    @blp.doc(security=BEARER)
    def post(self, file_id: str) -> Any:
        """Check the uploaded object against the declaration and make the file ready (the
        course's staff). A mismatch is answered 422 with the differences; the object is
        deleted and the file stays pending."""
        file = service.confirm_upload(db_session(), kalpla(), _caller(), file_id)
        _private()
        return file


@blp.route("/files/<file_id>")
class FileItem(MethodView):
    @blp.response(200, FileSchema)
    def get(self, file_id: str) -> Any:
        """A file's metadata: for the course's staff, and for whoever may read the file
        (see the download)."""
        file = service.readable_file(db_session(), kalpla(), _caller(), file_id)
        _private()
        return file

    @blp.response(204)
    @blp.doc(security=BEARER)
    def delete(self, file_id: str) -> Any:
        """Delete a file and its stored object (the course's staff). 409 while a lesson uses
        it; a course using it as its cover loses the cover."""
        service.delete_file(db_session(), kalpla(), _caller(), file_id)
        return None


@blp.route("/files/<file_id>/download")
class FileDownload(MethodView):
    @blp.response(200, DownloadSchema)
    def get(self, file_id: str) -> Any:
        """A short-lived URL to download a ready file, as JSON (no redirect, so clients
        choose how to fetch it). Who gets one: the course's staff; everyone for the cover
        of a published course; for a lesson's file, whoever may read the lesson (enrolled
        students, anyone for a free preview); for a course resource, its enrolled students.
        Others get 404 (draft courses), 401 or 403 with the reason."""
        session = db_session()
        file = service.readable_file(session, kalpla(), _caller(), file_id)
        ttl = service.download_ttl(file)
        url = service.download_url(kalpla(), file, ttl)
        _private()
        return {"url": url, "expires_in": ttl, "filename": file.filename,
                "content_type": file.content_type, "size": file.size}


@blp.route("/courses/<course_id>/resources")
class CourseResources(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(FileSchema))
    def get(self, args: dict[str, Any], course_id: str) -> Any:
        """The course's ready resources, newest first (its staff and enrolled students);
        files of single lessons are not listed here."""
        page = service.resources_page(db_session(), _caller(), course_id, args["limit"],
                                      args["cursor"], kalpla().settings.secret_key)
        _private()
        return page_response(page)


# --- the local provider's signed URLs ---------------------------------------------------------

def _local() -> LocalStorage:
    provider = service.storage(kalpla(), "local")
    assert isinstance(provider, LocalStorage)
    return provider


@blp.route("/files/local/<path:key>")
class LocalObject(MethodView):
    @blp.arguments(SignedArgs, location="query")
    @blp.doc(responses={"200": {"description": "The file's bytes (ranges supported)",
                                "content": {"application/octet-stream": BINARY}}})
    def get(self, _args: dict[str, Any], key: str) -> Any:
        """Download from the ``local`` provider through a signed URL (see
        ``/files/{file_id}/download``); 403 when the link is altered or expired."""
        local = _local()
        local.verify("GET", key, request.args.to_dict())
        meta, path = local.meta(key), local.path(key)
        if meta is None or not path.is_file():
            raise APIError(404, "The file is no longer stored.", "not-found")
        content_type = meta.get("content_type") or "application/octet-stream"
        response = send_file(path, mimetype=content_type, conditional=True, etag=True)
        response.headers["Content-Disposition"] = content_disposition(
            meta.get("filename") or "download", content_type)
        response.headers["Cache-Control"] = PRIVATE
        return response

    @blp.arguments(SignedUploadArgs, location="query")
    @blp.response(204)
    @blp.doc(requestBody={"required": True, "content": {"application/octet-stream": BINARY}})
    def put(self, _args: dict[str, Any], key: str) -> Any:
        """Upload to the ``local`` provider through the signed URL given when the upload was
        asked for, with the declared ``Content-Type``. The body is limited to the declared
        size while it streams (413); an object is written once (409), and only while its
        file is pending (409 once it is confirmed or deleted)."""
        local = _local()
        params = local.verify("PUT", key, request.args.to_dict())
        session = db_session()
        service.check_upload_open(session, local.name, key)
        # The body may take minutes: its connection goes back to the pool meanwhile (the
        # check after the body takes one again).
        session.commit()
        max_size = int(params["max_size"])
        if request.mimetype != params["content_type"]:
            raise APIError(415, f"Send the file with Content-Type: {params['content_type']}, "
                           "as declared.", "content-type-mismatch")
        # The declared size replaces the app-wide body limit for this request only.
        request.max_content_length = max_size
        try:
            local.receive(key, request.stream, max_size=max_size,
                          content_type=params["content_type"], filename=params["filename"])
        except RequestEntityTooLarge:
            raise too_large(max_size) from None
        try:
            # Confirmed (or deleted) while the body streamed: what came is not kept.
            service.check_upload_open(session, local.name, key)
        except APIError:
            local.delete(key)
            raise
        return Response(status=204)
