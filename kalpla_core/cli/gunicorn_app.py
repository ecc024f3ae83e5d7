"""gunicorn run in-process: imported only when gunicorn is installed (``kalpla[server]``)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """Serves an app built (and checked) by the CLI, with gthread workers."""

    def __init__(self, app: Flask, host: str, port: int, workers: int) -> None:
        self.application = app
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        level = app.extensions["kalpla"].settings.log_level.lower()

        def post_fork(_server: Any, _worker: Any) -> None:
            # Connections opened before the fork must not be shared with the children.
            app.extensions["kalpla"].db.engine.dispose(close=False)
            # Each worker runs in-process jobs, so each sweeps for those left behind.
            app.extensions["kalpla"].jobs.start_sweeper()

        self.options: dict[str, Any] = {
            "bind": bind, "workers": workers, "worker_class": "gthread", "threads": 4,
            "loglevel": level, "post_fork": post_fork,
        }
        self.description = f"gunicorn, {workers} worker{'s' if workers > 1 else ''}"
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application
