"""The package-manager hooks of contrib/ (README "Hooks"), each run for real against a boot tree:
the kernel-install plugin, the Debian/Ubuntu /etc/kernel/postinst.d and postrm.d hook (through the
real run-parts, as a kernel package's maintainer scripts run it) and the pacman hook (its Exec,
taken from the file by a strict alpm-hooks(5) parser). bootwatch is the real one, found on PATH as
an installed bootwatch is; what a hook did is read back with ``bootwatch list --json``.

Also ``bootwatch scan --no-restore``, which the hooks run when a kernel is removed.
The real kernel-install in a chroot is tests/integration/test_hooks_kernel_install.py.
"""

from __future__ import annotations

import enum
import fcntl
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, BootTree

from bootwatch import scanproof

PLUGIN = REPO_ROOT / "contrib" / "kernel-install" / "95-bootwatch.install"
DEBIAN_HOOK = REPO_ROOT / "contrib" / "kernel" / "zzz-bootwatch"
PACMAN_HOOK = REPO_ROOT / "contrib" / "pacman" / "95-bootwatch.hook"
VERSION = "6.1.0-57-cloud-amd64"
INSTALLED_ELSEWHERE = [p for p in ("/usr/bin/bootwatch", "/usr/local/bin/bootwatch") if os.path.exists(p)]


# ------------------------------------------------------------------ bootwatch scan --no-restore

def _kernel_with_entry(tree: BootTree, version: str = "1", name: str = "entry") -> dict[str, str]:
    images = tree.write_kernel(version)
    tree.write_entry(name, linux=f"/vmlinuz-{version}", initrd=[f"/initramfs-{version}.img"])
    return images


@pytest.mark.slow
def test_scan_no_restore_caches_and_forgets_but_never_restores(boot_tree: BootTree) -> None:
    tree = boot_tree
    _kernel_with_entry(tree, "1")
    assert tree.cli("scan", "--quiet")[0] == 0
    tree.path("/vmlinuz-1").unlink()  # the package manager removed it; its entry is still there
    images_2 = _kernel_with_entry(tree, "2", "entry-2")

    rc, out, err = tree.cli("scan", "--no-restore")
    assert rc == 0, err
    assert "0 restored, 1 missing" in out and "2 cached" in out, out
    assert not tree.path("/vmlinuz-1").exists()
    listed = tree.list_json()
    assert listed["/vmlinuz-1"]["state"] == "MISSING" and listed["/vmlinuz-1"]["count"] == 1
    assert {path: listed[path]["image_id"] for path in images_2} == images_2  # cached all the same

    # The decision is left to a later pass that may restore (the daemon's).
    rc, out, err = tree.cli("scan", "--quiet")
    assert rc == 0 and tree.path("/vmlinuz-1").is_file(), err
    assert tree.list_json()["/vmlinuz-1"]["state"] == "RESTORED"

    # Forgetting goes on: the restored copy that no entry needs any more is taken away again.
    tree.remove_entry("entry")
    rc, out, err = tree.cli("scan", "--no-restore", "--json")
    assert rc == 0, err
    assert '"/vmlinuz-1"' in out and not tree.path("/vmlinuz-1").exists()
    assert tree.list_json()["/vmlinuz-1"]["count"] == 0


@pytest.mark.slow  # one wait of the proof's racy margin
def test_scan_no_restore_records_no_scan_proof(boot_tree: BootTree) -> None:
    """The scan proof stands for a 'scan --quiet' that may restore: a --no-restore pass records none."""
    tree = boot_tree
    _kernel_with_entry(tree, "1")
    assert tree.cli("scan")[0] == 0
    time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.2)  # inputs old enough for a proof
    proof = tree.cache / scanproof.PROOF_NAME
    assert tree.cli("scan", "--quiet", "--no-restore") == (0, "", "")
    assert not proof.exists()
    assert tree.cli("scan", "--quiet") == (0, "", "")
    assert proof.is_file()  # the same pass without --no-restore records one


# ------------------------------------------------------------------ running the hooks

class Hook(enum.Enum):
    KERNEL_INSTALL = "kernel-install"
    DEBIAN = "debian"
    PACMAN = "pacman"


class Change(enum.Enum):
    INSTALL = "install"
    REMOVE = "remove"


@dataclass
class HookRun:
    returncode: int
    stdout: str
    stderr: list[str]
    """stderr's lines, without run-parts' own report of which script spoke."""
    seconds: float


