"""Security checks for the directories bootwatch writes to and the paths it is given.

The cache directory is checked as libguestfs checked its appliance cache: a cache that another user
can write to is a way to make bootwatch restore an attacker's kernel into /boot. A path that comes
from the index, a BLS entry or the command line is a string that may try to escape the boot
directory with ``..`` or a symlink; nothing is opened until it has been resolved and confined.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from bootwatch import linux
from bootwatch.errors import (
    BootwatchError,
    FileTooLargeError,
    NotRegularFileError,
    UnsafeDirectoryError,
    UnsafePathError,
    UsageError,
)

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The directories above are only walked through and fstat'ed: O_PATH needs no read permission.
_PARENT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_private_directory(directory: Path, *, create: bool = False) -> int:
    """Open the cache directory, check it and every directory above it, and return the descriptor.

    The descriptor is what bootwatch then works in (``dir_fd=``): checking a name and then using
    the name again lets whoever can rename something on the way swap another directory in between
    (``rename(RENAME_EXCHANGE)``), and root would restore the other directory's image into /boot.

    As libguestfs did for its appliance cache, every directory from ``/`` down must be owned by
    root or the running user and not writable by group or other unless it is sticky (``/tmp``):
    nobody else can then rename anything on the way. The walk goes from ``/`` by descriptor, one
    component at a time with ``O_NOFOLLOW``, checking ``fstat`` of what was opened; symlinks among
    the parents are resolved first (``/var/run -> /run``) and the directories they lead to are
    the ones checked. The cache directory itself (see :func:`check_private_fd`) must not be a
    symlink. With ``create``, missing directories are made: parents 0755, the cache 0700.
    """
    directory = Path(os.path.abspath(directory))
    parent = Path(os.path.realpath(directory.parent))
    fd = os.open("/", _PARENT_FLAGS)
    try:
        current = Path("/")
        _check_parent(fd, current)
        for part in parent.parts[1:]:
            current = current / part
            parent_fd, fd = fd, -1  # _open_below closes it, whatever happens
            fd = _open_below(parent_fd, part, current, create=create, mode=0o755, parent=True, missing=directory,
                             flags=_PARENT_FLAGS)
            _check_parent(fd, current)
        if directory.name:
            parent_fd, fd = fd, -1
            fd = _open_below(parent_fd, directory.name, directory, create=create, mode=0o700, parent=False)
        check_private_fd(fd, directory)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def _open_below(parent_fd: int, name: str, path: Path, *, create: bool, mode: int, parent: bool,
                missing: Path | None = None, flags: int = _DIRECTORY_FLAGS) -> int:
    """Open the directory ``name`` in ``parent_fd`` (which is closed here) without following a symlink.

    ``missing`` is what a "does not exist" error names (the cache directory, for a missing parent).
    """
    try:
        try:
            return os.open(name, flags, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise UnsafeDirectoryError("does not exist", path=missing or path,
                                           hint="create it, or run a command that writes to the cache") from None
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
        return os.open(name, flags, dir_fd=parent_fd)
    except OSError as e:
        raise _not_a_directory(parent_fd, name, path, e, parent=parent) from None
    finally:
        os.close(parent_fd)


def _not_a_directory(parent_fd: int, name: str, path: Path, error: OSError, *, parent: bool) -> BootwatchError:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        if parent:  # resolved a moment ago: someone swapped a symlink in
            return UnsafeDirectoryError("became a symlink while the cache directory was opened", path=path)
        return UnsafeDirectoryError("is a symlink; refusing to use it as (part of) the cache directory", path=path,
                                    hint="point the cache at the real directory; bootwatch never follows a "
                                         "symlink out of it")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        return UnsafeDirectoryError("is not a directory", path=path)
    return UnsafeDirectoryError(f"cannot be opened: {os.strerror(error.errno or 0).lower()}", path=path)


def _check_parent(fd: int, path: Path) -> None:
    """A directory above the cache: owned by root or the running user, not writable by others unless sticky."""
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeDirectoryError(f"is owned by uid {st.st_uid}; a directory above the cache directory must be "
                                   "owned by root or the running user", path=path,
                                   hint="move the cache to a directory that only root (or you) can change")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeDirectoryError(f"is writable by group or other (mode {stat.S_IMODE(st.st_mode):04o}) and not "
                                   "sticky; a directory above the cache directory must not be", path=path,
                                   hint=f"chmod go-w {path}, or move the cache elsewhere")


def check_private_fd(fd: int, directory: Path) -> None:
    """The cache directory (or a subdirectory of it), as opened: owned by the running user, not
    writable by group or other. ``directory`` only names it in the error."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectoryError("is not a directory", path=directory)
    if st.st_uid != os.geteuid():
        # The usual case is a user running a command on root's cache: say so, not "chown it".
        hint = ("run bootwatch as root (sudo bootwatch ...), or use a cache of your own with --cache-dir"
                if st.st_uid == 0 else f"chown {os.geteuid()} {directory}")
        raise UnsafeDirectoryError(f"is owned by uid {st.st_uid}, not by the running user (uid {os.geteuid()})",
                                   path=directory, hint=hint)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectoryError(f"is writable by group or other (mode {stat.S_IMODE(st.st_mode):04o})",
                                   path=directory, hint=f"chmod go-w {directory}")


