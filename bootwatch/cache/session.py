"""Opening the cache a configuration names, and one full reconcile of it.

What ``bootwatch scan`` (and the kernel-install plugin through it) shares with the daemon's
start-up, kept here so that neither a one-shot command nor the plugin loads the service's stack.
"""

from __future__ import annotations

import os

from bootwatch.cache.operations import BootCache
from bootwatch.cache.reconcile import Reconciler, ReconcileReport
from bootwatch.cache.store import LockWaiter
from bootwatch.config import Config
from bootwatch.errors import BootwatchError


def open_cache(config: Config) -> BootCache:
    """The cache of a configuration, with its directories checked (and the cache dir created)."""
    if not os.path.isdir(config.paths.boot):
        raise BootwatchError("boot directory does not exist", path=config.paths.boot,
                             hint="set [paths] boot in the configuration or pass --boot-dir")
    cache = BootCache.from_config(config)
    cache.store.check(create=True)
    return cache


def open_existing_cache(config: Config) -> BootCache:
    """The cache, for a command that only reads it: a cache directory that does not exist is no
    cache yet (:class:`~bootwatch.errors.CacheMissingError`), never an empty one, and is not created."""
    cache = BootCache.from_config(config)
    cache.store.check_existing()
    return cache


def reconcile_once(config: Config, cache: BootCache, reconciler: Reconciler | None = None, *,
                   waiter: LockWaiter | None = None) -> ReconcileReport:
    """One full reconcile in one transaction: ``bootwatch scan`` and the daemon's start-up pass.

    A pass that finds nothing changed is proved so without the lock where it can be (see
    :meth:`Reconciler.unchanged_pass`); anything else runs under the lock.
    """
    reconciler = reconciler or Reconciler(config, cache)
    quick = reconciler.unchanged_pass()
    if quick is not None:
        return quick
    with cache.transaction(waiter=waiter) as txn:
        return reconciler.full(txn)
