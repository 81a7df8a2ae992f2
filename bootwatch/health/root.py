"""Whether the root an entry boots holds its kernel's modules (``lib/modules/<release>``).

**Which root.** The entry's options (a UKI's ``.cmdline`` is in them already) name it, as the
initramfs reads them: the last ``root=``, and ``rootflags=``'s ``subvol=`` on btrfs. bootwatch
resolves it only where that needs no guess:

* ``root=`` names a block device: ``UUID=``, ``PARTUUID=``, ``LABEL=``, ``PARTLABEL=`` through the
  links udev makes in ``/dev/disk/by-*`` (as the initramfs finds them; blkid is never run),
  ``/dev/...`` (``/dev/disk/by-id/...``, ``/dev/mapper/...``) and ``MAJOR:MINOR`` (of a block
  device, ``/sys/dev/block``). Anything else (no ``root=``, ``/dev/nfs``, ``nfs:``, ``zfs:``,
  ``live:``, a hex device number) is UNKNOWN, and so is a device that is not there (another
  disk's UUID);
* that device's filesystem must be mounted here: a mount whose ``major:minor`` is that device's,
  or a btrfs mounted from any member device of the filesystem the device belongs to (its source,
  and the members the kernel lists in ``/sys/fs/btrfs/<fsid>/devices``);
* the part of it the kernel mounts as ``/``: the whole filesystem, or on btrfs the subvolume
  ``subvol=`` names (``@``, a snapper or grub-btrfs snapshot ``@/.snapshots/12/snapshot``). It is
  reached through a mount that shows it or a subvolume above it (mountinfo's root field says which
  each mount shows): ``@/.snapshots/12/snapshot`` is ``/.snapshots/12/snapshot`` below a mount of
  ``@`` at ``/``. That covers the running root (the mount at ``/``), a snapshot on a mounted btrfs
  and the snapshot paths grub-btrfs names. Every step of the walk must stay on that mount (statx's
  mount id): a path another mount covers is not the filesystem's, and is UNKNOWN. Without
  ``subvol=`` the kernel mounts ``subvolid=``'s subvolume, or else the filesystem's default one
  (``btrfs subvolume set-default``: openSUSE's rollbacks); its path is read from the filesystem
  as ``btrfs subvolume get-default`` and ``list`` read it
  (:func:`bootwatch.linux.btrfs_subvolume_path`, which needs CAP_SYS_ADMIN: without it, UNKNOWN).

**The verdict.** Inside that root, ``usr/lib/modules/<release>`` or ``lib/modules/<release>``:

* a directory that holds anything: the modules are there (no finding);
* neither, while the root has a ``usr/lib/modules`` or ``lib/modules``: BROKEN (the snapshot
  rollback that boots a kernel whose modules the snapshot never had); the finding names the
  releases the root does hold;
* an empty directory: BROKEN as well. What is left after a package removal, or a snapshot taken
  mid-upgrade: no module of that kernel can be loaded, which is what "not there" costs too;
* a root without any ``lib/modules`` at all: UNKNOWN, not BROKEN. A kernel built without modules
  boots from such a root, and NixOS keeps its modules in the store, not under ``/lib``;
* the subvolume ``subvol=`` names is not on the filesystem while a mount shows the subvolume
  above it (a deleted snapshot a stale ``grub-btrfs.cfg`` still offers), or is a directory and not
  a subvolume, or the filesystem has no subvolume of the id ``subvolid=`` names: BROKEN, the
  kernel cannot mount that root at all.

**Untrusted.** The root's files are another system's: the walk is by descriptor, one component at
a time with ``O_NOFOLLOW``, ``lstat`` decides, and a symlink in the root (usrmerge's ``/lib ->
usr/lib``, an absolute ``/lib -> /usr/lib``) is resolved as that system would resolve it, inside
the root: an absolute target starts again at the root, ``..`` stops at it, never the host's
``/``. At most :data:`MAX_SYMLINKS` symlinks, as the kernel's limit. Nothing in the root is
opened for reading but directories (``O_NONBLOCK``), to list them.

**Files in a snapshot.** :meth:`RootCheck.locate` finds, by the same walk, a file an entry names
on a filesystem by its UUID (GRUB's ``search --fs-uuid``) where the inventory gives it no place:
the kernel and initramfs of a grub-btrfs snapshot entry on a btrfs root with ``/boot`` inside it
(``/@/.snapshots/12/snapshot/boot/vmlinuz-linux``), so that the host check reads the kernel's
release from the snapshot's own image and checks it against the snapshot's modules.

The mounts are read once per :class:`RootCheck`, which a host check makes once for all entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootwatch import linux
from bootwatch.entries.model import BootFile, Entry
from bootwatch.errors import printable
from bootwatch.health.model import Check, EntryState, Finding
from bootwatch.linux import MountInfo
from bootwatch.safety import file_kind

DISK_LINKS = Path("/dev/disk")
BTRFS_SYSFS = Path("/sys/fs/btrfs")
SYS_DEV_BLOCK = Path("/sys/dev/block")
MAX_SYMLINKS = 40
"""The kernel's own limit on symlinks followed in one path lookup (``MAXSYMLINKS``)."""

