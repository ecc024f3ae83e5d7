"""Storage providers (port ``storage``) of the recordings the video services write, so a
recording is a file of its lesson like any other (see :mod:`kalpla_streaming.recordings`).

- ``ivs-recording``: an HLS recording in the IVS recording bucket. ``stat`` heads the master
  playlist and adds up the recording's bytes; ``download_url`` is a Kalpla-signed link to the
  master playlist, served by ``GET /api/v1/streaming/recordings/…`` rewritten so that every
  URI in it is a link too (renditions' playlists signed by Kalpla, segments presigned S3
  GETs); ``delete`` deletes the recording's objects.
- ``rtmp-recording``: a time window of a path on MediaMTX's playback server. ``download_url``
  is its ``/get`` URL with a signed token the auth callback accepts for exactly that window,
  while the file exists; ``stat`` asks the playback server's ``/list`` whether the window was
  recorded; ``delete`` leaves the media on the server (its ``recordDeleteAfter`` removes it):
  links stop working once the file is gone.

Nothing is uploaded to either: ``upload`` and ``finalize`` refuse.
"""

from __future__ import annotations

import json
import posixpath
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from botocore.exceptions import ClientError

from kalpla_core.toolkit import StoredObject, aws_client, utcnow
from kalpla_streaming import hls
from kalpla_streaming.keys import recording_token
from kalpla_streaming.recordings import (
    HLS_TYPE,
    IVS_STORAGE,
    MP4_TYPE,
    RTMP_STORAGE,
    parse_rtmp,
    parse_s3,
)

RECORDINGS_PATH = "/api/v1/streaming/recordings/"
# Links inside a recording's playlists (other renditions, segments) last a sitting: a player
# follows them for as long as the recording plays, pauses included.
MEDIA_TTL = 4 * 3600
MAX_LISTED_PAGES = 50  # a recording's bytes are counted over at most 50 000 objects
LIST_TIMEOUT = 5
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class _Recordings:
    """What both providers share: nothing is uploaded to them."""

    name: str
    required_encryption: str | None = None

    def __init__(self, app: Any) -> None:
        self._kalpla = app.extensions["kalpla"]

    def _token(self, key: str, ttl: int, now: datetime | None = None,
               name: str | None = None) -> str:
        return recording_token(self._kalpla.settings.secret_key, key=key,
                               now=now or utcnow(), ttl=ttl, name=name)

    def upload(self, key: str, *, content_type: str, size: int, filename: str,
               ttl: int) -> Any:
        raise NotImplementedError(f"{self.name} holds recordings the video service writes; "
                                  "nothing is uploaded to it (choose another KALPLA_STORAGE)")

    def finalize(self, upload_key: str, final_key: str, expect: StoredObject) -> StoredObject:
        raise NotImplementedError(f"{self.name} holds recordings the video service writes; "
                                  "there are no uploads to finalize")


class IVSRecordingStorage(_Recordings):
    name = IVS_STORAGE

    @property
    def client(self) -> Any:
        return aws_client("s3", self._kalpla)

    def _link(self, key: str, name: str, ttl: int, now: datetime | None = None) -> str:
        return (f"{self._kalpla.settings.base_url}{RECORDINGS_PATH}{quote(name)}"
                f"?token={self._token(key, ttl, now, name)}")

    def stat(self, key: str) -> StoredObject | None:
        location = parse_s3(key)
        if location is None:
            return None
        try:
            self.client.head_object(Bucket=location.bucket, Key=location.hls("master.m3u8"))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        size = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=f"{location.prefix}/media/")
        for number, page in enumerate(pages, 1):
            size += sum(int(obj["Size"]) for obj in page.get("Contents", []))
            if number >= MAX_LISTED_PAGES:
                break
        return StoredObject(size=size, content_type=HLS_TYPE)

    def download_url(self, key: str, *, filename: str, content_type: str, ttl: int) -> str:
        return self._link(key, "master.m3u8", ttl)

    def delete(self, key: str) -> None:
        location = parse_s3(key)
        if location is None:  # another key of the file (the core's upload keys): none here
            return
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=f"{location.prefix}/")
        for page in pages:
            objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=location.bucket,
                                           Delete={"Objects": objects, "Quiet": True})

    def playlist(self, key: str, name: str) -> str:
        """The recording's playlist ``name`` (``master.m3u8``, ``720p30/playlist.m3u8``)
        rewritten for a player; LookupError when there is none, ``hls.PlaylistError`` when
        it is not one to pass on."""
        location = parse_s3(key)
        if location is None or not hls.is_playlist_name(name):
            raise LookupError(name)
        try:
            body = self.client.get_object(Bucket=location.bucket, Key=location.hls(name))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise LookupError(name) from None
            raise
        try:
            data = body.read(hls.MAX_PLAYLIST_BYTES + 1)
        finally:  # the rest of a refused playlist is not read: give the connection back
            body.close()
        if len(data) > hls.MAX_PLAYLIST_BYTES:
            raise hls.PlaylistError("the playlist is too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise hls.PlaylistError("the playlist is not UTF-8") from None
        now = utcnow()

        def presigned(item: str) -> str:
            return str(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": location.bucket, "Key": location.hls(item)},
                ExpiresIn=MEDIA_TTL))

        return hls.rewrite(text, posixpath.dirname(name),
                           lambda item: self._link(key, item, MEDIA_TTL, now), presigned)


class RTMPRecordingStorage(_Recordings):
    name = RTMP_STORAGE

    def download_url(self, key: str, *, filename: str, content_type: str, ttl: int) -> str:
        return f"{key}&jwt={quote(self._token(key, ttl))}"

    def stat(self, key: str) -> StoredObject | None:
        window = parse_rtmp(key)
        if window is None:
            return None
        url = (f"{window.base}/list?path={quote(window.path, safe='')}"
               f"&jwt={quote(self._token(key, 60))}")
        # The base comes from the rtmp_recording_url setting, validated as http(s).
        try:
            with urllib.request.urlopen(url, timeout=LIST_TIMEOUT) as resp:  # noqa: S310
                listed = json.loads(resp.read(4 * 1024 * 1024) or b"[]")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # MediaMTX: nothing recorded on the path
                return None
            raise
        end = window.start + timedelta(seconds=window.seconds)
        for item in listed if isinstance(listed, list) else []:
            try:
                start = datetime.fromisoformat(str(item["start"]).replace("Z", "+00:00"))
                stop = start + timedelta(seconds=float(item["duration"]))
            except (KeyError, TypeError, ValueError):
                continue
            if start.tzinfo is not None and start < end and stop > window.start:
                return StoredObject(size=0, content_type=MP4_TYPE)
        return None

    def delete(self, key: str) -> None:
        """Kalpla holds nothing of it: the media server keeps the media until its own
        ``recordDeleteAfter``, and the auth callback stops serving the window once the file
        is gone."""
        return None
