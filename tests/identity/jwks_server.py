"""A key set served over HTTP on 127.0.0.1, with keys the tests control and sign with."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.identity.oidc_provider import new_rsa_key, public_jwk


@dataclass
class KeySetServer:
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)  # kid -> private key
    fetches: int = 0
    url: str = ""

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        self.keys[kid] = new_rsa_key()
        return self.keys[kid]

    def sign(self, claims: dict[str, Any], kid: str,
             key: rsa.RSAPrivateKey | None = None) -> str:
        """An RS256 token naming ``kid``, signed by that key (or by ``key`` instead)."""
        return jwt.encode(claims, key or self.keys[kid], algorithm="RS256",
                          headers={"kid": kid})


@contextmanager
def running_key_set() -> Iterator[KeySetServer]:
    state = KeySetServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.fetches += 1
            body = json.dumps({"keys": [public_jwk(k, kid)
                                        for kid, k in state.keys.items()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # anything else an app might call: refused
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