_TAGS = {"UUID": "by-uuid", "PARTUUID": "by-partuuid", "LABEL": "by-label", "PARTLABEL": "by-partlabel"}
_NETWORK_ROOTS = ("/dev/nfs", "nfs", "cifs:", "iscsi:", "nbd:", "dhcp")
_MODULE_DIRS = (("usr", "lib", "modules"), ("lib", "modules"))
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_SHOWN_RELEASES = 6
_LISTED_RELEASES = 1000


# ------------------------------------------------------------------------------ the options

@dataclass(frozen=True)
class RootOptions:
    """What an entry's options say of its root."""

    root: str | None
    """The last ``root=``'s value (as the kernel, dracut, systemd and initramfs-tools take it)."""
    rootflags: tuple[str, ...] = ()
    """Every ``rootflags=`` value, in order."""

    @classmethod
    def of(cls, options: str) -> RootOptions:
        root: str | None = None
        flags: list[str] = []
        for word in _words(options):
            if word == "--":
                break  # what follows is init's
            name, sep, value = word.partition("=")
            if not sep:
                continue
            if value.startswith('"'):
                value = value[1:-1] if value.endswith('"') and len(value) > 1 else value[1:]
            if name == "root":
                root = value
            elif name == "rootflags":
                flags.append(value)
        return cls(root, tuple(flags))

    @property
    def subvolume(self) -> tuple[str | None, str | None] | str:
        """``(subvol, subvolid)`` as btrfs gets them (the last of each), or why that cannot be told.

        systemd's initramfs joins every ``rootflags=`` with commas, the kernel, dracut and
        initramfs-tools take the last one: when the two readings differ, which one counts depends
        on the initramfs."""
        joined = _btrfs_subvolume(",".join(self.rootflags))
        last = _btrfs_subvolume(self.rootflags[-1] if self.rootflags else "")
        if joined != last:
            return (f"the options give rootflags= {len(self.rootflags)} times, and which subvolume counts "
                    "depends on the initramfs (systemd joins them, the others take the last)")
        return last


def _words(options: str) -> Iterator[str]:
    """The kernel's split of a command line: on spaces outside double quotes, the quote that opens
    a word dropped with the one that closes it (``"root=LABEL=my root"``)."""
    current: list[str] = []
    quoted = False
    for ch in options + " ":
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if current:
                word = "".join(current)
                if word.startswith('"'):
                    word = word[1:-1] if word.endswith('"') and len(word) > 1 else word[1:]
                yield word
                current = []
            continue
        current.append(ch)


def _btrfs_subvolume(flags: str) -> tuple[str | None, str | None]:
    subvol = subvolid = None
    for option in flags.split(","):
        name, sep, value = option.partition("=")
        if sep and name == "subvol":
            subvol = value
        elif sep and name == "subvolid":
            subvolid = value
    return subvol, subvolid


