"""bootwatch: keeps every boot entry of a host bootable.

The cache library (``bootwatch.cache.operations`` and the modules it uses) works without the daemon.
"""

__version__ = "0.1.0"
