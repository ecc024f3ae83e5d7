"""Ports and their providers: the core and plugins register implementations by port and name,
and configuration picks one (``KALPLA_STORAGE=s3`` → the ``storage`` port's ``s3`` provider)."""

from __future__ import annotations

from typing import Any

from kalpla_core.contract import Provider


class ProviderRegistry:
    def __init__(self) -> None:
        self._providers: dict[tuple[str, str], tuple[str, Provider]] = {}
        self._instances: dict[tuple[str, str], Any] = {}

    def register(self, plugin: str, provider: Provider) -> None:
        key = (provider.port, provider.name)
        if key in self._providers:
            other = self._providers[key][0]
            raise ValueError(f"provider {provider.name!r} of port {provider.port!r} is "
                             f"registered by both {other!r} and {plugin!r}")
        self._providers[key] = (plugin, provider)

    def names(self, port: str) -> list[str]:
        return sorted(name for p, name in self._providers if p == port)

    def get(self, port: str, name: str, app: Any) -> Any:
        """The provider object, built once per app."""
        key = (port, name)
        if key not in self._providers:
            known = ", ".join(self.names(port)) or "none"
            raise LookupError(f"no provider {name!r} for port {port!r} (known: {known})")
        if key not in self._instances:
            self._instances[key] = self._providers[key][1].factory(app)
        return self._instances[key]

    def all(self, port: str, app: Any) -> list[Any]:
        """Every provider of ``port``, built, in registration order."""
        return [self.get(p, name, app) for (p, name) in self._providers if p == port]

    def describe(self) -> list[dict[str, str]]:
        return [{"port": port, "name": name, "plugin": plugin, "description": p.description}
                for (port, name), (plugin, p) in sorted(self._providers.items())]