def subvolume_path(subvol: str) -> str | None:
    """``subvol=``'s value as mountinfo's root field shows that subvolume (``@`` is ``/@``): the
    path from the top level; None when it is no such path (a ``..`` component)."""
    parts = [p for p in subvol.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in subvol:
        return None
    return "/" + "/".join(parts)


def udev_encoded(value: str) -> str:
    """A tag value as udev writes it in a ``/dev/disk/by-*`` link name (``encode_devnode_name``):
    ASCII letters, digits and ``#+-.:=@_`` and non-ASCII characters as they are, every other
    character (space, ``/``, ``\\``) as ``\\xHH``."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "#+-.:=@_") or not ch.isascii()
                   else "".join(f"\\x{b:02x}" for b in ch.encode()) for ch in value)


# ------------------------------------------------------------------------------ the walk

@dataclass(frozen=True)
class _Found:
    fd: int
    """An ``O_PATH`` descriptor of the directory; the caller closes it."""


@dataclass(frozen=True)
class _Absent:
    what: str
    """Why the path is not a directory: "missing", "is a regular file"..."""


def _resolve_dir(root_fd: int, parts: Sequence[str]) -> _Found | _Absent:
    """The directory ``parts`` names inside the root ``root_fd``, symlinks resolved inside it.

    OSError for what cannot be read (EACCES, EIO; ELOOP after :data:`MAX_SYMLINKS` symlinks)."""
    stack: list[int] = []  # descriptors of the directories below the root walked into, deepest last
    todo = list(reversed(parts))
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name in ("", ".", ".."):
                if name == ".." and stack:  # never above the root
                    os.close(stack.pop())
                continue
            here = stack[-1] if stack else root_fd
            try:
                st = os.stat(name, dir_fd=here, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return _Absent("missing")
            if stat.S_ISLNK(st.st_mode):
                links += 1
                target = _link_target(name, here, links)
                if target.startswith("/"):  # the root's own /, as that system resolves it
                    while stack:
                        os.close(stack.pop())
                todo.extend(reversed(target.split("/")))
            elif stat.S_ISDIR(st.st_mode):
                # O_NOFOLLOW | O_DIRECTORY: a symlink or file swapped in since the lstat fails here.
                stack.append(os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=here))
            else:
                return _Absent(f"is a {_kind(st.st_mode)}, not a directory" if not todo else "missing")
        return _Found(stack.pop() if stack else os.dup(root_fd))
    finally:
        for fd in stack:
            os.close(fd)


def resolve_on_filesystem(top: Path, path: Path) -> Path | None:
    """Where ``path``, below ``top``, the mount point of a filesystem of its own (a separate
    ``/boot``, an ESP), is as a boot loader finds it, reading that filesystem alone: every
    symlink on the way resolved inside it as :func:`_resolve_dir` resolves a root's (an absolute
    target starts again at ``top``, ``..`` stops at it). The result has no symlink in it; its
    last component may be missing (a link that resolves nowhere on the filesystem). None: a link
    loops or cannot be read, or ``top`` cannot be opened."""
    parts = [p for p in path.relative_to(top).parts if p != "/"]
    try:
        top_fd = os.open(top, _PATH_FLAGS | os.O_DIRECTORY)
    except OSError:
        return None
    links = 0
    try:
        while True:
            *directory, name = parts or ["."]
            found = _resolve_dir(top_fd, directory)
            if isinstance(found, _Absent):
                return top.joinpath(*parts)  # missing on the way
            try:
                here = Path(os.readlink(f"/proc/self/fd/{found.fd}"))
                try:
                    st = os.stat(name, dir_fd=found.fd, follow_symlinks=False)
                except FileNotFoundError:
                    return here / name
                if not stat.S_ISLNK(st.st_mode):
                    return here / name
                links += 1
                target = _link_target(name, found.fd, links)
            finally:
                os.close(found.fd)
            base = [] if target.startswith("/") else list(here.relative_to(top).parts)
            parts = base + [p for p in target.split("/") if p]
    except (OSError, ValueError):
        return None
    finally:
        os.close(top_fd)


def _link_target(name: str, dir_fd: int, links: int) -> str:
    if links > MAX_SYMLINKS:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
    return os.readlink(name, dir_fd=dir_fd)


def _in_directory(dir_fd: int, name: str) -> str | None:
    """``name`` in the directory ``dir_fd``, a symlink followed while it names another file of
    that directory; None for a link that leads elsewhere (or loops)."""
    for _ in range(MAX_SYMLINKS):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return name
        except OSError:
            return None
        if not stat.S_ISLNK(st.st_mode):
            return name
        try:
            name = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return None
        if "/" in name or name in ("", ".", ".."):
            return None
    return None


def _kind(mode: int) -> str:
    return "regular file" if stat.S_ISREG(mode) else file_kind(mode)


def _names(dir_fd: int, limit: int) -> list[str]:
    """The first ``limit`` names in the directory ``dir_fd`` (an ``O_PATH`` descriptor): the root
    is another system's, and a directory of a million entries is read no further than needed."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as entries:
            return [e.name for e in itertools.islice(entries, limit)]
    finally:
        os.close(fd)


