"""The cache index: boom's ``cacheindex.json`` as an in-memory model.

The model keeps the parsed JSON as it was read, so that keys written by boom or by a newer
bootwatch survive a rewrite. boom keeps the dictionaries of ``paths`` and ``images`` entries as it
loads them and only sets its own keys, so bootwatch's extra data lives *inside* those entries under
a ``"bootwatch"`` key, where boom carries it along. (boom rebuilds the top level from its three
keys, so a top-level extra key would be lost the first time boom writes.)

    index:  {"/vmlinuz-6.1.0": ["<sha1>", ...]}              oldest first, new ids appended
    paths:  {"/vmlinuz-6.1.0": {"path_mode", "path_uid", "path_gid", "path_attrs",
                                "bootwatch": {"stat": [dev, ino, size, mtime_ns, ctime_ns],
                                              "stat_image_id": "<sha1>"}}}
    images: {"<sha1>": {"image_ts": 1795320654,
                        "bootwatch": {"sha256", "size", "cached_at", "verified": {...}}}}

``stat``/``stat_image_id`` record the boot file's signature when it was last hashed and the id it
hashed to: while the signature holds, bootwatch knows the file's content without reading it.

``restored`` records the very file a restore wrote, read back after its rename:

    "restored": {"stat": [dev, ino, size, mtime_ns, ctime_ns], "mode": st_mode, "uid": uid,
                 "gid": gid, "birth_ns": statx btime or null, "generation": inode generation
                 or null, "image_id": "<sha1>", "made_marker": true}

A ``.boomrestored`` marker makes the boot file bootwatch's restored copy (which it may delete
again) only while the file at that very name (a symlink there is never it) has exactly this
identity: the same inode, and no change since (any write, chmod, chown, link or rename changes
the ctime). The birth time and the inode generation, where the filesystem has them, tell a new
file that got a freed inode number back within one timestamp tick from the restored one (see
``bootwatch/cache/fileid.py``); where it has neither, the identity is weaker. ``made_marker``: the
restore created the marker, so bootwatch removes it once that file is gone. ``stat`` is rewritten whenever the file is
hashed again; ``restored`` only by a restore, so a file put back by a package manager with the
same content matches ``stat`` but never ``restored``.

Validation is total: an index either is refused as corrupt (:class:`IndexCorruptError` naming the
file), or every value a command uses is one it can use. Refused: what boom could not read or would
misread (not JSON, NaN/Infinity or a number too large for a float, nesting deeper than the parser
goes, a missing table, an unsafe path, an empty or repeated id list, an id without its image),
``image_ts`` outside :data:`IMAGE_TS_RANGE`, a ``path_mode`` that is no ``st_mode`` (above 0o177777),
a uid or gid that is no ``uid_t``, and a ``"bootwatch"`` value that is not an object. Values
*inside* ``"bootwatch"`` are bootwatch's own hints: a wrong one is ignored by the typed accessors
(:meth:`CacheIndex.verification`, :meth:`CacheIndex.recorded_sha256`, ...), never trusted.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootwatch.cache.fileid import FileIdentity
from bootwatch.cache.hashing import Digest, StatSignature
from bootwatch.errors import IndexCorruptError, UnsafePathError
from bootwatch.safety import normalize_boot_path

IMAGE_ID = re.compile(r"[0-9a-f]{40}")
EXTRA = "bootwatch"
RESTORED_KEY = "restored"  # in a path's extra data: the file a restore wrote

# image_ts is a file's mtime: it must be a time that time.localtime and os.utime take everywhere
# (from 1901, the 32-bit time_t, to the end of year 9999, what strftime can print).
IMAGE_TS_RANGE = (-(2 ** 31), 253402300799)
MODE_MAX = 0o177777  # st_mode: the file type and the permission bits, 16 bits
ID_MAX = 2 ** 32 - 2  # uid_t/gid_t; 2**32 - 1 is (uid_t)-1, "no owner"
# The integers of a ``paths`` entry, and their highest values.
_PATH_INTEGERS = (("path_mode", MODE_MAX), ("path_uid", ID_MAX), ("path_gid", ID_MAX))

# The bulk forms of the checks, over all keys joined by newlines (see _plainly_valid):
# a safe boom-style path is "/" and a component, repeated; a component is neither "." nor "..",
# and holds no "/", NUL, newline or surrogate (the rules of safety.normalize_boot_path); an ESP
# key has one or more "/.." before it (where it leads is checked when it is resolved).
_SAFE_PATH = r"(?:/\.\.)*(?:/(?!\.\.?(?:[/\n]|\Z))[^/\x00\n\ud800-\udfff]+)+"
_SAFE_PATHS = re.compile(rf"{_SAFE_PATH}(?:\n{_SAFE_PATH})*")
_IMAGE_IDS = re.compile(r"[0-9a-f]{40}(?:\n[0-9a-f]{40})*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a large index is parsed.

    json.loads of a 10,000-path index makes some 100,000 dicts and lists, none of them garbage;
    the collector, triggered every 700 new containers, would traverse them again and again
    (a third of the parse time). It is enabled again afterwards if it was enabled before; a
    thread that pauses it meanwhile leaves it to the first pauser to enable.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _refuse_constant(name: str) -> float:
    # NaN and Infinity are no JSON (boom's json.load takes them, but they order and compare as no time does).
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def is_time(value: object) -> bool:
    """A number of seconds since the epoch that every time function takes (see IMAGE_TS_RANGE)."""
    return value.__class__ in (int, float) and IMAGE_TS_RANGE[0] <= value <= IMAGE_TS_RANGE[1]


def valid_path_meta(meta: object) -> bool:
    """A ``paths`` entry bootwatch can use: integer mode, uid and gid in range, extra data an object."""
    return isinstance(meta, dict) \
        and all(meta.get(key).__class__ is int and 0 <= meta[key] <= highest for key, highest in _PATH_INTEGERS) \
        and isinstance(meta.get(EXTRA, {}), dict)


def valid_image_entry(entry: object) -> bool:
    """An ``images`` entry bootwatch can use: an image_ts in range, extra data an object."""
    return isinstance(entry, dict) and is_time(entry.get("image_ts")) and isinstance(entry.get(EXTRA, {}), dict)


def _shorten(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:20]}..."


def parse_json(text: str | bytes) -> object:
    """``json.loads`` as the index is read: ValueError for NaN, Infinity and numbers beyond a float,
    RecursionError for nesting deeper than the parser goes (both mean "not the JSON boom writes")."""
    with _collector_paused():
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def is_image_id(value: object) -> bool:
    return isinstance(value, str) and IMAGE_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class RestoredFile:
    """The file a restore wrote (see the module docstring): its identity, the image it holds, and
    whether the restore created the ``.boomrestored`` marker beside it (False: it found one)."""

    identity: FileIdentity
    image_id: str
    made_marker: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.identity.to_json(), "image_id": self.image_id, "made_marker": self.made_marker}

    @classmethod
    def from_json(cls, value: object) -> RestoredFile | None:
        """None for anything but a complete, well-typed record (the index is untrusted)."""
        if not isinstance(value, dict):
            return None
        identity = FileIdentity.from_json(value)
        made_marker = value.get("made_marker", False)
        if identity is None or not is_image_id(value.get("image_id")) or not isinstance(made_marker, bool):
            return None
        return cls(identity, value["image_id"], made_marker)

    def is_file(self, identity: FileIdentity | None) -> bool:
        """Whether ``identity`` (:func:`bootwatch.cache.fileid.identity_at` of the name) is this very file,
        unchanged since it was restored."""
        return identity == self.identity


# One path's row of a SignatureTable: the boot file's lstat when it was last hashed (st_dev,
# st_ino, st_size, st_mtime_ns, st_ctime_ns), the image id it hashed to, and whether that image is
# still the path's newest.
SignatureEntry = tuple[int, int, int, int, int, str, bool]


class SignatureTable:
    """Whether a boot file is unchanged since it was hashed, for every tier that asks.

    The lock-free pass (reconcile.unchanged_pass, reading it from ``.bootwatch-signatures``), a
    full pass (reconcile.unchanged_walked) and a per-path pass (reconcile, Transaction.add,
    BootCache.path_status) all ask :meth:`image_of`: the one rule of what "unchanged" means.
    ``entries``: for each cached path its :data:`SignatureEntry`, or None where the index records
    no signature that any lstat could match (none, or not five integers and an image id).
    """

    __slots__ = ("entries",)

    def __init__(self, entries: dict[str, SignatureEntry | None]) -> None:
        self.entries = entries

    def image_of(self, path: str, st: os.stat_result) -> str | None:
        """The image id of the boot file ``path``, if ``st`` (its stat) is still the one recorded
        when it was hashed; else None (not cached, no usable signature, or changed since)."""
        entry = self.entries.get(path)
        if entry is None or entry[:5] != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        return entry[5]

    def newest_image_of(self, path: str, st: os.stat_result) -> str | None:
        """:meth:`image_of`, if that image is the path's newest: a pass has nothing to do for the file.

        The same comparison, with the row's newest flag in it: a full pass asks it of every file.
        """
        entry = self.entries.get(path)
        if entry is None or entry != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, entry[5], True):
            return None
        return entry[5]

    def newest_recorded(self, path: str) -> str | None:
        """The newest image of ``path`` if the file hashed to it has a usable signature; else None."""
        entry = self.entries.get(path)
        return entry[5] if entry is not None and entry[6] else None


@dataclass(frozen=True)
class PathMeta:
    """The file attributes boom records for a path, restored with the image."""

    mode: int
    uid: int
    gid: int


class CacheIndex:
    """A validated, mutable view of ``cacheindex.json``.

    Every method keeps the three boom invariants: each index path has an entry in ``paths`` and a
    non-empty id list, and each listed id has an entry in ``images``.
    """

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data = data if data is not None else {"index": {}, "paths": {}, "images": {}}

    # ---------------------------------------------------------------- loading and saving

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | Path) -> CacheIndex:
        """Parse and validate; anything boom could not read, or that is hostile, is corrupt."""
        try:
            data = parse_json(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise IndexCorruptError(f"is not valid JSON ({e})", path=source) from None
        except RecursionError:
            raise IndexCorruptError("is not valid JSON (nested too deeply)", path=source) from None
        cls.validate(data, source=source)
        return cls(data)  # type: ignore[arg-type]  # validate: an object of the three tables

    @staticmethod
    def validate(data: object, *, source: str | Path) -> None:
        """Raise :class:`IndexCorruptError` naming the first problem; return if there is none.

        The common case, an index without a problem, is proved so in bulk (:func:`_plainly_valid`);
        only an index that fails that is checked entry by entry, to name what is wrong (or to
        accept what the bulk test was too strict for, like a ``true`` image_ts).
        """
        if _plainly_valid(data):
            return
        problem = _first_problem(data)
        if problem is not None:
            raise IndexCorruptError(problem, path=source)

    def to_json(self) -> bytes:
        # Compact: a 10,000-path index is parsed on every transaction, and boom reads any layout.
        return json.dumps(self._data, separators=(",", ":")).encode() + b"\n"

    def copy(self) -> CacheIndex:
        # Through JSON, not copy.deepcopy: the C parser and encoder go as deep as the index was
        # parsed, deepcopy's Python recursion only a third as deep (an unknown key may nest).
        return CacheIndex(parse_json(self.to_json()))  # type: ignore[arg-type]

    # ---------------------------------------------------------------- queries

    def paths(self) -> list[str]:
        return sorted(self._data["index"])

    def __contains__(self, path: str) -> bool:
        return path in self._data["index"]

    def __len__(self) -> int:
        return len(self._data["index"])

    def image_ids(self, path: str) -> list[str]:
        """The ids of ``path`` in index order (oldest first)."""
        return list(self._data["index"].get(path, []))

    def images_newest_first(self, path: str) -> list[str]:
        """Ordered as boom orders them: by ``image_ts`` descending, ties in index order."""
        ids = self._data["index"].get(path, [])
        return sorted(ids, key=lambda i: self._data["images"][i]["image_ts"], reverse=True)

    def newest(self, path: str) -> str:
        ids = self._data["index"].get(path, [])
        if len(ids) == 1:  # the common case needs no sort
            return str(ids[0])
        return self.images_newest_first(path)[0]

    def image_ts(self, image_id: str) -> int:
        return int(self._data["images"][image_id]["image_ts"])

    def all_image_ids(self) -> set[str]:
        """Every id some path lists (the ``images`` table may hold more: boom leaves strays)."""
        return {i for ids in self._data["index"].values() for i in ids}

    def known_image_ids(self) -> set[str]:
        return set(self._data["images"])

    def paths_of(self, image_id: str) -> list[str]:
        return sorted(p for p, ids in self._data["index"].items() if image_id in ids)

    def meta(self, path: str) -> PathMeta:
        m = self._data["paths"][path]
        return PathMeta(m["path_mode"], m["path_uid"], m["path_gid"])

    def path_extra(self, path: str) -> dict[str, Any]:
        extra = self._data["paths"][path].get(EXTRA)
        return extra if isinstance(extra, dict) else {}

    def image_extra(self, image_id: str) -> dict[str, Any]:
        extra = self._data["images"].get(image_id, {}).get(EXTRA)
        return extra if isinstance(extra, dict) else {}

    def path_mtime_ns(self, path: str, image_id: str) -> int | None:
        """The boot file's own mtime when it last had the content ``image_id``, from its recorded
        stat signature; None if none is recorded for that image or it is not a usable time.

        ``image_ts`` belongs to the image, which paths of the same content share: it is the mtime
        of whichever path cached it first, so a restore takes the path's own mtime from here.
        """
        extra = self.path_extra(path)
        signature = StatSignature.from_json(extra.get("stat"))
        if signature is None or extra.get("stat_image_id") != image_id:
            return None
        return signature.mtime_ns if 0 <= signature.mtime_ns < 1 << 63 else None

    def recorded_sha256(self, image_id: str) -> str | None:
        """The SHA256 recorded when the image was cached, if one was (64 lowercase hex digits)."""
        value = self.image_extra(image_id).get("sha256")
        return value if isinstance(value, str) and _SHA256.fullmatch(value) else None

    def recorded_size(self, image_id: str) -> int | None:
        """The size recorded when the image was cached, if one was."""
        value = self.image_extra(image_id).get("size")
        return value if value.__class__ is int and value >= 0 else None

    def verified_ok(self, image_id: str) -> bool:
        """Whether the last recorded check of the image passed."""
        verified = self.verification(image_id)
        return verified is not None and verified["ok"]

    def verification(self, image_id: str) -> dict[str, Any] | None:
        """The last verification of an image as ``{"time", "ok", "unchecked", "message", "checks"}``, or None.

        None also for a record without a boolean ``ok``: unknown is never verified. A record of a
        run that hashed the image but was cut off in its content check says ``"unchecked": true``
        and holds no ``ok`` and no time: it is not ok, not failed, and verified first next time.
        ``time`` is None when it is not a time (see :func:`is_time`); ``checks`` keeps the objects
        of the list and their scalar values only, so what is printed is flat.
        """
        verified = self.image_extra(image_id).get("verified")
        if not isinstance(verified, dict):
            return None
        unchecked = verified.get("unchecked") is True
        if not unchecked and verified.get("ok").__class__ is not bool:
            return None
        when, message, checks = verified.get("time"), verified.get("message"), verified.get("checks")
        return {
            "time": when if is_time(when) and not unchecked else None,
            "ok": verified.get("ok") is True and not unchecked,
            "unchecked": unchecked,
            "message": message if isinstance(message, str) else "",
            "checks": [{k: v for k, v in check.items() if isinstance(v, (str, int, float, bool)) or v is None}
                       for check in checks if isinstance(check, dict)] if isinstance(checks, list) else [],
        }

    def signatures(self, paths: Iterable[str] | None = None) -> SignatureTable:
        """The :class:`SignatureTable` of ``paths`` (every path by default; paths not cached are left out).

        A full pass takes every path at once; a per-path pass, one. The lock-free pass reads the
        same table as a full pass left it (signatures.py), so no tier can answer differently.
        """
        index, metas = self._data["index"], self._data["paths"]
        entries: dict[str, SignatureEntry | None] = {}
        for path in index if paths is None else paths:
            ids = index.get(path)
            if ids is not None:
                entries[path] = self._signature_entry(path, ids, metas[path].get(EXTRA))
        return SignatureTable(entries)

    def _signature_entry(self, path: str, ids: list[str], extra: object) -> SignatureEntry | None:
        """The recorded signature of ``path`` as a table entry; None if there is none it could use.

        Only five integers count (JSON could hold 4096.0 or true, which compare equal to 4096 and
        1): exact ints in the common case, StatSignature's own rule otherwise; and only an image id.
        """
        if not isinstance(extra, dict):
            return None
        recorded, image_id = extra.get("stat"), extra.get("stat_image_id")
        if recorded.__class__ is not list or len(recorded) != 5:
            return None
        if not all(value.__class__ is int for value in recorded) and StatSignature.from_json(recorded) is None:
            return None
        dev, ino, size, mtime_ns, ctime_ns = recorded
        newest = ids[0] if len(ids) == 1 else self.newest(path)
        if image_id == newest:  # the common case: an id the index lists, so no pattern test
            return dev, ino, size, mtime_ns, ctime_ns, newest, True
        return (dev, ino, size, mtime_ns, ctime_ns, str(image_id), False) if is_image_id(image_id) else None

    # ---------------------------------------------------------------- mutations

    def add_image(self, path: str, digest: Digest, st_mode: int, uid: int, gid: int, mtime: int,
                  *, cached_at: int) -> bool:
        """Record that ``path`` now has the content ``digest``. True if that is not its newest image yet.

        ``image_ts`` is the boot file's mtime, as boom records it. boom takes the image with the
        highest ``image_ts`` as the newest, so a new id gets at least the path's highest
        ``image_ts`` plus one: a file rewritten within the same second is still the newest for boom.
        """
        normalize_boot_path(path)
        ids = self._data["index"].setdefault(path, [])
        newest_ts = max((self.image_ts(i) for i in ids), default=None)
        is_newest = bool(ids) and self.newest(path) == digest.sha1
        image = self._data["images"].get(digest.sha1)
        if image is None:
            image = self._data["images"][digest.sha1] = {"image_ts": int(mtime)}
        if not is_newest:
            # The content may have gone back to an older image: it is the newest again.
            self._make_newest(ids, digest.sha1, newest_ts)
        extra = image.setdefault(EXTRA, {})
        extra.update({"sha256": digest.sha256, "size": digest.size})
        extra.setdefault("cached_at", cached_at)
        meta = self._data["paths"].setdefault(path, {})
        meta.update({"path_mode": st_mode, "path_uid": uid, "path_gid": gid})
        meta.setdefault("path_attrs", {})
        return not is_newest

    def make_newest(self, path: str, image_id: str) -> None:
        """Make ``image_id``, one of ``path``'s images, its newest again (the boot file has that
        content once more: ``restore --image`` put it back)."""
        ids = self._data["index"][path]
        if image_id not in ids:
            raise KeyError(image_id)
        if self.newest(path) != image_id:
            self._make_newest(ids, image_id, max(self.image_ts(i) for i in ids))

    def _make_newest(self, ids: list[str], image_id: str, newest_ts: int | None) -> None:
        """Append ``image_id`` to a path's ids (moving it if it is there) with an ``image_ts`` above
        ``newest_ts``, the path's highest: boom takes the highest ``image_ts`` as the newest, so
        an image made newest within the same second is still the newest for boom."""
        if image_id in ids:
            ids.remove(image_id)
        ids.append(image_id)
        image = self._data["images"][image_id]
        if newest_ts is not None and image["image_ts"] <= newest_ts:
            image["image_ts"] = int(newest_ts) + 1

    def record_signature(self, path: str, signature: StatSignature, image_id: str) -> None:
        extra = self._data["paths"][path].setdefault(EXTRA, {})
        extra["stat"] = signature.to_json()
        extra["stat_image_id"] = image_id

    def record_restored(self, path: str, restored: RestoredFile) -> None:
        """Record the identity of the file a restore of ``path`` just wrote."""
        meta = self._data["paths"][path]
        if not isinstance(meta.get(EXTRA), dict):
            meta[EXTRA] = {}
        meta[EXTRA][RESTORED_KEY] = restored.to_json()

    def restored_file(self, path: str) -> RestoredFile | None:
        """The recorded identity of the file a restore wrote for ``path``; None if there is none
        (boom's restores record nothing) or it is not a valid record."""
        if path not in self._data["index"]:
            return None
        return RestoredFile.from_json(self.path_extra(path).get(RESTORED_KEY))

    def forget_restored(self, path: str) -> bool:
        """Drop the restored-file record of ``path``; True if there was one."""
        if path not in self._data["index"]:
            return False
        return self.path_extra(path).pop(RESTORED_KEY, None) is not None

    def record_verification(self, image_id: str, result: dict[str, Any]) -> None:
        self._data["images"][image_id].setdefault(EXTRA, {})["verified"] = result

    def remove_path(self, path: str) -> list[str]:
        """Forget a path; return the ids no other path lists any more (their entries are dropped)."""
        return self.remove_paths([path])

    def remove_paths(self, paths: Iterable[str]) -> list[str]:
        """Forget many paths; return the ids no remaining path lists (their entries are dropped).

        The remaining paths are looked at once for the whole set: :meth:`remove_path` in a loop
        looks at all of them once per path, and clean of 200,000 paths took minutes that way.
        """
        index, metas = self._data["index"], self._data["paths"]
        candidates: list[str] = []
        for path in paths:
            candidates += index.pop(path, [])
            metas.pop(path, None)
        return self._drop_unlisted(candidates)

    def remove_image_from_path(self, path: str, image_id: str) -> list[str]:
        """Forget one image of a path (the path goes when its last image goes)."""
        ids = self._data["index"].get(path, [])
        if image_id in ids:
            ids.remove(image_id)
        if not ids:
            self._data["index"].pop(path, None)
            self._data["paths"].pop(path, None)
        return self._drop_unlisted([image_id])

    def trim(self, path: str, keep: int) -> list[str]:
        """Keep the newest ``keep`` images of ``path`` (at least one); return the ids now unlisted."""
        return self.trim_paths([path], keep)

    def trim_paths(self, paths: Iterable[str], keep: int) -> list[str]:
        """:meth:`trim` of each of ``paths``, with one look at all paths for the ids now unlisted.

        The newest image is never dropped, whatever ``keep`` says and however a list repeats an
        id: a path always keeps an image. Nor is the newest image whose check passed (its recorded
        verification is ok: at caching time or by verify) while no newer image of the path has
        passed one: when a kernel or initramfs written into the boot directory is broken (a full
        ``/boot`` truncated it), or its check has not run yet, the previous good image is what
        ``restore --image`` puts back, and trimming to ``keep`` must not take it first. It is the
        one rule for every trim: each caching (``Transaction.add``) and ``clean``.
        """
        index = self._data["index"]
        keep = max(keep, 1)
        dropped: list[str] = []
        for path in paths:
            ids = index.get(path, ())
            if len(ids) <= keep:
                continue
            newest_first = list(dict.fromkeys(self.images_newest_first(path)))
            kept = set(newest_first[:keep])
            good = next((i for i in newest_first if self.verified_ok(i)), None)
            if good is not None:
                kept.add(good)
            index[path] = list(dict.fromkeys(i for i in ids if i in kept))
            dropped += [i for i in newest_first if i not in kept]
        return self._drop_unlisted(dropped)

    def drop_stray_images(self) -> list[str]:
        """Remove ``images`` entries that no path lists."""
        return self._drop_unlisted(list(self._data["images"]))

    def _drop_unlisted(self, ids: Iterable[str]) -> list[str]:
        ids = list(ids)
        if not ids:
            return []
        listed = self.all_image_ids()
        gone = [i for i in dict.fromkeys(ids) if i not in listed]
        for image_id in gone:
            self._data["images"].pop(image_id, None)
        return gone

    def raw(self) -> dict[str, dict[str, Any]]:
        """The underlying JSON object, which fsck's salvage (``fsck._salvage``) merges old copies
        and unclaimed images into before it makes a new index of it. Do not keep references."""
        return self._data


# ---------------------------------------------------------------- validation, entry by entry

def _first_problem(data: object) -> str | None:
    """What :meth:`CacheIndex.validate` says of ``data``: its first problem, or None."""
    if not isinstance(data, dict):
        return f"top level is a {type(data).__name__}, expected an object"
    for key in ("index", "paths", "images"):
        if not isinstance(data.get(key), dict):
            return f"'{key}' is missing or is not an object"
    index, paths, images = data["index"], data["paths"], data["images"]
    for path, ids in index.items():
        problem = _index_entry_problem(path, ids, images) or _path_meta_problem(path, paths.get(path))
        if problem is not None:
            return problem
    for image_id, meta in images.items():
        problem = _image_entry_problem(image_id, meta)
        if problem is not None:
            return problem
    return None


def _index_entry_problem(path: str, ids: object, images: dict[str, Any]) -> str | None:
    try:
        normalize_boot_path(path)
    except UnsafePathError as e:
        return f"index path {path!r} is unsafe: {e.message}"
    if not isinstance(ids, list) or not ids:
        return f"index['{path}'] must be a non-empty list of image ids"
    for image_id in ids:
        if not is_image_id(image_id):
            return f"index['{path}'] holds {image_id!r}, not a 40-digit lowercase SHA1"
        if not isinstance(images.get(image_id), dict):
            return f"image {image_id} of '{path}' has no entry in 'images'"
    if len(set(ids)) != len(ids):
        twice = next(i for n, i in enumerate(ids) if i in ids[:n])
        return f"index['{path}'] lists image {twice} more than once"
    return None


def _path_meta_problem(path: str, meta: object) -> str | None:
    if not isinstance(meta, dict):
        return f"path '{path}' has no entry in 'paths'"
    for key, highest in _PATH_INTEGERS:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"paths['{path}'].{key} is missing or is not an integer"
        if not 0 <= value <= highest:
            return f"paths['{path}'].{key} is {_shorten(value)}, not between 0 and {highest}"
    if not isinstance(meta.get(EXTRA, {}), dict):
        return f"paths['{path}'].{EXTRA} is not an object"
    return None


def _image_entry_problem(image_id: str, meta: object) -> str | None:
    if not is_image_id(image_id):
        return f"'images' has a key {image_id!r} that is not an image id"
    if not isinstance(meta, dict) or not isinstance(meta.get("image_ts"), (int, float)):
        return f"images['{image_id}'].image_ts is missing or is not a number"
    low, high = IMAGE_TS_RANGE
    if not low <= meta["image_ts"] <= high:
        return f"images['{image_id}'].image_ts is {_shorten(meta['image_ts'])}, not a time between {low} and {high}"
    if not isinstance(meta.get(EXTRA, {}), dict):
        return f"images['{image_id}'].{EXTRA} is not an object"
    return None


# ---------------------------------------------------------------- validation in bulk

def _plainly_valid(data: object) -> bool:
    """Every check of :meth:`CacheIndex.validate`, in bulk, for an index that has no problem.

    Every scan loads the whole index (10,000 paths on a host that tracks everything), so the
    common case must not cost four function calls per path: one regular expression over all
    the paths joined by newlines, one over all the image ids, and type tests of exact classes.
    A newline is what no path or id may hold, so the joined string has exactly one fewer
    newline than there are keys unless a key holds one. True only if every check passes;
    False means "look closer" (:func:`_first_problem`).
    """
    try:
        if not isinstance(data, dict) or data.__class__ is not dict:
            return False
        index, paths, images = data.get("index"), data.get("paths"), data.get("images")
        if index.__class__ is not dict or paths.__class__ is not dict or images.__class__ is not dict:
            return False
        listed = _plainly_listed(index, paths)
        if listed is None or not _plain_images(images):
            return False
        for keys, pattern in ((index, _SAFE_PATHS), (images, _IMAGE_IDS)):
            if keys:
                joined = "\n".join(keys)  # TypeError for a key that is not a string
                if joined.count("\n") != len(keys) - 1 or pattern.fullmatch(joined) is None:
                    return False
        # Each listed id is a key of 'images' (so an image id, tested above) whose entry is a
        # dict (tested above). An id that is not hashable raises TypeError.
        return bool(images.keys() >= set(listed))
    except TypeError:
        return False


def _plainly_listed(index: dict[str, Any], paths: dict[str, Any]) -> list[str] | None:
    """Every id the ``index`` table lists, if each of its entries and its ``paths`` entry passes
    the checks of the exact classes (the keys are tested by the caller); else None."""
    listed: list[str] = []
    for path, ids in index.items():
        if ids.__class__ is not list or not ids or (len(ids) > 1 and len(set(ids)) != len(ids)):
            return None
        listed += ids
        meta = paths.get(path)
        if meta.__class__ is not dict:
            return None
        mode, uid, gid = meta.get("path_mode"), meta.get("path_uid"), meta.get("path_gid")
        if mode.__class__ is not int or uid.__class__ is not int or gid.__class__ is not int \
                or not (0 <= mode <= MODE_MAX and 0 <= uid <= ID_MAX and 0 <= gid <= ID_MAX):
            return None
        extra = meta.get(EXTRA)
        if extra is not None and extra.__class__ is not dict:
            return None
    return listed


def _plain_images(images: dict[str, Any]) -> bool:
    """Whether every ``images`` entry passes the checks of the exact classes (keys: the caller)."""
    low, high = IMAGE_TS_RANGE
    for meta in images.values():
        if meta.__class__ is not dict:
            return False
        ts = meta.get("image_ts")
        kind = ts.__class__
        if (kind is not int and kind is not float) or not low <= ts <= high:  # type: ignore[operator]
            return False
        extra = meta.get(EXTRA)
        if extra is not None and extra.__class__ is not dict:
            return False
    return True
