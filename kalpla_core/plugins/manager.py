"""One :class:`PluginManager` per app: no plugin state is global, so two apps in one process
(tests, multi-tenant hosting) never see each other's plugins."""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from kalpla_core import hookspecs
from kalpla_core.contract import Decision, Event, PluginMeta
from kalpla_core.version import __version__

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kalpla.plugins"
CORE = "core"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,40}$")

# Top-level API names the core keeps for itself; a plugin cannot be called one of these.
RESERVED_NAMES = frozenset({
    CORE, "api", "auth", "me", "users", "institutions", "courses", "modules", "lessons",
    "enrollments", "progress", "jobs", "plugins", "audit_events", "audit", "files", "storage",
    "docs", "openapi", "health", "metrics", "admin", "mail", "api_keys", "kalpla", "idempotency",
})


class PluginError(RuntimeError):
    """A plugin cannot be loaded; the message says which and why. Start-up stops."""


@dataclass
class LoadedPlugin:
    meta: PluginMeta
    module: Any
    distribution: str | None = None
    hooks: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.meta.name


def installed_plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """Entry points of the ``kalpla.plugins`` group, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _meta_of(name: str, module: Any) -> PluginMeta:
    meta = getattr(module, "KALPLA_PLUGIN", None)
    if not isinstance(meta, PluginMeta):
        raise PluginError(f"plugin {name!r} has no KALPLA_PLUGIN = PluginMeta(...) in its module")
    if meta.name != name:
        raise PluginError(f"plugin registered as {name!r} calls itself {meta.name!r}")
    return meta


class PluginManager:
    """Loads the configured plugins and calls hooks in the documented order."""

    def __init__(self, selection: Iterable[str] | None = None,
                 extra: Mapping[str, ModuleType | Any] | None = None) -> None:
        self._pm = pluggy.PluginManager("kalpla")
        self._pm.add_hookspecs(hookspecs)
        self.available: dict[str, Any] = dict(installed_plugins())
        self.available.update(extra or {})
        self.plugins: dict[str, LoadedPlugin] = {}  # load order = call order
        from kalpla_core import core_hooks

        self._pm.register(core_hooks, name=CORE)
        names = list(selection) if selection is not None else sorted(self.available)
        for name in names:
            self._load(name)
        self._check_requirements()

    # --- loading --------------------------------------------------------------------------

    def _resolve(self, name: str) -> tuple[Any, str | None]:
        target = self.available.get(name)
        if target is None:
            known = ", ".join(sorted(self.available)) or "none"
            raise PluginError(
                f"KALPLA_PLUGINS names {name!r}, which is not installed (installed: {known})")
        if isinstance(target, importlib.metadata.EntryPoint):
            try:
                module = target.load()
            except Exception as exc:
                raise PluginError(f"plugin {name!r} failed to import: {exc}") from exc
            dist = target.dist.name if target.dist else None
            return module, dist
        return target, None

    def _load(self, name: str) -> None:
        if not _NAME_RE.match(name):
            raise PluginError(f"plugin name {name!r} must be lower-case letters, digits and _")
        if name in RESERVED_NAMES:
            raise PluginError(f"plugin name {name!r} is reserved by the core")
        module, dist = self._resolve(name)
        meta = _meta_of(name, module)
        try:
            supported = SpecifierSet(meta.core_requires)
        except InvalidSpecifier as exc:
            raise PluginError(f"plugin {name!r} has an invalid core_requires: {exc}") from exc
        if Version(__version__) not in supported:
            raise PluginError(
                f"plugin {name!r} {meta.version} supports kalpla {meta.core_requires}; "
                f"this is kalpla {__version__}")
        try:
            self._pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} implements a hook wrongly: {exc}") from exc
        hooks = sorted(
            impl_hook.name for impl_hook in self._pm.get_hookcallers(module) or ())
        self.plugins[name] = LoadedPlugin(meta=meta, module=module, distribution=dist,
                                          hooks=hooks)

    def _check_requirements(self) -> None:
        for plugin in self.plugins.values():
            missing = [r for r in plugin.meta.requires if r not in self.plugins]
            if missing:
                raise PluginError(
                    f"plugin {plugin.name!r} requires {', '.join(map(repr, missing))}, "
                    "which is not loaded; add it to KALPLA_PLUGINS")

    # --- introspection --------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.plugins)

    def describe_available(self) -> list[dict[str, Any]]:
        """Every installed plugin: loaded ones with their hooks, others by metadata if readable."""
        out = []
        for name in sorted(set(self.available) | set(self.plugins)):
            if name in self.plugins:
                p = self.plugins[name]
                out.append({"name": name, "version": p.meta.version, "label": p.meta.label,
                            "description": p.meta.description,
                            "core_requires": p.meta.core_requires,
                            "requires": list(p.meta.requires), "hooks": p.hooks,
                            "loaded": True, "error": None})
                continue
            try:
                module, _ = self._resolve(name)
                meta = _meta_of(name, module)
                out.append({"name": name, "version": meta.version, "label": meta.label,
                            "description": meta.description,
                            "core_requires": meta.core_requires,
                            "requires": list(meta.requires), "hooks": [], "loaded": False,
                            "error": None})
            except PluginError as exc:
                out.append({"name": name, "version": None, "label": "", "description": "",
                            "core_requires": None, "requires": [], "hooks": [],
                            "loaded": False, "error": str(exc)})
        return out

    def migration_locations(self, include_unloaded: bool = True) -> dict[str, Path]:
        """Each plugin's Alembic versions folder. Unloaded but installed plugins are included,
        so a database that has their revisions can still be read and downgraded."""
        out: dict[str, Path] = {}
        for name, result in self.call_each("kalpla_migrations"):
            if result:
                out[name] = Path(result)
        if include_unloaded:
            for name in self.available:
                if name in self.plugins or name in out:
                    continue
                try:
                    module, _ = self._resolve(name)
                except PluginError:
                    continue
                fn = getattr(module, "kalpla_migrations", None)
                if callable(fn) and fn():
                    out[name] = Path(fn())
        return out

    # --- calling --------------------------------------------------------------------------

    def _impls(self, hook: str, only: Iterable[str] | None = None) -> list[Any]:
        """Implementations of ``hook`` in call order: core first, then load order."""
        caller = getattr(self._pm.hook, hook)
        by_plugin = {impl.plugin_name: impl for impl in caller.get_hookimpls()}
        order = [CORE, *self.plugins]
        allowed = None if only is None else {CORE, *only}
        return [by_plugin[n] for n in order
                if n in by_plugin and (allowed is None or n in allowed)]

    def call_each(self, hook: str, only: Iterable[str] | None = None,
                  **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on each implementing plugin in order; ``(plugin, result)`` pairs.
        An exception propagates (registration and gates must not fail silently)."""
        return [(impl.plugin_name, impl.function(**kwargs)) for impl in self._impls(hook, only)]

    def collect(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Registration hooks returning lists: flattened ``(plugin, item)`` pairs."""
        out = []
        for name, result in self.call_each(hook, **kwargs):
            for item in result or ():
                out.append((name, item))
        return out

    def gate(self, hook: str, enabled: Iterable[str], **kwargs: Any) -> Decision:
        """Run a gate over the enabled plugins: the first deny wins, otherwise the first
        pending holds, otherwise allow."""
        pending: Decision | None = None
        for name, result in self.call_each(hook, only=enabled, **kwargs):
            if result is None:
                continue
            if not isinstance(result, Decision):
                raise PluginError(f"plugin {name!r} answered {hook} with {result!r}, "
                                  "not a Decision or None")
            decision = Decision(result.outcome, result.reason, result.code, result.action, name)
            if decision.outcome == "deny":
                return decision
            if decision.outcome == "pending" and pending is None:
                pending = decision
        return pending or Decision.allow()

    def notify(self, hook: str, event: Event, enabled: Iterable[str] | None) -> list[str]:
        """Deliver an event to each enabled plugin; a failing one is logged and skipped.
        Returns the names of plugins that failed."""
        failed = []
        for impl in self._impls(hook, enabled):
            try:
                impl.function(event=event)
            except Exception:
                failed.append(impl.plugin_name)
                log.exception("event handler failed",
                              extra={"plugin": impl.plugin_name, "event": event.name})
        return failed