def _mount_id(fd: int) -> int | None:
    """The id of the mount the open ``fd`` is on (statx, Linux 5.8); None when it cannot be told."""
    try:
        info = linux.statx(b"", linux.STATX_MNT_ID, dir_fd=fd, flags=linux.AT_EMPTY_PATH)
    except OSError:
        return None
    return int(info.stx_mnt_id) if info.stx_mask & linux.STATX_MNT_ID else None


# ------------------------------------------------------------------------------ the check

@dataclass(frozen=True)
class _Root:
    """A root resolved to a directory of this host."""

    fd: int
    path: str
    """Where it is here (``/``, ``/.snapshots/12/snapshot``)."""
    described: str
    """How a finding names it: ``/: the root this entry boots (root=UUID=... subvol=@)``."""


class RootCheck:
    """Resolves entries' roots against this host's mounts (read once per check of the host).

    ``mounts`` are the host's mounts (``/proc/self/mountinfo`` when None), ``disk_links`` the
    directory of udev's ``by-uuid``, ``by-label``... links (``/dev/disk``), ``btrfs_sysfs`` where
    the kernel lists each btrfs filesystem's member devices (``/sys/fs/btrfs``).
    """

    def __init__(self, mounts: Sequence[MountInfo] | None = None, *, disk_links: Path = DISK_LINKS,
                 btrfs_sysfs: Path = BTRFS_SYSFS) -> None:
        self._mounts = None if mounts is None else list(mounts)
        self.disk_links = disk_links
        self.btrfs_sysfs = btrfs_sysfs
        self._devices: dict[int, frozenset[int]] = {}
        self._btrfs_members: dict[int, str] | None = None
        self._known: dict[tuple[str | None, tuple[str, ...], str, bool], Finding | None] = {}

    @property
    def mounts(self) -> list[MountInfo]:
        if self._mounts is None:
            try:
                self._mounts = linux.mountinfo()
            except OSError:
                self._mounts = []
        return self._mounts

    def finding(self, entry: Entry, release: str) -> Finding | None:
        """None when the entry's root holds ``lib/modules/<release>``; else why not, or why that
        cannot be told."""
        options = RootOptions.of(entry.options)
        key = (options.root, options.rootflags, release, "$" in entry.options)
        if key not in self._known:
            try:
                found = self._finding(options, release, entry)
            except ValueError as e:  # a NUL or a lone surrogate in the options: no path names it
                found = _unknown(f"the entry's root= or rootflags= is no path this host has ({e}); "
                                 "its lib/modules is not checked")
            self._known[key] = None if found is None else dataclasses.replace(
                found, message=_shown(found.message), path=None if found.path is None else _shown(found.path))
        return self._known[key]

    def _finding(self, options: RootOptions, release: str, entry: Entry) -> Finding | None:
        if not _is_file_name(release):
            return _unknown(f"the kernel's release {release!r} is no directory name; its root's "
                            "lib/modules is not checked")
        root = self._resolve(options, entry)
        if isinstance(root, Finding):
            return root
        try:
            return _modules_finding(root, release)
        except OSError as e:
            return _unknown(f"{root.described}: cannot read its lib/modules/{release}: "
                            f"{os.strerror(e.errno or 0)}", root.path)
        finally:
            os.close(root.fd)

    def _resolve(self, options: RootOptions, entry: Entry | None = None) -> _Root | Finding:
        """The root ``options`` name, opened; or the finding that says why it cannot be checked
        (UNKNOWN) or cannot be mounted (BROKEN)."""
        if options.root is None:
            variables = " (its options hold variables GRUB sets only at boot)" if entry and "$" in entry.options else ""
            return _unknown(f"the entry's options name no root={variables}: the root is chosen at boot, "
                            "so its lib/modules is not checked")
        spec = f"root={options.root}"
        device = self._device(options.root)
        if isinstance(device, str):
            return _unknown(f"{spec}: {device}; its lib/modules is not checked")
        mounts = [m for m in self.mounts if self._shows_device(m, device)]
        if not mounts:
            return _unknown(f"{spec}: the filesystem on {_device_name(device)} is not mounted on this host; "
                            "its lib/modules is not checked")
        btrfs = all(m.fstype == "btrfs" for m in mounts)
        target = "/"
        if btrfs:
            chosen = self._btrfs_target(options, mounts)
            if isinstance(chosen, Finding):
                return chosen
            target, named = chosen
            spec += f" {named}"
        return self._open(mounts, target, spec, btrfs=btrfs)

    def locate(self, file: BootFile) -> Path | None:
        """Where on this host a file is that an entry names on a filesystem by its UUID (GRUB's
        ``search --fs-uuid``), through a mount that shows its directory or one above it: a
        grub-btrfs snapshot's ``/@/.snapshots/12/snapshot/boot/vmlinuz-linux`` is
        ``/.snapshots/12/snapshot/boot/vmlinuz-linux`` below the mount of ``@`` at ``/``. Each
        directory on the way is walked as :meth:`finding` walks a root (no symlink, never off
        that mount); a symlink the file itself is (``vmlinuz -> vmlinuz-6.1.0``) is followed
        only to a name in the same directory. The file need not exist (the path is then where it
        is missing); None when the place cannot be told."""
        try:
            return self._locate(file)
        except ValueError:  # a NUL or a lone surrogate: no file has that name
            return None

    def _locate(self, file: BootFile) -> Path | None:
        uuid = file.partition.fs_uuid
        target = subvolume_path(file.path)
        if uuid is None or target is None or target == "/":
            return None
        device = self._device(f"UUID={uuid}")
        if isinstance(device, str):
            return None
        directory, name = target.rsplit("/", 1)
        for mount, rest in _showing([m for m in self.mounts if self._shows_device(m, device)], directory or "/"):
            opened = _open_in_mount(mount, [p for p in rest.split("/") if p])
            here = Path(os.path.normpath(os.path.join(mount.mount_point, rest.lstrip("/"))))
            if isinstance(opened, _Absent):
                return here / name
            if isinstance(opened, _Found):
                try:
                    final = _in_directory(opened.fd, name)
                finally:
                    os.close(opened.fd)
                return None if final is None else here / final
        return None

    # -------------------------------------------------------------------- devices and mounts

    def _device(self, root: str) -> int | str:
        """The device number ``root=`` names, or why it names none here."""
        value = root[len("block:"):] if root.startswith("block:") else root
        tag, sep, tagged = value.partition("=")
        if sep and tag == "PARTUUID" and "/PARTNROFF=" in tagged:
            return "a partition counted from another (PARTNROFF=), which bootwatch does not resolve"
        if sep and tag in _TAGS:
            names = [udev_encoded(tagged)]
            if tag in ("UUID", "PARTUUID") and tagged.lower() != tagged:
                names.append(udev_encoded(tagged.lower()))  # by-partuuid is lower case; the kernel ignores case
            for name in names:
                link = self.disk_links / _TAGS[tag] / name
                if os.path.lexists(link):
                    return _block_device(link)
            return f"no filesystem of this host has {tag}={tagged} ({self.disk_links / _TAGS[tag] / names[0]} " \
                   "is not there): another disk's, or one not attached now"
        if value.startswith(_NETWORK_ROOTS):
            return "a network root"
        if value.startswith("/dev/"):
            if not os.path.lexists(value):
                return f"{value} is not there"
            return _block_device(Path(value))
        major, sep, minor = value.partition(":")
        if sep and major.isdigit() and minor.isdigit():
            # Only a block device's number: a tmpfs, overlay or btrfs mount has an anonymous one.
            if not os.path.lexists(SYS_DEV_BLOCK / f"{int(major)}:{int(minor)}"):
                return f"{value} is no block device's number ({SYS_DEV_BLOCK} lists none such)"
            return os.makedev(int(major), int(minor))
        return "not a local block device bootwatch can tell (UUID=, PARTUUID=, LABEL=, PARTLABEL=, /dev/..., " \
               "MAJOR:MINOR)"

    def _shows_device(self, mount: MountInfo, device: int) -> bool:
        devices = self._mount_devices(mount)
        if device in devices:
            return True
        if mount.fstype != "btrfs":
            return False
        members = self._btrfs()
        fsid = members.get(device)
        return fsid is not None and any(members.get(d) == fsid for d in devices)

    def _mount_devices(self, mount: MountInfo) -> frozenset[int]:
        """The device numbers a mount is on: its ``major:minor``, and for btrfs (whose
        ``major:minor`` is an anonymous one) the block device its source names, which btrfs keeps
        naming the member it was mounted from."""
        known = self._devices.get(mount.mount_id)
        if known is not None:
            return known
        devices: set[int] = set()
        major, _, minor = mount.dev.partition(":")
        if major.isdigit() and minor.isdigit():
            devices.add(os.makedev(int(major), int(minor)))
        if mount.fstype == "btrfs" and mount.source.startswith("/dev/"):
            with contextlib.suppress(OSError):
                st = os.stat(mount.source)
                if stat.S_ISBLK(st.st_mode):
                    devices.add(st.st_rdev)
        self._devices[mount.mount_id] = frozenset(devices)
        return self._devices[mount.mount_id]

    def _btrfs(self) -> dict[int, str]:
        """Each btrfs member device's number and its filesystem's UUID (the kernel's sysfs)."""
        if self._btrfs_members is None:
            self._btrfs_members = {}
            with contextlib.suppress(OSError):
                for fsid in os.listdir(self.btrfs_sysfs):
                    devices = self.btrfs_sysfs / fsid / "devices"
                    with contextlib.suppress(OSError):
                        for member in os.listdir(devices):
                            number = _sysfs_dev(devices / member / "dev")
                            if number is not None:
                                self._btrfs_members[number] = fsid
        return self._btrfs_members

    def _btrfs_target(self, options: RootOptions, mounts: Sequence[MountInfo]) -> tuple[str, str] | Finding:
        """The subvolume a btrfs root is, as mountinfo's root field would show it, and how a
        finding names it (``subvol=@``)."""
        spec = f"root={options.root}"
        chosen = options.subvolume
        if isinstance(chosen, str):
            return _unknown(f"{spec}: {chosen}; its lib/modules is not checked")
        subvol, subvolid = chosen
        if subvol is not None:
            path = subvolume_path(subvol)
            if path is None:
                return _unknown(f"{spec}: rootflags subvol={subvol} is no path from the filesystem's top level; "
                                "its lib/modules is not checked")
            return path, f"subvol={path.lstrip('/') or '/'}"
        if subvolid is not None and not subvolid.isdigit():
            return _unknown(f"{spec}: rootflags subvolid={subvolid} is no subvolume id; its lib/modules is not checked")
        what = f"subvolid={int(subvolid)}" if subvolid is not None else "default subvolume"
        fd = _open_filesystem(mounts)
        if fd is None:
            return _unknown(f"{spec}: {what}: no mount of the filesystem can be opened to read which subvolume "
                            "that is; its lib/modules is not checked")
        try:
            number = int(subvolid) if subvolid is not None else linux.btrfs_default_subvolume(fd)
            path = linux.btrfs_subvolume_path(fd, number)
        except OSError as e:
            if subvolid is not None and isinstance(e, FileNotFoundError):
                return Finding(EntryState.BROKEN, Check.ROOT_MODULES,
                               f"{spec}: rootflags {what}: the filesystem has no such subvolume: the kernel "
                               "cannot mount that root")
            return _unknown(f"{spec}: which subvolume the {what} is cannot be read: {os.strerror(e.errno or 0)}; "
                            "its lib/modules is not checked")
        finally:
            os.close(fd)
        return path, f"{what} {path.lstrip('/') or '/'}"

    def _open(self, mounts: Sequence[MountInfo], target: str, spec: str, *, btrfs: bool) -> _Root | Finding:
        """Open ``target`` (a path from the filesystem's top) through a mount that shows it or a
        directory above it (see the module docstring)."""
        candidates = _showing(mounts, target)
        what = f"subvolume {target.lstrip('/') or '/'}" if btrfs else "its top directory"
        if not candidates:
            shown = ", ".join(f"{m.root} at {m.mount_point}" for m in mounts[:4])
            return _unknown(f"{spec}: no mount here shows the {what} or one above it (mounted: {shown}); "
                            "its lib/modules is not checked")
        hidden: list[str] = []
        for mount, rest in candidates:
            opened = _open_in_mount(mount, [p for p in rest.split("/") if p])
            path = os.path.normpath(os.path.join(mount.mount_point, rest.lstrip("/")))
            if isinstance(opened, _Found):
                described = f"{path}: the root this entry boots ({spec})"
                if btrfs and os.fstat(opened.fd).st_ino != linux.BTRFS_FIRST_FREE_OBJECTID:
                    os.close(opened.fd)
                    return Finding(EntryState.BROKEN, Check.ROOT_MODULES,
                                   f"{described} is a directory, not a btrfs subvolume: the kernel cannot "
                                   "mount it as the root", path)
                return _Root(opened.fd, path, described)
            if isinstance(opened, _Absent):
                return Finding(EntryState.BROKEN, Check.ROOT_MODULES,
                               f"{spec}: the {what} is not on the filesystem ({path} {opened.what}): "
                               "the kernel cannot mount that root", path)
            hidden.append(opened)
        return _unknown(f"{spec}: {'; '.join(hidden)}; its lib/modules is not checked")


