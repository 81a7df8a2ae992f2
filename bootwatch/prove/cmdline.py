"""The kernel command line of a proof: the entry's own options, less what would reach beyond the VM.

Removed (by name, ``name`` or ``name=value``; a name ending in ``*`` is a prefix):

* what names the host's disks, filesystems and network: ``root``, ``rootflags``, ``rootfstype``,
  ``rootwait``, ``resume``, ``resume_offset``, ``boot`` (zfs), ``nfsroot``, ``ip``, ``netroot``,
  ``rd.lvm*``, ``rd.luks*``, ``rd.md*``, ``rd.dm*``, ``rd.zfs*``, ``zfs*``, ``rd.iscsi*``,
  ``iscsi_*``, ``rd.neednet``, ``cryptdevice``, ``cryptkey``: the VM has no disk and no network,
  and a proof must not depend on (or wait for) them;
* which program runs and where the boot stops: ``init``, ``rdinit``, ``break``, ``rd.break``,
  ``rd.shell``, ``rd.emergency``, ``panic``, ``rootdelay``: the proof sets them;
* consoles and verbosity: ``console``, ``earlycon``, ``earlyprintk``, ``quiet``, ``loglevel``,
  ``splash``, ``rhgb``, ``plymouth.*``, ``vt.*``: the proof reads one serial line, and needs the
  kernel's informational messages on it (``Run /init as init process`` is one);
* memory layout the VM's bounded memory cannot satisfy: ``crashkernel``, ``mem``, ``memmap``,
  ``hugepages``, ``hugepagesz``, ``default_hugepagesz``.

Everything else stays (``fips=1``, module options and blacklists, ``ro``): the initramfs reads
them. Added: the serial console (``console=ttyS0`` and the decompressor's
``earlyprintk=serial,ttyS0,115200``, so a kernel that fails to decompress says so),
``loglevel=7``, ``panic=-1`` (a panic ends the VM at once, with ``-no-reboot``), a root that
cannot exist (``root=/dev/nonexistent``, so no initramfs ever finds something to mount),
``noresume``, and where the initramfs stops once its modules are loaded: ``break=mount``
(initramfs-tools: after udev has loaded the drivers; its shell is refused because of ``panic=``,
so the VM ends), ``rd.shell=0 rd.emergency=poweroff`` (dracut powers off where it would give a
shell).
"""

from __future__ import annotations

_REMOVED = frozenset({
    "root", "rootflags", "rootfstype", "rootwait", "resume", "resume_offset", "boot", "nfsroot", "ip",
    "netroot", "rd.neednet", "cryptdevice", "cryptkey",
    "init", "rdinit", "break", "rd.break", "rd.shell", "rd.emergency", "panic", "rootdelay",
    "console", "earlycon", "earlyprintk", "quiet", "loglevel", "splash", "rhgb",
    "crashkernel", "mem", "memmap", "hugepages", "hugepagesz", "default_hugepagesz",
})
_REMOVED_PREFIXES = ("rd.lvm", "rd.luks", "rd.md", "rd.dm", "rd.zfs", "zfs", "rd.iscsi", "iscsi_",
                     "plymouth.", "vt.")

ADDED = ("console=ttyS0", "earlyprintk=serial,ttyS0,115200", "loglevel=7", "panic=-1",
         "root=/dev/nonexistent", "noresume", "break=mount", "rd.shell=0", "rd.emergency=poweroff")


def removed(word: str) -> bool:
    name = word.split("=", 1)[0]
    return name in _REMOVED or name.startswith(_REMOVED_PREFIXES)


def proof_cmdline(options: str) -> str:
    """The entry's options (as the loader passes them) less the removed ones, plus the proof's.

    Quoted values (``acpi_osi="Windows 2020"``) are kept whole: the kernel splits on spaces
    outside double quotes, and so does this. Everything after ``--`` belongs to init, and goes.
    """
    kept = []
    for word in _split(options):
        if word == "--":
            break
        if not removed(word):
            kept.append(word)
    return " ".join(kept + list(ADDED))


def _split(options: str) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in options:
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
            continue
        current.append(ch)
    if current:
        words.append("".join(current))
    return words
