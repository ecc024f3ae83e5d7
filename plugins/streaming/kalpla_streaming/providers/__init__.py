"""The ``streaming`` port: where a live session's video goes in and comes out.

A provider (registered through ``kalpla_providers`` with port ``streaming``) offers:

- ``open_channel(ctx, live)``: make sure the session has somewhere to broadcast to; sets
  ``live.ingest_endpoint``, ``live.playback_url``, ``live.stream_key_encrypted`` (and the
  provider's own references). Called again, it changes nothing.
- ``rotate_key(ctx, live)``: replace the stream key (the old one stops working).
- ``stop(ctx, live)``: end the broadcast now.
- ``playback(ctx, live, viewer_id)``: a :class:`Playback` for one viewer.

Provider failures are raised as ``APIError`` (502/503), after the provider undid what it had
created for the failed call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from kalpla_streaming.keys import PlaybackToken
from kalpla_streaming.models import LiveSession
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
    url: str
    token: PlaybackToken


class StreamingProvider(Protocol):
    name: str

    def open_channel(self, ctx: ProviderContext, live: LiveSession) -> None: ...

    def rotate_key(self, ctx: ProviderContext, live: LiveSession) -> None: ...

    def stop(self, ctx: ProviderContext, live: LiveSession) -> None: ...

    def playback(self, ctx: ProviderContext, live: LiveSession, viewer_id: str) -> Playback: ...
