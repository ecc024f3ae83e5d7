"""HLS playlists of a recording in a private bucket, rewritten so a player can follow them.

IVS writes a master playlist and one playlist per rendition whose URIs are relative
(``720p30/playlist.m3u8``, ``0.ts``). A private bucket serves none of them to a player, so
every URI is replaced: playlists (``.m3u8``) by a Kalpla-signed link (served rewritten in
turn), everything else (segments, init sections) by a presigned S3 GET. URIs are resolved
against the playlist's folder and must stay inside the recording: an absolute URI, or one
climbing out of it, makes the playlist invalid rather than being passed on.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable

# A relative name inside the recording's HLS folder: no scheme, no "..", no odd characters.
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
PLAYLIST_NAME_RE = re.compile(rf"(?:{NAME_RE.pattern})\.m3u8")
URI_ATTRIBUTE = re.compile(r'URI="([^"]*)"')
MAX_PLAYLIST_BYTES = 4 * 1024 * 1024


class PlaylistError(ValueError):
    """The playlist is not one Kalpla passes on."""


def is_playlist_name(name: str) -> bool:
    return PLAYLIST_NAME_RE.fullmatch(name) is not None and ".." not in name.split("/")


def resolve(directory: str, uri: str) -> str:
    """``uri`` of a playlist in ``directory``, as a name inside the recording."""
    if "://" in uri or uri.startswith("/") or "?" in uri or "#" in uri:
        raise PlaylistError(f"URI {uri!r} is not relative to the recording")
    name = posixpath.normpath(posixpath.join(directory, uri)) if directory else \
        posixpath.normpath(uri)
    if name.startswith("..") or NAME_RE.fullmatch(name) is None:
        raise PlaylistError(f"URI {uri!r} leaves the recording")
    return name


def rewrite(text: str, directory: str, playlist_link: Callable[[str], str],
            object_link: Callable[[str], str]) -> str:
    """The playlist ``text`` (of a playlist in ``directory``) with every URI — URI lines and
    ``URI="…"`` attributes — replaced by ``playlist_link(name)`` for playlists and
    ``object_link(name)`` for the rest."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "#EXTM3U":
        raise PlaylistError("not an HLS playlist")

    def link(uri: str) -> str:
        name = resolve(directory, uri)
        return playlist_link(name) if name.endswith(".m3u8") else object_link(name)

    out: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            out.append(line)
        elif stripped.startswith("#"):
            out.append(URI_ATTRIBUTE.sub(lambda m: f'URI="{link(m.group(1))}"', stripped))
        else:
            out.append(link(stripped))
    return "\n".join(out) + "\n"
