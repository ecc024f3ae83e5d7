"""Plugin discovery, loading, ordering and per-institution dispatch."""

from kalpla_core.plugins.manager import ENTRY_POINT_GROUP, LoadedPlugin, PluginError, PluginManager

__all__ = ["ENTRY_POINT_GROUP", "LoadedPlugin", "PluginError", "PluginManager"]
