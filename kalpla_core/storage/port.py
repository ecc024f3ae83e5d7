"""The ``storage`` port: what a provider of file storage offers.

``KALPLA_STORAGE`` names the provider new uploads go to (the core ships ``local`` and ``s3``;
a plugin may register another through ``kalpla_providers``). A stored file remembers its
provider, so files keep working after a deployment switches. Keys are made by the core
(never from a user's file name) and are opaque to the provider.

Clients never stream files through the API's JSON routes: they upload to, and download from,
short-lived signed URLs the provider makes.

An upload goes to an *upload key*, which the instructions cover for their whole lifetime. On
confirm the core checks the object there (:meth:`StorageProvider.stat`), then has the provider
copy exactly that object to a *final key* no instructions cover
(:meth:`StorageProvider.finalize`); downloads read the final key, so the uploader cannot
replace the checked object with the instructions still in hand. The core deletes the object
at the upload key once the file is ready. Both calls are made with no database transaction
open: they take as long as the object needs without holding up anyone else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote


@dataclass(frozen=True)
class UploadInstructions:
    """How the client sends the file: ``method`` ``POST`` means a ``multipart/form-data``
    body with ``fields`` first and the file last (as ``file``); ``PUT`` means the raw bytes
    as the body, with ``headers``."""

    method: str
    url: str
    expires_in: int
    fields: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredObject:
    """What the provider reports about an object it holds. ``sha256`` and ``encryption`` are
    None where the provider does not know them. ``etag`` names this version of the object
    (S3's ETag; the local provider's file identity): :meth:`StorageProvider.finalize` keeps
    the object only while it still has that tag."""

    size: int
    content_type: str | None
    sha256: str | None = None
    encryption: str | None = None
    etag: str | None = None


class ObjectChanged(Exception):
    """The object at the upload key is no longer the one that was checked (replaced or
    gone), so it was not kept."""


class StorageProvider(Protocol):
    """Built once per app by the provider's ``factory(app)``."""

    name: str
    # The server-side encryption every object must report on confirm (None: not checked).
    required_encryption: str | None

    def upload(self, key: str, *, content_type: str, size: int, filename: str,
               ttl: int) -> UploadInstructions:
        """Instructions to upload at most ``size`` bytes of ``content_type`` to ``key``,
        valid for ``ttl`` seconds. The provider refuses a different type or a larger body
        where it can; the core checks the stored object on confirm either way."""
        ...

    def stat(self, key: str) -> StoredObject | None:
        """The object at ``key``, or None when there is none."""
        ...

    def finalize(self, upload_key: str, final_key: str, expect: StoredObject) -> StoredObject:
        """Copy the object at ``upload_key`` to ``final_key`` if it is still the version
        ``expect`` (what :meth:`stat` reported, ``etag`` included) describes, atomically with
        that check; else raise :class:`ObjectChanged` and write nothing. An object already at
        ``final_key`` is replaced (a confirm retried after a failed commit), atomically: two
        confirms of one file may copy to the same keys at once, with no database transaction
        open, and ``final_key`` then holds one whole copy. The object at ``upload_key``
        stays: the core deletes it. Returns what is now at ``final_key``. (Optional for
        compatibility: without it a confirmed file stays at its upload key.)"""
        ...

    def download_url(self, key: str, *, filename: str, content_type: str, ttl: int) -> str:
        """A URL that serves the object for ``ttl`` seconds to whoever holds it."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone."""
        ...


def content_disposition(filename: str, content_type: str) -> str:
    """``inline`` for media a browser shows or plays, ``attachment`` for everything else;
    the name both plain (ASCII) and RFC 5987-encoded."""
    kind = "inline" if content_type.split("/")[0] in ("image", "video", "audio") else \
        "attachment"
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