@dataclass
class Host:
    """A boot tree as a host sees it: bootwatch's configuration names its boot and cache
    directories ($BOOTWATCH_CONFIG), and bootwatch is on PATH (or not)."""

    tree: BootTree
    bindir: Path
    environ: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, tree: BootTree, *, bootwatch: bool = True) -> Host:
        tree.config.write_text(f'[paths]\nboot = "{tree.boot}"\ncache = "{tree.cache}"\n')
        bindir = tree.root / "bin"
        bindir.mkdir(exist_ok=True)
        if bootwatch:
            # As the console script of an installed bootwatch: this checkout, this interpreter.
            script = bindir / "bootwatch"
            script.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO_ROOT}" PYTHONDONTWRITEBYTECODE=1 '
                              f'exec "{sys.executable}" -m bootwatch "$@"\n')
            script.chmod(0o755)
        return cls(tree, bindir, {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
                                  "BOOTWATCH_CONFIG": str(tree.config)})

    def run(self, hook: Hook, change: Change, *, extra: Mapping[str, str] | None = None,
            maint_params: str | None = "", timeout: float = 120) -> HookRun:
        """Run ``hook`` as its package manager does for ``change``. For the Debian hook,
        DEB_MAINT_PARAMS is ``maint_params`` (None: unset, as older kernel packages leave it), by
        default what a kernel package's postinst (configure) or postrm (remove) passes."""
        env = {**self.environ, **(extra or {})}
        if hook is Hook.DEBIAN and maint_params is not None:
            env["DEB_MAINT_PARAMS"] = maint_params or ("configure" if change is Change.INSTALL else "remove")
        argv, report_line = self._argv(hook, change)
        started = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.tree.root, stdin=subprocess.DEVNULL)
        lines = [line for line in proc.stderr.splitlines() if line != report_line]
        return HookRun(proc.returncode, proc.stdout, lines, time.monotonic() - started)

    def _argv(self, hook: Hook, change: Change) -> tuple[list[str], str | None]:
        if hook is Hook.KERNEL_INSTALL:
            command = "add" if change is Change.INSTALL else "remove"
            entry_dir = self.tree.boot / "machine-id" / VERSION
            return [str(PLUGIN), command, VERSION, str(entry_dir), f"/boot/vmlinuz-{VERSION}"], None
        if hook is Hook.DEBIAN:
            # Exactly as linux-image-*'s postinst and postrm run the hooks.
            directory = self.tree.root / "etc-kernel" / ("postinst.d" if change is Change.INSTALL else "postrm.d")
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copy2(DEBIAN_HOOK, directory / "zzz-bootwatch")
            return (["run-parts", "--report", "--exit-on-error", f"--arg={VERSION}",
                     f"--arg=/boot/vmlinuz-{VERSION}", str(directory)], f"{directory}/zzz-bootwatch:")
        return parse_alpm_hook(PACMAN_HOOK.read_text()).action.exec, None


HOOKS = list(Hook)


def _only_line(run: HookRun) -> str:
    assert run.returncode == 0, run
    assert run.stdout == "", run
    assert len(run.stderr) == 1, run
    return run.stderr[0]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.value)
def test_install_caches_the_new_kernel(boot_tree: BootTree, hook: Hook) -> None:
    host = Host.make(boot_tree)
    images = _kernel_with_entry(boot_tree, VERSION)
    run = host.run(hook, Change.INSTALL)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", []), run
    listed = boot_tree.list_json()
    assert {path: (listed[path]["state"], listed[path]["image_id"]) for path in images} == \
        {path: ("CACHED", image_id) for path, image_id in images.items()}


