"""The ``streaming`` port: where a live session's video goes in and comes out.

A provider (registered through ``kalpla_providers`` with port ``streaming``) offers, on a
*channel* — a session's own (the :class:`LiveSession`) or its course's (a :class:`Channel`,
``channel_scope`` "course"), both with the same channel fields:

- ``open_channel(ctx, channel)``: make sure there is somewhere to broadcast to; sets
  ``ingest_endpoint``, ``playback_url``, ``stream_key_encrypted`` (and the provider's own
  references). Called again, it changes nothing.
- ``rotate_key(ctx, channel)``: replace the stream key (the old one stops working).
- ``stop(ctx, channel)``: end the broadcast now.
- ``playback(ctx, live, channel, viewer_id)``: a :class:`Playback` of the session ``live``
  on ``channel`` for one viewer.

Provider failures are raised as ``APIError`` (502/503), after the provider undid what it had
created for the failed call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from kalpla_streaming.keys import PlaybackToken
from kalpla_streaming.models import Channel, LiveSession
from kalpla_streaming.settings import DeploymentConfig

PORT = "streaming"


@dataclass
class ProviderContext:
    """What a provider call needs: the unit of work, the institution's settings, the root
    secret (for SecretBox) and the time."""

    session: Session
    settings: dict[str, Any]
    secret_key: str
    config: DeploymentConfig
    now: datetime


@dataclass(frozen=True)
class Playback:
    """A playback URL: of the live stream (with the viewer's ``token``), or of the ended
    session's recording (a link to its file, ``recording_file_id``, lasting until
    ``expires_at``)."""

    url: str
    token: PlaybackToken | None
    expires_at: datetime | None = None
    recording_file_id: str | None = None

    @property
    def until(self) -> datetime:
        until = self.token.expires_at if self.token is not None else self.expires_at
        assert until is not None
        return until


ChannelRow = LiveSession | Channel


class StreamingProvider(Protocol):
    name: str

    def open_channel(self, ctx: ProviderContext, channel: ChannelRow) -> None: ...

    def rotate_key(self, ctx: ProviderContext, channel: ChannelRow) -> None: ...

    def stop(self, ctx: ProviderContext, channel: ChannelRow) -> None: ...

    def playback(self, ctx: ProviderContext, live: LiveSession, channel: ChannelRow,
                 viewer_id: str) -> Playback: ...
