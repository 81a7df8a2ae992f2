"""Built-in settings that the scan proof's fast path (:mod:`bootwatch.scanproof`) needs before the
configuration module is imported; :mod:`bootwatch.config` takes them from here."""

from __future__ import annotations

DEFAULT_CACHE_DIR = "/var/lib/bootwatch/cache"
CONFIG_ENV = "BOOTWATCH_CONFIG"
RUNTIME_ENV = "RUNTIME_DIRECTORY"