@pytest.mark.slow
@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.value)
def test_remove_never_restores_the_removed_kernel(boot_tree: BootTree, hook: Hook) -> None:
    """The package manager removed the kernel; an entry still names it (one the transaction drops
    later: update-grub runs after kernel-install; or a snapshot's). The hook caches and forgets
    but restores nothing; the restore is a later pass's decision (the daemon's), and happens
    there only because the entry is still there."""
    host = Host.make(boot_tree)
    images = _kernel_with_entry(boot_tree, VERSION)
    assert boot_tree.cli("scan", "--quiet")[0] == 0
    kernel = f"/vmlinuz-{VERSION}"
    boot_tree.path(kernel).unlink()
    newer = _kernel_with_entry(boot_tree, "6.1.0-58-cloud-amd64", "newer")

    run = host.run(hook, Change.REMOVE)
    assert run.returncode == 0 and run.stdout == "", run
    # scan --quiet's own warning, passed on as it is; nothing failed.
    assert [line for line in run.stderr if "removed from the boot directory" not in line] == [], run
    assert not boot_tree.path(kernel).exists()
    listed = boot_tree.list_json()
    assert (listed[kernel]["state"], listed[kernel]["count"]) == ("MISSING", 1)
    assert {path: listed[path]["state"] for path in newer} == dict.fromkeys(newer, "CACHED")

    assert boot_tree.cli("scan", "--quiet")[0] == 0
    assert boot_tree.sha1_of(boot_tree.path(kernel)) == images[kernel]
    assert boot_tree.list_json()[kernel]["state"] == "RESTORED"


@pytest.mark.skipif(bool(INSTALLED_ELSEWHERE), reason=f"bootwatch is installed here: {INSTALLED_ELSEWHERE}")
@pytest.mark.parametrize("change", list(Change), ids=lambda c: c.value)
@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.value)
def test_without_bootwatch_the_package_operation_goes_on(boot_tree: BootTree, hook: Hook, change: Change) -> None:
    host = Host.make(boot_tree, bootwatch=False)
    _kernel_with_entry(boot_tree, VERSION)
    line = _only_line(host.run(hook, change))
    assert "bootwatch is not installed" in line and "cache was not updated" in line, line
    assert not boot_tree.cache.exists()


@pytest.mark.parametrize("change", list(Change), ids=lambda c: c.value)
@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.value)
def test_a_failing_bootwatch_never_fails_the_package_operation(boot_tree: BootTree, hook: Hook,
                                                                change: Change) -> None:
    host = Host.make(boot_tree)
    _kernel_with_entry(boot_tree, VERSION)
    boot_tree.config.write_text("[cache]\nkeep = 'many'\n")  # bootwatch exits 78, naming the file
    line = _only_line(host.run(hook, change))
    assert "failed (exit status 78)" in line and str(boot_tree.config) in line, line
    assert "run 'bootwatch scan'" in line or "run bootwatch scan" in line, line
    assert not boot_tree.cache.exists()


