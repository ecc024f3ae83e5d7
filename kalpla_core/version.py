"""Versions of the core distribution and of the plugin contract."""

__version__ = "0.1.0"

# The hook contract's own version: bumped (minor) when hooks are added, (major) when one is
# removed after its deprecation period. Plugins declare which core versions they support.
CONTRACT_VERSION = "1.0"
