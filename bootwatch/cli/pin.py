"""``bootwatch pin`` and ``bootwatch gc``: a command run with cached images pinned, and the
collection of pins whose owner died. The pin links themselves are :mod:`bootwatch.cache.pins`."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from bootwatch.cache.operations import BootCache
from bootwatch.cache.pins import Owner, boot_id, create_links, gc, image_id_from_argument, release_owner, remove_links
from bootwatch.cache.proc import process_start_time
from bootwatch.cli.output import print_json
from bootwatch.config import Config
from bootwatch.errors import EXIT_FAILURE, EXIT_OK, BootwatchError, UsageError
from bootwatch.safety import boot_path_from_argument

# COMMAND finds the pinned files in BOOTWATCH_PIN_0, BOOTWATCH_PIN_1, ...
PIN_ENV_PREFIX = "BOOTWATCH_PIN_"
# Signals that ``bootwatch pin`` passes on to COMMAND when somebody sends them to it.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGWINCH)
# si_code of a signal that the kernel generated itself (a terminal's ^C goes to the whole
# foreground process group, so COMMAND already has it and must not get it twice).
SI_KERNEL = 0x80


def command_gc(args: argparse.Namespace, config: Config) -> int:
    """``bootwatch gc [--dry-run] [--json]``: remove the pin links of dead owners."""
    report = gc(BootCache.from_config(config), dry_run=args.dry_run)
    if args.json:
        print_json(report.to_json())
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for name in report.removed:
        print(f"{verb} {name}: its owner is dead")
    for name in report.unknown:
        print(f"left alone {name}: not a bootwatch pin name")
    if not report.removed:
        print(f"nothing to collect ({len(report.kept)} live pin{'' if len(report.kept) == 1 else 's'})")
    return EXIT_OK


def command_pin(args: argparse.Namespace, config: Config) -> int:
    """``bootwatch pin [--path P | --image ID]... -- COMMAND [ARGS]``.

    The pins belong to COMMAND's process, not to ``bootwatch pin``: this process forks, the child
    makes the links with itself as owner and then execs COMMAND. exec keeps the PID and the start
    time, so the links name COMMAND's process and live exactly as long as it does, even if
    ``bootwatch pin`` is killed (with SIGKILL nothing can be forwarded; COMMAND runs on and gc
    collects its links when it exits).

    The parent waits for COMMAND, passes on the signals that somebody sends to it (not those the
    terminal sends to the whole process group: COMMAND has them already), removes the links when
    COMMAND has exited and returns COMMAND's exit status (128 + N if signal N killed it).
    A failure before exec (a path that is not cached, a command that cannot be run) is reported
    through a close-on-exec pipe: it reads EOF exactly when exec succeeded.
    """
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("pin: no COMMAND given", hint="bootwatch pin --path /vmlinuz-6.1.0 -- COMMAND [ARGS]")
    cache = BootCache.from_config(config)
    paths = [boot_path_from_argument(cache.boot_dir, p, esp=cache.esp()) for p in args.pin_paths]
    for image_id in args.pin_images:  # every argument is checked before the cache is touched
        image_id_from_argument(image_id)
    if not paths and not args.pin_images:
        raise UsageError("pin: nothing to pin", hint="give --path P or --image ID")
    return _run_pinned(cache, paths, list(args.pin_images), argv)


def _run_pinned(cache: BootCache, paths: list[str], image_ids: list[str], argv: list[str]) -> int:
    sigset = set(FORWARDED_SIGNALS) | {signal.SIGCHLD}
    # SIGCHLD must not be SIG_IGN (children would be reaped by the kernel, unseen).
    old_chld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigset)
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(cache, paths, image_ids, argv, write_fd, old_mask)  # never returns
        os.close(write_fd)
        # The child cannot be reaped before we wait for it, so its identity is stable now.
        owner = Owner(pid, process_start_time(pid) or -1, boot_id())
        with os.fdopen(read_fd, "rb") as pipe:
            failure = pipe.read()
        status = _wait_forwarding(pid, sigset)
        if os.path.lexists(cache.store.links_dir):
            release_owner(cache, owner)
        if failure:
            code, _, text = failure.decode("utf-8", "replace").partition("\n")
            message, _, hint = text.partition("\n")
            raise _ChildError(message, hint=hint or None, code=int(code))
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.waitstatus_to_exitcode(status)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGCHLD, old_chld)


class _ChildError(BootwatchError):
    def __init__(self, message: str, *, hint: str | None, code: int) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = code


def _wait_forwarding(pid: int, sigset: Iterable[int]) -> int:
    while True:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return status
        # A timeout as well, in case a SIGCHLD was merged with one that arrived before we looked.
        info = signal.sigtimedwait(sigset, 1.0)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code != SI_KERNEL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, info.si_signo)


def _child(cache: BootCache, paths: list[str], image_ids: list[str], argv: list[str], report_fd: int,
           mask: Iterable[int]) -> NoReturn:
    """In the forked child: pin with ourselves as owner, exec COMMAND. Never returns."""
    code = EXIT_FAILURE
    message, hint = "", ""
    try:
        links: list[Path] = []
        try:
            links = create_links(cache, paths=paths, image_ids=image_ids, owner=Owner.of(os.getpid()))
            env = dict(os.environ)
            for key in [k for k in env if k.startswith(PIN_ENV_PREFIX)]:
                del env[key]  # a nested pin must not pass on its parent's list as ours
            env.update({f"{PIN_ENV_PREFIX}{i}": str(link) for i, link in enumerate(links)})
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the mask survives exec: restore it
            os.execvpe(argv[0], argv, env)
        except BootwatchError as e:
            code, message, hint = e.exit_code, e.message, e.hint or ""
        except OSError as e:
            remove_links(links)
            code = 127 if e.errno == errno.ENOENT else 126  # as a shell reports it
            message = f"cannot run {argv[0]}: {os.strerror(e.errno or 0).lower()}"
        os.write(report_fd, f"{code}\n{message}\n{hint}".encode())
    except BaseException:  # never let the child return into the caller's code
        with contextlib.suppress(BaseException):
            os.write(report_fd, f"{EXIT_FAILURE}\npin: unexpected error in the child process\n".encode())
    finally:
        os._exit(code)
