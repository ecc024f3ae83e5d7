"""Kalpla: a plugin-based backend framework for e-learning platforms."""

from kalpla_core.app import create_app
from kalpla_core.version import CONTRACT_VERSION, __version__

__all__ = ["CONTRACT_VERSION", "__version__", "create_app"]