def open_private_subdirectory(parent_fd: int, name: str, path: Path, *, create: bool = False) -> int | None:
    """Open ``name`` (``.tmp``, ``links``, ``lost+found``) relative to the checked cache directory
    and check it as the cache directory is checked; None if it is absent and not ``create``."""
    if not create:
        try:
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
    fd = _open_below(os.dup(parent_fd), name, path, create=create, mode=0o700, parent=False)
    try:
        check_private_fd(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def listing(dir_fd: int) -> Iterator[Iterator[os.DirEntry[str]]]:
    """The entries of the open directory ``dir_fd``, read through a descriptor of its own.

    ``os.scandir(fd)`` and ``os.listdir(fd)`` read a dup of ``fd``, and a dup shares the file
    offset: two threads listing one shared descriptor at once (the daemon's worker and a job)
    each see part of the directory, often nothing, and a missing corrupt copy turns clean's
    deletion block off. A fresh open of ``.`` relative to it is a new open file description: the
    same directory (never another one swapped in at its name), read from its start.
    """
    fd = os.open(".", _DIRECTORY_FLAGS, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as entries:
            yield entries
    finally:
        os.close(fd)


def check_private_directory(directory: Path, *, create: bool = False) -> Path:
    """Return ``directory`` if it is safe to keep cached images in, else raise (see :func:`open_private_directory`)."""
    os.close(open_private_directory(directory, create=create))
    return directory


def is_unicode_text(text: str) -> bool:
    """True if ``text`` encodes as UTF-8: it holds no surrogate code point (U+D800 to U+DFFF).

    Strict, not ``surrogateescape``: the index is JSON shared with boom and other tools, whose
    strings are Unicode text; a name that is not cannot be matched by exact string, written to
    JSON portably, or printed.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_boot_path(path: str) -> str:
    """Check a cache key (boom's path, relative to the boot directory) and return it.

    A key is ``/vmlinuz-6.1.0``: absolute in boom's sense, no ``.`` or ``..`` component, no empty
    component, no NUL and no newline. An ESP key (:mod:`bootwatch.entries.inventory`) starts with
    one or more ``..`` components and then is such a path (``/../efi/EFI/Linux/arch.efi``): where it
    may lead is for :func:`resolve_in_boot` to decide, which knows the ESP. It is returned unchanged:
    boom matches BLS entries by exact string, so bootwatch must not rewrite it. It must be valid
    Unicode (no lone surrogate, as JSON's ``"\\ud800"`` gives): every file name bootwatch derives
    from it is encoded as UTF-8, and a name no file can have is refused here, as corrupt, instead of
    failing in ``lstat``.
    """
    if not is_unicode_text(path):
        raise UnsafePathError("is not valid Unicode (it holds a lone surrogate)", path=repr(path))
    if not path.startswith("/"):
        raise UnsafePathError("is not a boom-style path: it must start with '/'", path=repr(path))
    if "\0" in path or "\n" in path:
        raise UnsafePathError("contains a NUL or newline character", path=repr(path))
    parts = path[1:].split("/")
    ups = len(parts) - len(list(itertools.dropwhile(lambda part: part == "..", parts)))
    if path == "/" or ups == len(parts) or any(part in ("", ".", "..") for part in parts[ups:]):
        raise UnsafePathError("has an empty, '.' or '..' component", path=path)
    return path


def is_esp_key(path: str) -> bool:
    """Whether the cache key ``path`` names a file outside the boot directory (``/../efi/...``)."""
    return path.startswith("/../")


def boot_path_from_argument(boot_dir: Path, argument: str, *, esp: Path | None = None) -> str:
    """Turn a command line PATH into a cache key; a PATH that is none is a usage error (exit 2).

    ``/vmlinuz-6.1.0`` is taken as relative to the boot directory. An absolute path that lies
    inside the boot directory (``/boot/vmlinuz-6.1.0``) is accepted too, existing or not, unless only
    the boom-style reading names an existing file, so that both spellings a sysadmin might type work.
    So is one on the ESP ``esp`` (``/efi/EFI/Linux/arch.efi``), and its key (``/../efi/EFI/Linux/arch.efi``).
    """
    try:
        key = _boot_path_from_argument(boot_dir, argument, esp)
        if is_esp_key(key):
            _partition_of(Path(os.path.realpath(boot_dir)), key, esp)
        return key
    except UnsafePathError as e:
        raise UsageError(e.message, hint="give a boom-style path like /vmlinuz-6.1.0, or a path inside "
                                         f"the boot directory {boot_dir}") from None


def _boot_path_from_argument(boot_dir: Path, argument: str, esp: Path | None) -> str:
    boot_real = os.path.realpath(boot_dir)
    absolute = os.path.normpath(os.path.abspath(argument))
    boot_given = os.path.normpath(os.path.abspath(boot_dir))
    # The absolute spelling must also work for a file that does not exist: "restore /boot/vmlinuz"
    # is typed exactly when the file is gone. It yields only when the boom-style reading names a
    # file that exists and the absolute one does not.
    absolute_wins = os.path.lexists(absolute) or not os.path.lexists(os.path.join(boot_given, argument.lstrip("/")))
    if absolute.startswith(boot_real.rstrip("/") + "/") and absolute_wins:
        relative = absolute[len(boot_real.rstrip("/")):]
        return normalize_boot_path(relative)
    if absolute.startswith(boot_given.rstrip("/") + "/") and absolute_wins:
        return normalize_boot_path(absolute[len(boot_given.rstrip("/")):])
    esp_real = os.path.realpath(esp) if esp is not None else None
    if esp_real is not None and absolute.startswith(esp_real.rstrip("/") + "/") and absolute_wins \
            and not argument.startswith("/../"):
        return normalize_boot_path("/" + os.path.relpath(absolute, boot_real))
    return normalize_boot_path(argument)


def _partition_of(boot_real: Path, path: str, esp: Path | None) -> tuple[Path, str]:
    """The directory a key is below (the boot directory, or the ESP for a ``/../`` key) and the
    key relative to it. A ``/../`` key must land inside the ESP, and be written as the inventory
    writes it (the path from the boot directory to the file, :func:`os.path.relpath`): anything
    else (``/../../etc/shadow``, ``/../boot/vmlinuz``) is refused, never read or written."""
    if not is_esp_key(path):
        return boot_real, path
    if esp is None:
        raise UnsafePathError("is outside the boot directory, and no ESP is known", path=path,
                              hint="a key starting with /../ names a file on the ESP ([entries] esp)")
    esp_real = os.path.realpath(esp)
    landing = os.path.normpath(str(boot_real) + path)
    if esp_real == "/" or not landing.startswith(esp_real + "/") or \
            "/" + os.path.relpath(landing, boot_real) != path:
        raise UnsafePathError(f"lands at {landing}, outside the boot directory {boot_real} and the ESP {esp_real}",
                              path=path, hint="bootwatch reads and writes only in the boot directory and on the ESP")
    return Path(esp_real), landing[len(esp_real):]


def resolve_in_boot(boot_dir: Path, path: str, *, boot_real: Path | None = None, esp: Path | None = None) -> Path:
    """Return the real file that the boom-style ``path`` names inside ``boot_dir`` (or, for an ESP
    key, ``/../efi/...``, on the ESP ``esp``: see :func:`_partition_of`).

    Symlinks are followed only while they stay inside the boot directory (Debian and Fedora keep
    ``vmlinuz -> vmlinuz-6.1.0`` style links), or inside the ESP for an ESP key. A link that leads
    out of it raises :class:`UnsafePathError`. The file need not exist; its parent chain is
    resolved as far as it does. ``boot_real`` is the already resolved boot directory, for callers
    that resolve many paths.
    """
    normalize_boot_path(path)
    if boot_real is None:
        boot_real = Path(os.path.realpath(boot_dir))
    root, relative = _partition_of(boot_real, path, esp)
    name = relative[1:]
    if "/" not in name:
        # A file at the top of the boot directory: only the file itself can be a symlink.
        direct = root / name
        try:
            if not stat.S_ISLNK(os.lstat(direct).st_mode):
                return direct
        except FileNotFoundError:
            return direct
    candidate = Path(os.path.realpath(root / PurePosixPath(name)))
    if candidate != root and root not in candidate.parents:
        raise UnsafePathError(f"resolves to {candidate}, outside the boot directory {root}", path=path,
                              hint="bootwatch never follows a symlink out of the boot directory")
    return candidate


def name_in_boot(boot_dir: Path, path: str, *, boot_real: Path | None = None, esp: Path | None = None) -> Path:
    """The name that the boom-style ``path`` is inside ``boot_dir`` (or on the ESP ``esp``): its
    directory resolved as :func:`resolve_in_boot` resolves it, its last component as it is, never
    followed.

    What a restore writes and what bootwatch may delete again is this name: a symlink there
    (``/vmlinuz -> vmlinuz-6.1.0``) is not the file it names, which other entries may need.
    """
    normalize_boot_path(path)
    if boot_real is None:
        boot_real = Path(os.path.realpath(boot_dir))
    root, relative = _partition_of(boot_real, path, esp)
    parent, name = relative.rsplit("/", 1)
    if not parent:
        return root / name
    directory = Path(os.path.realpath(root / PurePosixPath(parent[1:])))
    if directory != root and root not in directory.parents:
        raise UnsafePathError(f"its directory resolves to {directory}, outside the boot directory {root}",
                              path=path, hint="bootwatch never follows a symlink out of the boot directory")
    return directory / name


def open_nofollow(path: Path, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """``open(2)`` with ``O_NOFOLLOW | O_CLOEXEC``: a symlink swapped in after resolving fails with ELOOP."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "directory"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symlink"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words: "FIFO", "directory", ..."""
    return next((name for test, name in _KINDS if test(mode)), "special file")


# linux/magic.h: filesystems whose "regular files" are the kernel's interfaces, not data. Their
# size says nothing (0 for /proc/kmsg, 4096 for sysfs attributes) and a read may block
# (/proc/kmsg waits for kernel messages, and consumes them) or never end. No boot file, entry,
# index or configuration bootwatch reads lives there.
PSEUDO_FILESYSTEMS = {
    0x9FA0: "procfs", 0x62656572: "sysfs", 0x64626720: "debugfs", 0x74726163: "tracefs",
    0x73636673: "securityfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2", 0x62656570: "configfs",
    0x6165676C: "pstore", 0xCAFE4A11: "bpf", 0xDE5E81E4: "efivarfs", 0xF97CFF8C: "selinuxfs",
    0x43415D53: "smackfs", 0x1CD1: "devpts", 0x65735543: "fusectl", 0x42494E4D: "binfmt_misc",
}


def filesystem_magic(fd: int) -> int | None:
    """The magic number of the filesystem ``fd`` is on (:func:`bootwatch.linux.filesystem_type`);
    None if it cannot be told."""
    try:
        return linux.filesystem_type(fd)
    except OSError:
        return None


def open_regular(path: os.PathLike[str] | str, *, dir_fd: int | None = None,
                 follow_symlinks: bool = False, display: os.PathLike[str] | str | None = None,
                 max_size: int | None = None, device: tuple[int, os.PathLike[str] | str] | None = None) -> int:
    """Open a regular file for reading, never blocking on what the name turned out to be.

    Every file bootwatch reads (boot files, images, the index, entries) goes through here. A FIFO
    planted under one of those names would block a plain ``open(2)`` until some writer came, and
    the caller often holds the writers' lock: so the open is ``O_NONBLOCK`` (which also keeps it
    from waiting for a device), and ``fstat`` on the descriptor, not on the name, decides. Anything
    but a regular file raises :class:`NotRegularFileError`, and so does a "regular file" of a
    kernel interface (:data:`PSEUDO_FILESYSTEMS`: ``/proc/kmsg`` passes ``S_ISREG`` and its read
    blocks). ``O_NONBLOCK`` stays set: a regular file's reads ignore it, and whatever slipped
    through the checks fails with ``EAGAIN`` instead of blocking. ``O_NOFOLLOW`` unless
    ``follow_symlinks``; ``O_NOCTTY`` in case the name is a terminal.

    ``device``: ``(st_dev, directory)``: the file must be on that filesystem (a symlink that leads
    out of the directory's filesystem is refused, naming the directory). ``max_size``: a larger
    file raises :class:`FileTooLargeError` before anything is read. ``display`` is what an error
    names (the full path of a name relative to ``dir_fd``).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    name = os.fspath(path if display is None else display)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(name, file_kind(st.st_mode))
        pseudo = PSEUDO_FILESYSTEMS.get(filesystem_magic(fd) or 0)
        if pseudo is not None:
            raise NotRegularFileError(name, "", what=f"is a file of the kernel's {pseudo}, not a regular file")
        if device is not None and st.st_dev != device[0]:
            raise NotRegularFileError(name, "", what=f"is on another filesystem than {device[1]} "
                                                     "(a symlink that leads out of it)")
        if max_size is not None and st.st_size > max_size:
            raise FileTooLargeError(name, max_size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: os.PathLike[str] | str, *, dir_fd: int | None = None, follow_symlinks: bool = False,
                 limit: int, display: os.PathLike[str] | str | None = None,
                 device: tuple[int, os.PathLike[str] | str] | None = None) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`) that bootwatch reads whole.

    Every such read has a bound, ``limit``, for what the file is (the index, an entry, the
    configuration...): a larger file raises :class:`FileTooLargeError` naming it, checked on the
    ``fstat`` of the opened descriptor before the first read and again while reading, since a file
    can grow meanwhile (or, on a filesystem that does not know sizes, say 0). At most ``limit + 1``
    bytes are ever read, so a huge or endless file costs no memory and no time.
    """
    fd = open_regular(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks, display=display, max_size=limit,
                      device=device)
    try:
        return read_bounded(fd, limit, path if display is None else display)
    finally:
        os.close(fd)


def read_bounded(fd: int, limit: int, name: os.PathLike[str] | str) -> bytes:
    """Everything left to read at ``fd``, if that is at most ``limit`` bytes; else
    :class:`FileTooLargeError` naming ``name``, after reading no more than ``limit + 1`` bytes."""
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(max(size - total + 1, 1 << 16), limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:  # it grew since the fstat
            raise FileTooLargeError(os.fspath(name), limit)
