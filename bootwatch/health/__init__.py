"""Whether each boot entry would boot: a verdict per entry, with its reasons (issue 14).

:mod:`~bootwatch.health.model` holds the verdict (:class:`EntryState`, :class:`Finding`,
:class:`EntryHealth`), :mod:`~bootwatch.health.judge` makes it from the entry inventory, the
images' facts (:mod:`~bootwatch.health.facts`, remembered by stat signature), the entry's root
(:mod:`~bootwatch.health.root`), its companions (:mod:`~bootwatch.health.companions`) and the
boot partitions' headroom (:mod:`bootwatch.cache.headroom`).
"""
