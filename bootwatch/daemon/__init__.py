"""The long-running service: the only home of watchdog, APScheduler and sd_notify.

Importing this package imports none of them; each module does, so that the command line can read
:mod:`bootwatch.daemon.status` without paying for the daemon's libraries.
"""