def _open_filesystem(mounts: Sequence[MountInfo]) -> int | None:
    """A descriptor (not ``O_PATH``: ioctls need a real one) of the first of ``mounts`` whose
    mount point is that mount, not another one covering it; None when none is."""
    for mount in mounts:
        try:
            fd = os.open(mount.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        if _mount_id(fd) == mount.mount_id:
            return fd
        os.close(fd)
    return None


def _showing(mounts: Sequence[MountInfo], target: str) -> list[tuple[MountInfo, str]]:
    """The mounts that show ``target`` (a path from the filesystem's top), each with the rest of the
    path below its mount point: the one that shows the target itself first, then the nearest above
    it; among equals the one at ``/``."""
    def below(m: MountInfo) -> str | None:
        top = m.root.rstrip("/")
        if target == m.root or target == top or target.startswith(top + "/"):
            return target[len(top):]
        return None

    candidates = [(m, rest) for m in mounts for rest in [below(m)] if rest is not None]
    candidates.sort(key=lambda c: (len(c[1].strip("/")), c[0].mount_point != "/", len(c[0].mount_point)))
    return candidates


def _open_in_mount(mount: MountInfo, parts: Sequence[str]) -> _Found | _Absent | str:
    """Walk ``parts`` down from ``mount``'s mount point without leaving that mount: the directory,
    or that it is not there (proven on that mount), or why the walk cannot tell."""
    point = mount.mount_point
    try:
        fd = os.open(point, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        return f"{point}: {os.strerror(e.errno or 0)}"
    try:
        mount_id = _mount_id(fd)
        if mount_id is None:
            return f"{point}: the mount a directory is on cannot be told (statx without STATX_MNT_ID)"
        if mount_id != mount.mount_id:
            return f"{point}: another mount covers it"
        path = point
        for name in parts:
            path = os.path.join(path, name)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    return f"{path}: is a symlink, which bootwatch does not follow to a root"
                if not stat.S_ISDIR(st.st_mode):
                    return _Absent(f"is a {_kind(st.st_mode)}")
                step = os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                return _Absent("is missing")
            except OSError as e:
                return f"{path}: {os.strerror(e.errno or 0)}"
            os.close(fd)
            fd = step
            if _mount_id(fd) != mount.mount_id:
                return f"{path}: another mount covers it"
        found, fd = fd, -1
        return _Found(found)
    finally:
        if fd >= 0:
            os.close(fd)


def _modules_finding(root: _Root, release: str) -> Finding | None:
    """None when the root holds a directory of modules for ``release`` (see the module docstring)."""
    seen: set[tuple[int, int]] = set()
    empty: list[str] = []
    odd: list[str] = []
    held: set[str] = set()
    modules_dirs = 0
    for parts in _MODULE_DIRS:
        shown = "/".join((*parts, release))
        found = _resolve_dir(root.fd, (*parts, release))
        if isinstance(found, _Found):
            try:
                st = os.fstat(found.fd)
                if (st.st_dev, st.st_ino) in seen:
                    continue  # usrmerge: lib/modules is usr/lib/modules
                seen.add((st.st_dev, st.st_ino))
                if _names(found.fd, 1):
                    return None
                empty.append(shown)
            finally:
                os.close(found.fd)
        elif found.what != "missing":
            odd.append(f"{shown} {found.what}")
        directory = _resolve_dir(root.fd, parts)
        if isinstance(directory, _Found):
            modules_dirs += 1
            try:
                held.update(n for n in _names(directory.fd, _LISTED_RELEASES) if n != release)
            finally:
                os.close(directory.fd)
    if empty:
        return Finding(EntryState.BROKEN, Check.ROOT_MODULES,
                       f"{root.described}: its {empty[0]} is empty: none of the kernel's modules can be loaded",
                       os.path.join(root.path, empty[0]))
    if odd:
        return Finding(EntryState.BROKEN, Check.ROOT_MODULES,
                       f"{root.described}: its {odd[0]}: the kernel's modules are not there", root.path)
    if not modules_dirs:
        return _unknown(f"{root.described}: has no usr/lib/modules or lib/modules at all (a kernel without "
                        "modules, or a system that keeps them elsewhere); the kernel's modules are not checked",
                        root.path)
    others = sorted(held)
    listed = ", ".join(others[:_SHOWN_RELEASES]) + (f" and {len(others) - _SHOWN_RELEASES} more"
                                                    if len(others) > _SHOWN_RELEASES else "")
    return Finding(EntryState.BROKEN, Check.ROOT_MODULES,
                   f"{root.described}: has no usr/lib/modules/{release} or lib/modules/{release} "
                   f"(it holds modules for {listed or 'no kernel'}): the kernel's modules are not there",
                   os.path.join(root.path, "usr/lib/modules", release))


def _block_device(path: Path) -> int | str:
    try:
        st = os.stat(path)  # udev's links in /dev, and /dev itself, are the kernel's and udev's
    except OSError as e:
        return f"{path}: {os.strerror(e.errno or 0)}"
    if not stat.S_ISBLK(st.st_mode):
        return f"{path} is no block device"
    return st.st_rdev


def _device_name(device: int) -> str:
    return f"device {os.major(device)}:{os.minor(device)}"


def _sysfs_dev(path: Path) -> int | None:
    """A sysfs ``dev`` attribute (``8:2``) as a device number."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    major, _, minor = text.partition(":")
    return os.makedev(int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def _is_file_name(name: str) -> bool:
    try:
        size = len(os.fsencode(name))
    except UnicodeEncodeError:
        return False
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name and size <= 255


def _shown(text: str) -> str:
    """``text`` fit for a terminal, the journal and JSON: what the entry's options or the root's
    names hold of control characters and undecodable bytes written out as escapes."""
    return printable(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _unknown(message: str, path: str | None = None) -> Finding:
    return Finding(EntryState.UNKNOWN, Check.ROOT_MODULES, message, path)
