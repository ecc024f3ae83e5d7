"""The ``local`` storage provider: files under ``<instance>/files/``, reached through
short-lived URLs of this app signed with HMAC-SHA256.

- ``PUT /api/v1/files/local/{key}?content_type=…&filename=…&max_size=…&expires=…&signature=…``
  receives an upload: the body is streamed to a temporary file and refused (413) as soon as
  it passes ``max_size``; only a complete body is moved into place, and never over an
  existing object (409), so nothing half-written is ever served.
- ``GET /api/v1/files/local/{key}?expires=…&signature=…`` serves it, with the type and name
  recorded at upload.
- On confirm, :meth:`LocalStorage.finalize` hard-links the checked file (the same inode that
  was read, or nothing) to its final key, which no upload URL names.

The signature covers the method, the key and every query parameter, with a key derived from
``KALPLA_SECRET_KEY`` for this purpose alone; it is compared in constant time, and an expired
or altered URL is refused with 403.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

from kalpla_core.crypto import derive_key
from kalpla_core.http.problems import APIError
from kalpla_core.storage.port import ObjectChanged, StoredObject, UploadInstructions

URL_PATH = "/api/v1/files/local/"
# Keys are made by the service (uploads / institution id / file id, institution id / ready /
# file id, and institution id / file id from before); anything else, dots and extra slashes
# included, is refused before the file system is touched, so no key leaves the root.
KEY_RE = re.compile(r"(?:uploads/[0-9A-Za-z_-]{1,64}|[0-9A-Za-z_-]{1,64}(?:/ready)?)"
                    r"/[0-9a-f]{32}")
CHUNK = 64 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _file_tag(st: os.stat_result) -> str:
    """Which file this is: its inode, and its size and time of change in case the inode
    number was reused."""
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _forbidden(detail: str, code: str) -> APIError:
    return APIError(403, detail, code)


class LocalStorage:
    name = "local"
    required_encryption: str | None = None

    def __init__(self, app: Any) -> None:
        settings = app.extensions["kalpla"].settings
        self.root = Path(settings.instance_path) / "files"
        self._mac_key = derive_key(settings.secret_key, "storage-urls")
        self._base_url = settings.base_url + URL_PATH

    # --- keys and paths ---------------------------------------------------------------------

    def path(self, key: str) -> Path:
        if not KEY_RE.fullmatch(key):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.path(key).with_suffix(".json")

    # --- signed URLs ------------------------------------------------------------------------

    def _signature(self, method: str, key: str, params: Mapping[str, str]) -> str:
        message = json.dumps([method, key, sorted(params.items())], separators=(",", ":"))
        return _b64(hmac.new(self._mac_key, message.encode(), hashlib.sha256).digest())

    def signed_url(self, method: str, key: str, expires: int,
                   params: Mapping[str, str] | None = None) -> str:
        """The URL of ``key`` for ``method``, valid until ``expires`` (Unix time)."""
        query = {**(params or {}), "expires": str(expires)}
        query["signature"] = self._signature(method, key, query)
        return f"{self._base_url}{quote(key)}?{urlencode(query)}"

    def verify(self, method: str, key: str, args: Mapping[str, str]) -> dict[str, str]:
        """The signed parameters of a request to a signed URL; 403 when the signature does
        not match (any parameter added, removed or changed) or the URL has expired."""
        params = {k: v for k, v in args.items() if k != "signature"}
        given = args.get("signature", "")
        expected = self._signature(method, key, params)
        if not KEY_RE.fullmatch(key) or not hmac.compare_digest(given.encode(),
                                                                expected.encode()):
            raise _forbidden("The link's signature is not valid.", "bad-signature")
        try:
            expires = int(params["expires"])
        except (KeyError, ValueError):
            raise _forbidden("The link's signature is not valid.", "bad-signature") from None
        if expires < time.time():
            raise _forbidden("The link has expired; ask for a new one.", "link-expired")
        return params

    # --- the port ---------------------------------------------------------------------------

    def upload(self, key: str, *, content_type: str, size: int, filename: str,
               ttl: int) -> UploadInstructions:
        url = self.signed_url("PUT", key, int(time.time()) + ttl, {
            "content_type": content_type, "filename": filename, "max_size": str(size)})
        return UploadInstructions("PUT", url, ttl, headers={"Content-Type": content_type})

    def stat(self, key: str) -> StoredObject | None:
        path = self.path(key)
        digest = hashlib.sha256()
        try:
            with path.open("rb") as fh:
                st = os.fstat(fh.fileno())
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        meta = self.meta(key) or {}
        return StoredObject(size=st.st_size, content_type=meta.get("content_type"),
                            sha256=digest.hexdigest(), etag=_file_tag(st))

    def finalize(self, upload_key: str, final_key: str, expect: StoredObject) -> StoredObject:
        source, final = self.path(upload_key), self.path(final_key)
        meta = self.meta(upload_key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._temporary(final.parent) as (meta_fh, meta_path):
            link = Path(f"{meta_path}.link")
            try:
                # A hard link is the very inode stat() read (uploaded files are never written
                # again), so comparing its identity with the one checked is exact.
                os.link(source, link)
            except FileNotFoundError:
                raise ObjectChanged(upload_key) from None
            try:
                st = os.stat(link)
                if meta is None or _file_tag(st) != expect.etag:
                    raise ObjectChanged(upload_key)
                meta_fh.write(json.dumps(meta).encode())
                meta_fh.flush()
                # The record first: the GET route serves nothing without one.
                os.replace(meta_path, self._meta_path(final_key))
                os.replace(link, final)
            finally:
                link.unlink(missing_ok=True)
        return StoredObject(size=st.st_size, content_type=meta.get("content_type"),
                            sha256=expect.sha256, etag=_file_tag(st))

    def download_url(self, key: str, *, filename: str, content_type: str, ttl: int) -> str:
        # The name and type recorded at upload are served; the URL carries only its expiry.
        return self.signed_url("GET", key, int(time.time()) + ttl)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)

    # --- what the signed routes do ----------------------------------------------------------

    def meta(self, key: str) -> dict[str, str] | None:
        """The content type and file name recorded when the object was uploaded."""
        try:
            data = json.loads(self._meta_path(key).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def receive(self, key: str, stream: IO[bytes], *, max_size: int, content_type: str,
                filename: str) -> int:
        """Store the body read from ``stream`` at ``key``; its size. Nothing is left behind
        when the body is empty (400) or too large (413), the key is taken (409) or reading
        fails."""
        final = self.path(key)
        if final.exists():
            raise _already_uploaded()
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._temporary(final.parent) as (data_fh, data_path), \
                self._temporary(final.parent) as (meta_fh, meta_path):
            size = 0
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                size += len(chunk)
                if size > max_size:
                    raise too_large(max_size)
                data_fh.write(chunk)
            if size == 0:
                raise APIError(400, "The upload is empty; send the file as the body, with "
                               "its Content-Length.", "empty-upload")
            data_fh.flush()
            os.fsync(data_fh.fileno())
            meta_fh.write(json.dumps({"content_type": content_type,
                                      "filename": filename}).encode())
            meta_fh.flush()
            try:
                # A hard link never replaces an existing file: of two concurrent uploads to
                # one key, exactly one wins.
                os.link(data_path, final)
            except FileExistsError:
                raise _already_uploaded() from None
            os.replace(meta_path, self._meta_path(key))
        return size

    @contextlib.contextmanager
    def _temporary(self, folder: Path) -> Iterator[tuple[IO[bytes], str]]:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh, name
        finally:
            Path(name).unlink(missing_ok=True)


def too_large(max_size: int) -> APIError:
    return APIError(413, f"The upload is larger than the {max_size} bytes it was declared "
                    "with.", "upload-too-large")


def _already_uploaded() -> APIError:
    return APIError(409, "A file was already uploaded with this link; delete the file and "
                    "ask for a new upload to replace it.", "already-uploaded")
