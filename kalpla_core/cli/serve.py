"""``kalpla serve``: gunicorn where it is installed, Flask's development server otherwise."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Protocol

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from werkzeug.serving import run_simple


class Server(Protocol):
    description: str

    def run(self) -> None: ...


@dataclass
class DevServer:
    """Werkzeug's threaded server (``app.run`` is a no-op under Flask's CLI)."""

    app: Flask
    host: str
    port: int
    description: str = ("Flask development server; for production: "
                        "pip install 'kalpla[server]' to serve with gunicorn")

    def run(self) -> None:
        jobs = self.app.extensions["kalpla"].jobs
        jobs.start_sweeper()  # in-process jobs left behind by an earlier run
        try:
            run_simple(self.host, self.port, self.app, threaded=True)
        finally:
            jobs.shutdown()


def default_workers() -> int:
    return min(2 * (os.cpu_count() or 1) + 1, 8)


def gunicorn_installed() -> bool:
    return importlib.util.find_spec("gunicorn") is not None


def build_server(app: Flask, host: str, port: int, workers: int | None = None) -> Server:
    """The server ``kalpla serve`` runs: gunicorn when importable, else the dev server."""
    if not gunicorn_installed():
        return DevServer(app, host, port)
    from kalpla_core.cli.gunicorn_app import GunicornServer

    return GunicornServer(app, host, port, workers or default_workers())


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(min=1),
              help="gunicorn worker processes  [default: 2 × CPUs + 1, at most 8]")
@with_appcontext
def serve(host: str, port: int, workers: int | None) -> None:
    """Serve the API (gunicorn when installed, else Flask's development server)."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    server = build_server(app, host, port, workers)
    url = f"http://{_url_host(host)}:{port}"
    click.echo(f"Kalpla serving on {url} ({server.description})")
    click.echo(f"API docs: {url}/api/docs")
    server.run()
