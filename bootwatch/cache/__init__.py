"""The boot image cache: a library with no command line, no daemon and no third-party imports.

:class:`BootCache` (in :mod:`bootwatch.cache.operations`) is the object a caller needs; the other
modules are its parts: the on-disk protocol (:mod:`~bootwatch.cache.store`), the index
(:mod:`~bootwatch.cache.index`), hashing, reconciliation, fsck and pins; :mod:`~bootwatch.cache.session`
opens the cache a configuration names and runs one reconcile of it (``bootwatch scan``).
"""

from bootwatch.cache.operations import BootCache, PathStatus

__all__ = ["BootCache", "PathStatus"]
