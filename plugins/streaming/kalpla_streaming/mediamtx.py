"""MediaMTX's callbacks: external HTTP authentication and publish/unpublish notifications.
No Flask here.

Authentication (``authMethod: http``, ``authHTTPAddress: <kalpla>/api/v1/streaming/mediamtx/auth``):
MediaMTX posts ``{user, password, token, ip, action, path, protocol, id, query}`` for every
publish, read and playback, and lets the client in only on a 2xx answer. Kalpla allows:

- ``publish`` on a session's path (``live/<id>``) with the session's stream key as password
  (or ``key``/``pass`` in the query), while the session is scheduled or live;
- ``read`` (while scheduled or live) with a playback token Kalpla signed for the session on
  that path and a viewer, unexpired, given as ``jwt`` or ``token`` in the query, as the
  bearer token or as the password — and only while the viewer may still watch (enrollment
  still active);
- ``playback`` of a recording (the playback server's ``/get`` and ``/list``) with a recording
  link's token (``rtmp-recording`` files' download URLs): for that path, for exactly the
  window of the link when ``start`` is asked, and only while the file exists and its
  institution has the plugin enabled;
- ``api`` to Kalpla itself only (it disconnects the publisher of a stopped session): user
  ``kalpla-<institution id>`` with that institution's password derived from the hook secret
  (:func:`~kalpla_streaming.providers.rtmp.api_credentials`), or user ``kalpla`` with the hook
  secret itself (the operator's; never sent to an institution's ``rtmp_api_url``);
- nothing else (``metrics``, ``pprof``, unknown paths, sessions of institutions that
  disabled the plugin, other providers' sessions).

Notifications: ``runOnReady``/``runOnNotReady`` hooks post ``{event: ready|not_ready, path,
occurred_at?, id?}`` with the shared secret in ``X-Kalpla-Streaming-Secret``; ready moves the
session live, not ready ends it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy.orm import Session

from kalpla_core.toolkit import APIError, User, find_file
from kalpla_streaming import channels, recordings, service
from kalpla_streaming.keys import (
    STREAM_KEY_PURPOSE,
    read_recording_token,
    read_rtmp_token,
    same_secret,
    unseal,
)
from kalpla_streaming.providers.rtmp import API_USER, api_credentials


@dataclass(frozen=True)
class AuthRequest:
    action: str
    path: str
    user: str = ""
    password: str = ""
    token: str = ""
    query: str = ""
    ip: str = ""
    protocol: str = ""
    id: str | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def _deny(reason: str) -> Verdict:
    return Verdict(False, reason)


def _query(req: AuthRequest) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(req.query.lstrip("?")).items() if v}


def authorize(session: Session, kalpla: Any, secret_key: str, req: AuthRequest,
              now: datetime, hook_secret: str | None = None) -> Verdict:
    """Whether MediaMTX should let this client in; the reason is for the log only."""
    if req.action == "api":
        # Kalpla itself, disconnecting a stopped session's publisher.
        if _api_caller(req, hook_secret):
            return Verdict(True, "kalpla")
        return _deny("the api is Kalpla's")
    if req.action not in ("publish", "read", "playback"):
        return _deny(f"action {req.action!r} is not served")
    query = _query(req)
    if req.action == "playback":
        return _recording(session, kalpla, secret_key, req, query)
    live = service.by_path(session, req.path.strip("/"), now)
    if live is None or live.provider != "rtmp":
        return _deny("unknown path")
    if service.PLUGIN not in kalpla.enabled_plugins(session, live.institution_id):
        return _deny("plugin not enabled")
    if req.action == "publish":
        key = channels.target(session, live).stream_key_encrypted
        if live.status not in ("scheduled", "live") or key is None:
            return _deny(f"session is {live.status}")
        expected = unseal(secret_key, STREAM_KEY_PURPOSE, key)
        given = [req.password, query.get("key", ""), query.get("pass", "")]
        if any(same_secret(g, expected) for g in given):
            return Verdict(True, "publisher")
        return _deny("wrong stream key")
    if live.status not in ("scheduled", "live"):
        return _deny(f"session is {live.status}")
    for candidate in (query.get("jwt"), query.get("token"), req.token, req.password):
        claims = read_rtmp_token(secret_key, candidate) if candidate else None
        if claims is None or claims.get("sid") != live.id:
            continue
        viewer = session.get(User, claims["sub"])
        try:
            service.require_viewer(session, kalpla, viewer, live)
        except APIError as exc:  # the viewer may no longer watch
            return _deny(f"viewer refused: {exc.detail}")
        return Verdict(True, "viewer")
    return _deny("no valid playback token")


def _api_caller(req: AuthRequest, hook_secret: str | None) -> bool:
    """Kalpla with an institution's API credentials (what it sends to the institution's
    ``rtmp_api_url``), or with the hook secret itself (the operator's)."""
    if not hook_secret:
        return False
    if req.user == API_USER:
        return same_secret(req.password, hook_secret)
    institution_id = req.user.removeprefix(f"{API_USER}-")
    if institution_id == req.user or not institution_id:
        return False
    user, password = api_credentials(hook_secret, institution_id)
    return req.user == user and same_secret(req.password, password)


def _recording(session: Session, kalpla: Any, secret_key: str, req: AuthRequest,
               query: dict[str, str]) -> Verdict:
    """A recording link's token, for its path and (when asked) its window, while the file
    exists and its institution has the plugin enabled."""
    for candidate in (query.get("jwt"), query.get("token"), req.token, req.password):
        key = read_recording_token(secret_key, candidate) if candidate else None
        window = recordings.parse_rtmp(key) if key else None
        if key is None or window is None or window.path != req.path.strip("/"):
            continue
        if "start" in query and not window.matches(query.get("start"), query.get("duration")):
            return _deny("another window of the recording")
        file_id = find_file(session, provider=recordings.RTMP_STORAGE, storage_key=key)
        if file_id is None:
            return _deny("the recording's file is gone")
        if not service.recording_served(session, kalpla, file_id):
            return _deny("plugin not enabled")
        return Verdict(True, "recording")
    return _deny("no valid recording token")


def event_id(event: str, path: str, occurred_at: datetime, source_id: str | None) -> str:
    """A stable id for a notification, so a repeated post is recognised."""
    raw = f"{event}|{path}|{source_id or ''}|{occurred_at.isoformat()}"
    return hashlib.sha256(raw.encode()).hexdigest()


def notify(session: Session, kalpla: Any, event: str, path: str, occurred_at: datetime,
           source_id: str | None = None) -> bool | None:
    """Apply a ready/not-ready notification; None for an unknown path, False for a repeat or
    a notification that changed nothing."""
    live = service.by_path(session, path.strip("/"), occurred_at)
    if live is None or live.provider != "rtmp":
        return None
    if service.PLUGIN not in kalpla.enabled_plugins(session, live.institution_id):
        return None
    live = service.lock(session, live.id)
    if not service.first_time(session, "mediamtx", event_id(event, live.id, occurred_at,
                                                               source_id),
                              event, occurred_at, live):
        return False
    state = "live" if event == "ready" else "ended"
    return service.apply_state(session, kalpla, live, state, occurred_at)
