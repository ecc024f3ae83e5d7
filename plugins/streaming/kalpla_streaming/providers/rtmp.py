"""Self-hosted provider: a media server (MediaMTX) that asks Kalpla who may publish and read.

Each session (or, with ``channel_scope`` "course", each course) gets the path
``live/<id>`` and a stream key issued by Kalpla. The instructor publishes to
``<rtmp_ingest_url>/live/<id>`` with the key as password (MediaMTX reads ``?user=…&pass=…``
on RTMP); viewers read ``<rtmp_playback_url>/live/<id>/index.m3u8`` with a signed, expiring
token of the session in the query (``?jwt=…``). Once the session has ended, its recording is
a file of the lesson served by the playback server (``rtmp-recording``, see
:mod:`kalpla_streaming.providers.storage`). The media server's ``authHTTPAddress`` callback
(``kalpla_streaming.mediamtx``) checks all of them.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.request
from typing import Any
from urllib.parse import quote

from kalpla_core.toolkit import APIError, derive_key
from kalpla_streaming.keys import STREAM_KEY_PURPOSE, new_stream_key, rtmp_token, seal
from kalpla_streaming.models import LiveSession
from kalpla_streaming.providers import ChannelRow, Playback, ProviderContext

PUBLISH_USER = "kalpla"
API_USER = "kalpla"
API_PASSWORD_PURPOSE = "kalpla_streaming.mediamtx_api"  # noqa: S105 (a label)
API_TIMEOUT = 5


def api_credentials(hook_secret: str, institution_id: str) -> tuple[str, str]:
    """The user and password Kalpla calls an institution's MediaMTX API with, which the auth
    callback allows for the ``api`` action: the institution's own, derived from the hook
    secret. Never the hook secret itself: ``rtmp_api_url`` is the institution's setting, and
    the hook secret authenticates every institution's media server callbacks."""
    password = derive_key(hook_secret, f"{API_PASSWORD_PURPOSE}:{institution_id}").hex()
    return f"{API_USER}-{institution_id}", password

log = logging.getLogger("kalpla_streaming.rtmp")


def path_of(channel: ChannelRow) -> str:
    return f"live/{channel.id}"


class RTMPProvider:
    name = "rtmp"

    def open_channel(self, ctx: ProviderContext, channel: ChannelRow) -> None:
        if channel.rtmp_path is not None and channel.stream_key_encrypted is not None:
            return
        path = path_of(channel)
        channel.rtmp_path = path
        channel.ingest_endpoint = f"{ctx.settings['rtmp_ingest_url'].rstrip('/')}/{path}"
        channel.playback_url = (f"{ctx.settings['rtmp_playback_url'].rstrip('/')}/{path}"
                                f"/index.m3u8")
        channel.stream_key_encrypted = seal(ctx.secret_key, STREAM_KEY_PURPOSE,
                                            new_stream_key())

    def rotate_key(self, ctx: ProviderContext, channel: ChannelRow) -> None:
        channel.stream_key_encrypted = seal(ctx.secret_key, STREAM_KEY_PURPOSE,
                                            new_stream_key())

    def stop(self, ctx: ProviderContext, channel: ChannelRow) -> None:
        """Disconnect the publisher through MediaMTX's control API when it is configured.
        Either way, once the session has ended the auth callback refuses the publisher."""
        api = ctx.settings.get("rtmp_api_url")
        if not api or channel.rtmp_path is None:
            return
        # Without a hook secret the auth callback allows no api caller: the call is refused.
        credentials = api_credentials(ctx.config.hook_secret or "", channel.institution_id)
        try:
            for kind in ("rtmpconns", "rtmpsconns"):
                listed = _api(f"{api.rstrip('/')}/v3/{kind}/list", credentials)
                for conn in listed.get("items") or []:
                    if conn.get("path") == channel.rtmp_path and \
                            conn.get("state") == "publish":
                        _api(f"{api.rstrip('/')}/v3/{kind}/kick/{quote(str(conn['id']))}",
                             credentials, method="POST")
        except (OSError, ValueError) as exc:
            log.warning("MediaMTX API call failed while stopping %s: %s", channel.rtmp_path,
                        type(exc).__name__)
            raise APIError(502, "The media server could not be told to stop the stream.",
                           "streaming-provider-error") from None

    def playback(self, ctx: ProviderContext, live: LiveSession, channel: ChannelRow,
                 viewer_id: str) -> Playback:
        assert channel.rtmp_path is not None and channel.playback_url is not None
        token = rtmp_token(ctx.secret_key, session_id=live.id, path=channel.rtmp_path,
                           viewer_id=viewer_id, now=ctx.now,
                           ttl=int(ctx.settings["playback_token_ttl"]))
        return Playback(f"{channel.playback_url}?jwt={quote(token.token)}", token)


def _api(url: str, credentials: tuple[str, str], method: str = "GET") -> dict[str, Any]:
    """One call of MediaMTX's control API with the institution's :func:`api_credentials`."""
    # The URL comes from the rtmp_api_url setting, validated as http(s).
    basic = base64.b64encode(":".join(credentials).encode()).decode()
    request = urllib.request.Request(url, method=method,  # noqa: S310
                                     headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(request, timeout=API_TIMEOUT) as resp:  # noqa: S310
        body = resp.read(1024 * 1024)
    return json.loads(body) if body.strip() else {}


def publish_url(ingest_endpoint: str, stream_key: str) -> str:
    """The URL an encoder (OBS, ffmpeg) publishes to, credentials in the query."""
    return f"{ingest_endpoint}?user={PUBLISH_USER}&pass={quote(stream_key)}"