@pytest.mark.slow
@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.value)
def test_a_scan_that_cannot_finish_is_bounded(boot_tree: BootTree, hook: Hook) -> None:
    """Another process holds the cache's writers' lock and never gives it back: the hook gives
    the scan up after BOOTWATCH_HOOK_TIMEOUT seconds, and the package operation goes on."""
    host = Host.make(boot_tree)
    _kernel_with_entry(boot_tree, VERSION)
    assert boot_tree.cli("scan", "--quiet")[0] == 0
    _kernel_with_entry(boot_tree, "6.1.0-58-cloud-amd64", "newer")
    with open(boot_tree.cache / ".bootwatch.lock", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = host.run(hook, Change.INSTALL, extra={"BOOTWATCH_HOOK_TIMEOUT": "2"}, timeout=60)
    line = _only_line(run)
    assert "did not finish within 2s" in line, line
    assert run.seconds < 12.5, run  # the bound, and timeout's -k 10 at the very worst
    assert "/vmlinuz-6.1.0-58-cloud-amd64" not in boot_tree.list_json()


# ------------------------------------------------------------------ the kernel-install plugin

def test_plugin_runs_nothing_for_other_commands(boot_tree: BootTree) -> None:
    host = Host.make(boot_tree)
    _kernel_with_entry(boot_tree, VERSION)
    proc = subprocess.run([str(PLUGIN), "inspect", VERSION], env=host.environ, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert not boot_tree.cache.exists()


def test_plugin_runs_after_the_entry_is_written() -> None:
    """kernel-install runs the plugins of /etc/kernel/install.d and /usr/lib/kernel/install.d
    sorted by name (its dropindirs_sort): this one after every plugin that writes the entry or
    the files it names. The names are systemd's (50-depmod, 85-initrd, 90-loaderentry; 90-uki-copy
    from systemd 254 on), dracut's (50-dracut), and those installed on this host."""
    installed = sorted(p.name for p in Path("/usr/lib/kernel/install.d").glob("*.install")) \
        if Path("/usr/lib/kernel/install.d").is_dir() else []
    known = {"50-depmod.install", "50-dracut.install", "51-dracut-rescue.install", "85-initrd.install",
             "90-loaderentry.install", "90-uki-copy.install", *installed}
    order = sorted(known | {PLUGIN.name}, key=os.fsencode)
    assert order[-1] == PLUGIN.name, order
    assert PLUGIN.stat().st_mode & 0o111


# ------------------------------------------------------------------ the Debian/Ubuntu hook

@pytest.mark.parametrize(("directory", "params", "runs"), [
    ("postinst.d", "configure", True),
    ("postinst.d", "'configure' '6.1.192-2'", True),  # quoted, as older kernel packages pass them
    ("postinst.d", None, True),  # no DEB_MAINT_PARAMS: an older kernel package
    ("postinst.d", "abort-upgrade 6.1.192-2", False),
    ("postrm.d", "remove", True),
    ("postrm.d", "purge", False),  # postrm runs again for purge: one scan per package operation
    ("postrm.d", "upgrade 6.1.192-3", False),
    ("postrm.d", "abort-install", False),
])
def test_debian_hook_scans_once_per_package_operation(boot_tree: BootTree, directory: str, params: str | None,
                                                      runs: bool) -> None:
    host = Host.make(boot_tree)
    _kernel_with_entry(boot_tree, VERSION)
    change = Change.INSTALL if directory == "postinst.d" else Change.REMOVE
    run = host.run(Hook.DEBIAN, change, maint_params=params)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", []), run
    assert boot_tree.cache.exists() is runs
    if runs:
        assert boot_tree.list_json()[f"/vmlinuz-{VERSION}"]["state"] == "CACHED"


def test_debian_hook_elsewhere_does_nothing(boot_tree: BootTree) -> None:
    host = Host.make(boot_tree)
    _kernel_with_entry(boot_tree, VERSION)
    proc = subprocess.run([str(DEBIAN_HOOK), VERSION], env=host.environ, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert len(proc.stderr.splitlines()) == 1 and "postinst.d or /etc/kernel/postrm.d" in proc.stderr
    assert not boot_tree.cache.exists()


DEBIAN_PACKAGES = ("grub2-common", "initramfs-tools", "dracut", "systemd-boot", "dkms", "unattended-upgrades")
"""Debian 12 packages that put hooks in /etc/kernel/postinst.d or postrm.d (grub2-common:
zz-update-grub; systemd-boot: zz-systemd-boot; initramfs-tools, dracut, dkms, unattended-upgrades)."""
DEBS = Path(os.environ.get("BOOTWATCH_TEST_CACHE", "/var/cache/bootwatch-tests")) / "debs"


def _debian_hook_names() -> dict[str, set[str]]:
    """{"postinst.d": names, "postrm.d": names} of the hooks the real packages ship, read with
    dpkg-deb -c from the packages (apt-get download'ed once into the tests' cache)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb")
    DEBS.mkdir(parents=True, exist_ok=True)
    names: dict[str, set[str]] = {"postinst.d": set(), "postrm.d": set()}
    for package in DEBIAN_PACKAGES:
        debs = sorted(DEBS.glob(f"{package}_*.deb"))
        if not debs:
            got = subprocess.run(["apt-get", "download", package], cwd=DEBS, capture_output=True, text=True,
                                 timeout=300)
            debs = sorted(DEBS.glob(f"{package}_*.deb"))
            if got.returncode != 0 or not debs:
                pytest.skip(f"apt-get download {package} failed: {got.stderr.strip()[-200:]}")
        listing = subprocess.run(["dpkg-deb", "-c", str(debs[-1])], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
        for match in re.finditer(r"\./etc/kernel/(postinst\.d|postrm\.d)/([^/\s]+)$", listing, re.MULTILINE):
            names[match.group(1)].add(match.group(2))
    return names


@pytest.mark.slow
def test_debian_hook_runs_after_every_debian_hook(tmp_path: Path) -> None:
    """Against the hook names Debian 12's own packages ship, the real run-parts (as a kernel
    package's postinst and postrm call it) runs zzz-bootwatch last: after zz-update-grub has
    rewritten grub.cfg, after zz-systemd-boot, and after the initramfs builders."""
    shipped = _debian_hook_names()
    assert "zz-update-grub" in shipped["postinst.d"] and "zz-update-grub" in shipped["postrm.d"], shipped
    assert {"initramfs-tools", "dracut", "zz-systemd-boot"} <= shipped["postinst.d"] & shipped["postrm.d"], shipped
    for directory, names in shipped.items():
        hooks = tmp_path / directory
        hooks.mkdir()
        for name in names:
            (hooks / name).write_text("#!/bin/sh\nexit 0\n")
            (hooks / name).chmod(0o755)
        shutil.copy2(DEBIAN_HOOK, hooks / "zzz-bootwatch")
        for option in ("--test", "--list"):
            listed = subprocess.run(["run-parts", option, f"--arg={VERSION}", f"--arg=/boot/vmlinuz-{VERSION}",
                                     str(hooks)], capture_output=True, text=True, check=True,
                                    env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, timeout=60).stdout.split()
            # Every shipped name is a valid run-parts name (else it would not run at all), ours too.
            assert sorted(listed) == sorted(str(hooks / name) for name in (*names, "zzz-bootwatch")), listed
            assert listed[-1] == str(hooks / "zzz-bootwatch"), listed
            assert listed.index(str(hooks / "zz-update-grub")) < listed.index(str(hooks / "zzz-bootwatch"))


# ------------------------------------------------------------------ the pacman hook

@dataclass
class Trigger:
    operations: list[str] = field(default_factory=list)
    type: str | None = None
    targets: list[str] = field(default_factory=list)


@dataclass
class Action:
    description: str | None = None
    when: str | None = None
    exec: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    abort_on_fail: bool = False
    needs_targets: bool = False


@dataclass
class AlpmHook:
    triggers: list[Trigger]
    action: Action


class AlpmHookError(ValueError):
    pass


LINE_MAX = 4095
"""libalpm reads a hook with fgets into a PATH_MAX buffer: a longer line would be cut in two."""


def alpm_wordsplit(value: str) -> list[str]:
    """libalpm's wordsplit() (lib/libalpm/util.c), which splits Exec: words at whitespace; a
    single or double quote groups up to the same quote, and is removed; a backslash before a quote
    makes it literal (inside quotes: before the same quote); an unclosed quote is an error."""
    words: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            break
        word = []
        while i < n and not value[i].isspace():
            c = value[i]
            if c in "'\"":
                i += 1
                while i < n and value[i] != c:
                    if value[i] == "\\" and i + 1 < n and value[i + 1] == c:
                        i += 1
                    word.append(value[i])
                    i += 1
                if i == n:
                    raise AlpmHookError(f"unbalanced quote in {value!r}")
                i += 1
            else:
                if c == "\\" and i + 1 < n and value[i + 1] in "'\"":
                    i += 1
                word.append(value[i])
                i += 1
        words.append("".join(word))
    return words


def parse_alpm_hook(text: str) -> AlpmHook:
    """A strict reading of alpm-hooks(5) (pacman 6 and 7), as libalpm's hook.c and ini parser
    take it, refusing what libalpm would only warn about or what the man page does not list.

    Lines are trimmed; empty lines and lines starting with '#' are skipped; ``[Trigger]``
    (repeatable) and ``[Action]`` (exactly one) open sections; every other line is ``Key = Value``
    (or a bare ``AbortOnFail`` / ``NeedsTargets``) within a section. [Trigger]: ``Operation =
    Install|Upgrade|Remove`` (required, repeatable), ``Type = Path|Package`` (required, once; the
    deprecated ``File`` refused), ``Target`` (required, repeatable). [Action]: ``Description``
    (optional, once), ``When = PreTransaction|PostTransaction`` (required, once), ``Exec``
    (required, once; split by :func:`alpm_wordsplit`; run with execv, so an absolute path),
    ``Depends`` (repeatable), ``AbortOnFail`` (PreTransaction only), ``NeedsTargets``.
    """
    reader = _HookReader()
    for number, raw in enumerate(text.split("\n"), 1):
        if len(raw) > LINE_MAX - 1:
            raise AlpmHookError(f"line {number}: longer than libalpm reads at once")
        line = raw.strip()
        if line and not line.startswith("#"):
            reader.line(line, number)
    return _validated(reader.triggers, reader.action)


class _HookReader:
    """The state of :func:`parse_alpm_hook`: the sections read so far, and the one being read."""

    def __init__(self) -> None:
        self.triggers: list[Trigger] = []
        self.action: Action | None = None
        self.section: str | None = None
        self.seen: set[tuple[int, str]] = set()

    def line(self, line: str, number: int) -> None:
        if line.startswith("[") and line.endswith("]"):
            self.section = line[1:-1]
            if self.section == "Trigger":
                self.triggers.append(Trigger())
            elif self.section == "Action" and self.action is None:
                self.action = Action()
            else:
                raise AlpmHookError(f"line {number}: invalid or repeated section {line}")
            return
        if self.section is None:
            raise AlpmHookError(f"line {number}: option outside a section")
        key, value = _option(line, number)
        once = (len(self.triggers) if self.section == "Trigger" else 0, key)
        if key in ("Type", "When", "Exec", "Description", "AbortOnFail", "NeedsTargets"):
            if once in self.seen:
                raise AlpmHookError(f"line {number}: {key} given twice")
            self.seen.add(once)
        if self.section == "Trigger":
            _trigger_option(self.triggers[-1], key, value, number)
        else:
            assert self.action is not None
            _action_option(self.action, key, value, number)


def _option(line: str, number: int) -> tuple[str, str]:
    """``Key = Value`` (both trimmed), or a bare flag with the value ""."""
    key, eq, value = line.partition("=")
    key, value = key.strip(), value.strip()
    flag = key in ("AbortOnFail", "NeedsTargets")
    if flag and eq:
        raise AlpmHookError(f"line {number}: {key} takes no value")
    if not flag and not value:
        raise AlpmHookError(f"line {number}: {key!r} needs a value")
    return key, value


def _trigger_option(trigger: Trigger, key: str, value: str, number: int) -> None:
    if key == "Operation" and value in ("Install", "Upgrade", "Remove"):
        trigger.operations.append(value)
    elif key == "Type" and value in ("Path", "Package"):
        trigger.type = value
    elif key == "Target":
        trigger.targets.append(value)
    else:
        raise AlpmHookError(f"line {number}: invalid [Trigger] option {key} = {value!r}")


def _action_option(action: Action, key: str, value: str, number: int) -> None:
    if key == "When" and value in ("PreTransaction", "PostTransaction"):
        action.when = value
    elif key == "Description":
        action.description = value
    elif key == "Exec":
        action.exec = alpm_wordsplit(value)
        if not action.exec or not action.exec[0].startswith("/"):
            raise AlpmHookError(f"line {number}: Exec must start with an absolute path (libalpm runs it with execv)")
    elif key == "Depends":
        action.depends.append(value)
    elif key == "AbortOnFail":
        action.abort_on_fail = True
    elif key == "NeedsTargets":
        action.needs_targets = True
    else:
        raise AlpmHookError(f"line {number}: invalid [Action] option {key} = {value!r}")


def _validated(triggers: list[Trigger], action: Action | None) -> AlpmHook:
    if not triggers:
        raise AlpmHookError("no [Trigger]")
    for trigger in triggers:
        if not trigger.operations or trigger.type is None or not trigger.targets:
            raise AlpmHookError(f"a [Trigger] without Operation, Type or Target: {trigger}")
    if action is None or action.when is None or not action.exec:
        raise AlpmHookError("no [Action] with When and Exec")
    if action.abort_on_fail and action.when != "PreTransaction":
        raise AlpmHookError("AbortOnFail applies to PreTransaction hooks only")
    return AlpmHook(triggers, action)


def alpm_hook_order(names: list[str]) -> list[str]:
    """The order libalpm runs hooks in (_alpm_hook_cmp): by name, the .hook suffix ignored, bytes."""
    return sorted(names, key=lambda name: os.fsencode(name.removesuffix(".hook")))


MKINITCPIO_INSTALL_HOOK = """\
[Trigger]
Type = Path
Operation = Install
Operation = Upgrade
Operation = Remove
Target = usr/lib/initcpio/*
Target = usr/lib/firmware/*
Target = usr/src/*/dkms.conf

[Trigger]
Type = Path
Operation = Install
Operation = Upgrade
Target = usr/lib/modules/*/vmlinuz

[Action]
Description = Updating linux initcpios...
When = PostTransaction
Exec = /usr/share/libalpm/scripts/mkinitcpio install
NeedsTargets
"""
"""mkinitcpio's libalpm/hooks/90-mkinitcpio-install.hook (gitlab.archlinux.org/archlinux/mkinitcpio):
the parser reads a hook it was not written for."""


def test_the_parser_reads_mkinitcpios_hook() -> None:
    hook = parse_alpm_hook(MKINITCPIO_INSTALL_HOOK)
    assert [t.targets for t in hook.triggers][1] == ["usr/lib/modules/*/vmlinuz"]
    assert hook.action.exec == ["/usr/share/libalpm/scripts/mkinitcpio", "install"]
    assert hook.action.needs_targets


@pytest.mark.parametrize("broken", [
    MKINITCPIO_INSTALL_HOOK.replace("[Action]", "[Actions]"),
    MKINITCPIO_INSTALL_HOOK.replace("Operation = Remove", "Operation = Delete"),
    MKINITCPIO_INSTALL_HOOK.replace("Type = Path\nOperation = Install\nOperation = Upgrade\nTarget",
                                    "Type = File\nOperation = Install\nOperation = Upgrade\nTarget"),
    MKINITCPIO_INSTALL_HOOK.replace("When = PostTransaction\n", ""),
    MKINITCPIO_INSTALL_HOOK.replace("When = PostTransaction", "When = PostTransaction\nAbortOnFail"),
    MKINITCPIO_INSTALL_HOOK.replace("Exec = /usr/share", "Exec = 'usr/share"),
    MKINITCPIO_INSTALL_HOOK.replace("Exec = /usr/share", "Exec = usr/share"),
    MKINITCPIO_INSTALL_HOOK.replace("NeedsTargets", "NeedsTargets = yes"),
    MKINITCPIO_INSTALL_HOOK.replace("Description = ", "Descripton = "),
    "Target = boot/*\n" + MKINITCPIO_INSTALL_HOOK,
    MKINITCPIO_INSTALL_HOOK + "Exec = /usr/bin/true\n",
    MKINITCPIO_INSTALL_HOOK + "[Action]\nWhen = PostTransaction\nExec = /usr/bin/true\n",
    MKINITCPIO_INSTALL_HOOK.replace("Target = usr/src/*/dkms.conf", "Target = " + "x" * LINE_MAX),
], ids=["section", "operation", "deprecated-File", "no-When", "AbortOnFail-post", "unbalanced-quote",
        "relative-Exec", "bare-key-value", "unknown-key", "outside-section", "Exec-twice", "two-Actions",
        "long-line"])
def test_the_parser_is_strict(broken: str) -> None:
    with pytest.raises(AlpmHookError):
        parse_alpm_hook(broken)


def test_alpm_wordsplit_as_libalpm() -> None:
    assert alpm_wordsplit(" /bin/sh  -c 'a \"b\" c'  x\\'y \"d\\\"e\" ") == ["/bin/sh", "-c", 'a "b" c', "x'y", 'd"e']


def test_pacman_hook_is_a_valid_post_transaction_hook() -> None:
    hook = parse_alpm_hook(PACMAN_HOOK.read_text())
    assert hook.action.when == "PostTransaction"
    assert not hook.action.abort_on_fail and not hook.action.needs_targets
    assert hook.action.exec[:2] == ["/usr/bin/sh", "-c"] and len(hook.action.exec) == 3
    assert '"$b" scan --quiet --no-restore' in hook.action.exec[2]
    # The script is valid sh.
    subprocess.run(["sh", "-n", "-c", hook.action.exec[2]], check=True, timeout=30)
    [trigger] = hook.triggers
    assert trigger.type == "Path" and sorted(trigger.operations) == ["Install", "Remove", "Upgrade"]

    def triggered(path: str) -> bool:  # libalpm: fnmatch without FNM_PATHNAME, later targets override ("!")
        matched = False
        for target in trigger.targets:
            negated = target.startswith("!")
            if fnmatch.fnmatchcase(path, target[1:] if negated else target):
                matched = not negated
        return matched

    for path in ("usr/lib/modules/6.12.1-arch1-1/vmlinuz", "boot/intel-ucode.img", "boot/amd-ucode.img",
                 "usr/lib/initcpio/install/base", "usr/lib/firmware/amdgpu/psp_13_0_0_sos.bin.zst",
                 "usr/src/nvidia-565.77/dkms.conf"):
        assert triggered(path), path
    for path in ("usr/lib/modules/6.12.1-arch1-1/kernel/fs/btrfs/btrfs.ko.zst", "usr/bin/bash", "etc/fstab"):
        assert not triggered(path), path


def test_pacman_hook_runs_after_the_initramfs_hooks() -> None:
    """After mkinitcpio's (60-mkinitcpio-remove, 90-mkinitcpio-install), dracut's and booster's
    90- hooks, and a 90- hook that runs grub-mkconfig."""
    names = ["60-mkinitcpio-remove.hook", "90-mkinitcpio-install.hook", "90-dracut-install.hook",
             "90-booster-install.hook", "90-grub-mkconfig.hook", PACMAN_HOOK.name]
    assert alpm_hook_order(names)[-1] == PACMAN_HOOK.name


# ------------------------------------------------------------------ Debian's GRUB: grub.cfg, no BLS

@pytest.fixture(scope="module")
def debian_grub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """grub.cfg as the real grub-mkconfig (Debian's update-grub) writes it for two real kernel
    packages in a separate /boot ("both"), and again once the older one is gone ("newer")."""
    from realboot.grub_mkconfig import Layout, Unavailable, cached_kernels, missing_prerequisite, run_grub_mkconfig
    missing = missing_prerequisite()
    if missing is not None:
        pytest.skip(f"real grub-mkconfig: {missing}")
    try:
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(f"real grub-mkconfig: {e}")
    base = tmp_path_factory.mktemp("grub-mkconfig-hooks")
    both = run_grub_mkconfig(Layout.SEPARATE_BOOT, kernels, base / "both")
    newer = run_grub_mkconfig(Layout.SEPARATE_BOOT, kernels[1:], base / "newer")
    # One host: its update-grub writes the same filesystems' UUIDs, which GRUB's entry ids hold
    # (the two runs made two filesystems of each kind).
    text = newer.grub_cfg.read_text().replace(newer.root_uuid, both.root_uuid)
    newer.grub_cfg.write_text(text.replace(newer.boot_uuid, both.boot_uuid))
    for image in base.glob("*/*.img"):
        image.unlink()
    return {"both": both, "newer": newer, "old": kernels[0].version, "new": kernels[1].version}


@pytest.mark.slow
@pytest.mark.root
def test_debian_hooks_follow_update_grub(boot_tree: BootTree, debian_grub: dict[str, Any]) -> None:
    """On a Debian host (GRUB, no BLS), the postinst hook caches what the new grub.cfg names; after
    the package is removed and update-grub has rewritten grub.cfg without it, the postrm hook
    restores nothing, and nothing references the removed kernel any more."""
    both, newer, old, new = (debian_grub[k] for k in ("both", "newer", "old", "new"))
    host = Host.make(boot_tree)
    for path in both.files[both.boot_uuid]:
        if not path.startswith("/grub/"):
            boot_tree.write_file(path, size=4096)
    (boot_tree.boot / "grub").mkdir()
    shutil.copy(both.grub_cfg, boot_tree.boot / "grub" / "grub.cfg")

    run = host.run(Hook.DEBIAN, Change.INSTALL)
    # (The first read of a host's entries may warn that there is no record of an earlier one.)
    assert run.returncode == 0 and run.stdout == "" and not any("zzz-bootwatch" in line for line in run.stderr), run
    listed = boot_tree.list_json()
    for version in (old, new):
        for path in (f"/vmlinuz-{version}", f"/initrd.img-{version}"):
            assert listed.get(path, {}).get("state") == "CACHED", (path, listed.keys())

    # apt-get purge of the older kernel: dpkg deletes its files, initramfs-tools' postrm hook its
    # initramfs, zz-update-grub rewrites grub.cfg; then zzz-bootwatch.
    boot_tree.path(f"/vmlinuz-{old}").unlink()
    boot_tree.path(f"/initrd.img-{old}").unlink()
    shutil.copy(newer.grub_cfg, boot_tree.boot / "grub" / "grub.cfg")
    run = host.run(Hook.DEBIAN, Change.REMOVE)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", []), run
    assert not boot_tree.path(f"/vmlinuz-{old}").exists()
    listed = boot_tree.list_json()
    assert (listed[f"/vmlinuz-{old}"]["state"], listed[f"/vmlinuz-{old}"]["count"]) == ("MISSING", 0)
    assert listed[f"/vmlinuz-{new}"]["state"] == "CACHED" and listed[f"/vmlinuz-{new}"]["count"] > 0
