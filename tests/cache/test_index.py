"""The index model: boom's three tables, its invariants, and what a hostile or broken index is."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest

from bootwatch.cache.hashing import Digest, StatSignature
from bootwatch.cache.index import CacheIndex, _plainly_valid
from bootwatch.errors import IndexCorruptError

MODE = 0o100644


def digest(data: bytes) -> Digest:
    return Digest(hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest(), len(data))


def add(index: CacheIndex, path: str, data: bytes, mtime: int = 1_700_000_000) -> bool:
    return index.add_image(path, digest(data), MODE, 0, 0, mtime, cached_at=mtime)


def valid() -> dict:
    i = "a" * 40
    return {"index": {"/vmlinuz-1": [i]},
            "paths": {"/vmlinuz-1": {"path_mode": MODE, "path_uid": 0, "path_gid": 0, "path_attrs": {}}},
            "images": {i: {"image_ts": 1_700_000_000}}}


def test_a_valid_boom_index_parses_and_round_trips_extra_keys() -> None:
    data = valid()
    data["paths"]["/vmlinuz-1"]["future_key"] = [1, 2]
    data["images"]["a" * 40]["bootwatch"] = {"sha256": "x"}
    index = CacheIndex.from_json(json.dumps(data), source="idx")
    assert index.paths() == ["/vmlinuz-1"]
    assert json.loads(index.to_json()) == data, "keys boom or a newer bootwatch wrote were lost"


def _broken(mutate) -> str:
    data = valid()
    mutate(data)
    return json.dumps(data)


BROKEN = {
    "truncated": json.dumps(valid())[:-7],
    "not json": "this is not json",
    "top level list": "[]",
    "missing index": _broken(lambda d: d.pop("index")),
    "missing paths": _broken(lambda d: d.pop("paths")),
    "missing images": _broken(lambda d: d.pop("images")),
    "index is a list": _broken(lambda d: d.__setitem__("index", [])),
    "ids not a list": _broken(lambda d: d["index"].__setitem__("/vmlinuz-1", "a" * 40)),
    "empty id list": _broken(lambda d: d["index"].__setitem__("/vmlinuz-1", [])),
    "short id": _broken(lambda d: d["index"].__setitem__("/vmlinuz-1", ["abc"])),
    "uppercase id": _broken(lambda d: d["index"].__setitem__("/vmlinuz-1", ["A" * 40])),
    "id without image": _broken(lambda d: d["images"].clear()),
    "path without paths entry": _broken(lambda d: d["paths"].clear()),
    "mode is a string": _broken(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("path_mode", "0644")),
    "uid missing": _broken(lambda d: d["paths"]["/vmlinuz-1"].pop("path_uid")),
    "gid is a bool": _broken(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("path_gid", True)),
    "image_ts missing": _broken(lambda d: d["images"]["a" * 40].pop("image_ts")),
    "image_ts string": _broken(lambda d: d["images"]["a" * 40].__setitem__("image_ts", "now")),
    "hostile path ..": _broken(lambda d: [d["index"].__setitem__("/sub/../../etc/passwd", ["a" * 40]),
                                          d["paths"].__setitem__("/sub/../../etc/passwd",
                                                                 dict(d["paths"]["/vmlinuz-1"]))]),
    "esp key not normalised": _broken(lambda d: [d["index"].__setitem__("/../efi/../x", ["a" * 40]),
                                                 d["paths"].__setitem__("/../efi/../x",
                                                                        dict(d["paths"]["/vmlinuz-1"]))]),
    "relative path": _broken(lambda d: [d["index"].__setitem__("vmlinuz", ["a" * 40]),
                                        d["paths"].__setitem__("vmlinuz", dict(d["paths"]["/vmlinuz-1"]))]),
    "dot component": _broken(lambda d: [d["index"].__setitem__("/./vmlinuz", ["a" * 40]),
                                        d["paths"].__setitem__("/./vmlinuz", dict(d["paths"]["/vmlinuz-1"]))]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_index_is_corrupt_with_a_message_naming_the_file(case: str) -> None:
    with pytest.raises(IndexCorruptError) as info:
        CacheIndex.from_json(BROKEN[case], source="/cache/cacheindex.json")
    message = str(info.value)
    assert message.startswith("/cache/cacheindex.json: "), message
    assert "\n" not in message
    assert info.value.hint and "fsck --repair" in info.value.hint


def test_hostile_path_is_named_in_the_error() -> None:
    with pytest.raises(IndexCorruptError, match=r"/sub/\.\./\.\./etc/passwd"):
        CacheIndex.from_json(BROKEN["hostile path .."], source="idx")


def test_an_esp_key_is_a_valid_index_path() -> None:
    """Keys of files on the ESP outside the boot directory start with /.. (see entries/inventory.py);
    where one leads is checked when it is resolved (safety.resolve_in_boot), not by the index."""
    keys = ("/../efi/EFI/Linux/arch.efi", "/../../esp/EFI/Linux/arch.efi")
    data = valid()
    for key in keys:
        data["index"][key] = list(data["index"]["/vmlinuz-1"])
        data["paths"][key] = dict(data["paths"]["/vmlinuz-1"])
    index = CacheIndex.from_json(json.dumps(data), source="idx")
    assert set(keys) <= set(index.paths())


def test_a_new_id_is_appended_when_content_changes() -> None:
    index = CacheIndex()
    a, b, c = b"one" * 100, b"two" * 100, b"three" * 100
    assert add(index, "/vmlinuz-1", a, 1000) is True
    assert add(index, "/vmlinuz-1", a, 1000) is False, "same content must not add an id"
    assert add(index, "/vmlinuz-1", b, 2000) is True
    assert add(index, "/vmlinuz-1", c, 3000) is True
    ids = [digest(x).sha1 for x in (a, b, c)]
    assert index.image_ids(index.paths()[0]) == ids, "index order must be oldest first, new ids appended"
    assert index.images_newest_first("/vmlinuz-1") == ids[::-1]
    assert index.newest("/vmlinuz-1") == ids[2]


def test_a_rewrite_within_the_same_second_is_still_the_newest_for_boom() -> None:
    index = CacheIndex()
    add(index, "/vmlinuz-1", b"a", 5000)
    add(index, "/vmlinuz-1", b"b", 5000)  # same mtime: boom picks by image_ts alone
    assert index.newest("/vmlinuz-1") == digest(b"b").sha1
    assert index.image_ts(digest(b"b").sha1) > index.image_ts(digest(b"a").sha1)


def test_content_going_back_to_an_older_image_makes_it_the_newest_again() -> None:
    index = CacheIndex()
    add(index, "/k", b"a", 1000)
    add(index, "/k", b"b", 2000)
    add(index, "/k", b"a", 3000)
    assert index.newest("/k") == digest(b"a").sha1
    assert index.image_ids("/k") == [digest(b"b").sha1, digest(b"a").sha1]
    CacheIndex.validate(index.raw(), source="idx")


def test_trim_keeps_the_newest_and_drops_unlisted_images() -> None:
    index = CacheIndex()
    for n in range(5):
        add(index, "/k", bytes([n]) * 10, 1000 + n)
    dropped = index.trim("/k", 2)
    assert sorted(dropped) == sorted(digest(bytes([n]) * 10).sha1 for n in range(3))
    assert index.images_newest_first("/k") == [digest(bytes([n]) * 10).sha1 for n in (4, 3)]
    assert index.known_image_ids() == set(index.image_ids("/k")), "dropped ids must leave 'images'"
    CacheIndex.validate(index.raw(), source="idx")


def test_an_image_shared_by_two_paths_survives_removing_one() -> None:
    index = CacheIndex()
    add(index, "/a", b"same")
    add(index, "/b", b"same")
    assert index.remove_path("/a") == []
    assert digest(b"same").sha1 in index.known_image_ids()
    assert index.remove_path("/b") == [digest(b"same").sha1]
    assert index.raw() == {"index": {}, "paths": {}, "images": {}}


def test_path_metadata_is_what_boom_records() -> None:
    index = CacheIndex()
    index.add_image("/k", digest(b"x"), 0o100600, 12, 34, 1000, cached_at=1)
    raw = index.raw()["paths"]["/k"]
    assert (raw["path_mode"], raw["path_uid"], raw["path_gid"], raw["path_attrs"]) == (0o100600, 12, 34, {})
    assert raw["path_mode"] & 0o170000 == 0o100000, "st_mode keeps the file type bits, as boom's does"


def stat_of(signature: StatSignature) -> os.stat_result:
    """A stat result with the fields of ``signature`` (a regular file's mode)."""
    return os.stat_result((0o100644, signature.inode, signature.device, 1, 0, 0, signature.size, 0, 0, 0,
                           0.0, 0.0, 0.0, 0, signature.mtime_ns, signature.ctime_ns))


def test_the_signature_table_follows_the_stat_signature() -> None:
    index = CacheIndex()
    add(index, "/k", b"x")
    sig = StatSignature(1, 2, 3, 4, 5)
    index.record_signature("/k", sig, digest(b"x").sha1)
    assert index.signatures().image_of("/k", stat_of(sig)) == digest(b"x").sha1
    assert index.signatures().image_of("/k", stat_of(StatSignature(1, 2, 3, 4, 6))) is None, \
        "a ctime change must invalidate"
    # It survives a round trip through JSON.
    again = CacheIndex.from_json(index.to_json(), source="idx")
    assert again.signatures(["/k"]).image_of("/k", stat_of(sig)) == digest(b"x").sha1


def test_copy_is_deep() -> None:
    index = CacheIndex()
    add(index, "/k", b"x")
    snapshot = copy.deepcopy(index.raw())
    other = index.copy()
    other.remove_path("/k")
    assert index.raw() == snapshot


def test_every_mutation_keeps_boom_invariants_under_random_operations() -> None:
    rnd = __import__("random").Random(7)
    index = CacheIndex()
    for step in range(400):
        path = f"/p{rnd.randrange(5)}"
        op = rnd.random()
        if op < 0.6:
            add(index, path, os.urandom(1) + bytes([rnd.randrange(4)]), 1000 + step)
        elif op < 0.8 and path in index:
            index.trim(path, rnd.randrange(1, 3))
        elif path in index:
            index.remove_path(path)
        CacheIndex.validate(json.loads(index.to_json()), source="idx")


# ------------------------------------------------------------------ total validation

ID = "a" * 40


def _hostile(mutate) -> str:
    data = valid()
    mutate(data)
    return json.dumps(data)


HOSTILE = {
    "id listed twice": _hostile(lambda d: d["index"].__setitem__("/vmlinuz-1", [ID, ID, ID])),
    "NaN image_ts": _hostile(lambda d: d["images"][ID].__setitem__("image_ts", float("nan"))),
    "Infinity image_ts": _hostile(lambda d: d["images"][ID].__setitem__("image_ts", float("inf"))),
    "1e400 image_ts": json.dumps(valid()).replace("1700000000", "1e400"),
    "NaN in an unknown key": _hostile(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("x", float("nan"))),
    "1e400 in an unknown key": json.dumps(valid())[:-1] + ', "future": 1e400}',
    "huge image_ts": _hostile(lambda d: d["images"][ID].__setitem__("image_ts", 10 ** 30)),
    "image_ts past year 9999": _hostile(lambda d: d["images"][ID].__setitem__("image_ts", 253402300800)),
    "huge path_mode": _hostile(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("path_mode", 2 ** 70)),
    "path_mode above st_mode": _hostile(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("path_mode", 0o1106777)),
    "negative path_mode": _hostile(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("path_mode", -1)),
    "uid (uid_t)-1": _hostile(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("path_uid", 2 ** 32 - 1)),
    "huge gid": _hostile(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("path_gid", 10 ** 20)),
    "bootwatch key a list in images": _hostile(lambda d: d["images"][ID].__setitem__("bootwatch", [1])),
    "bootwatch key a string in paths": _hostile(lambda d: d["paths"]["/vmlinuz-1"].__setitem__("bootwatch", "x")),
    "nested 50,000 deep": json.dumps(valid())[:-1] + ', "future": ' + "[" * 50_000 + "]" * 50_000 + "}",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_index_is_refused_as_corrupt_naming_the_file(case: str) -> None:
    with pytest.raises(IndexCorruptError) as info:
        CacheIndex.from_json(HOSTILE[case], source="/cache/cacheindex.json")
    message = str(info.value)
    assert message.startswith("/cache/cacheindex.json: ") and "\n" not in message, message
    # The bulk check and the one-by-one check agree (on what the parser itself let through).
    try:
        data = json.loads(HOSTILE[case])
    except RecursionError:
        return
    if "unknown key" in case:
        return
    assert not _plainly_valid(data)
    with pytest.raises(IndexCorruptError):
        CacheIndex.validate(data, source="idx")


def test_a_repeated_id_names_the_path_and_the_id() -> None:
    with pytest.raises(IndexCorruptError, match=r"'/vmlinuz-1'.* a{40} more than once"):
        CacheIndex.from_json(HOSTILE["id listed twice"], source="idx")


def test_trim_never_drops_the_last_image_of_a_path_whatever_its_list_repeats() -> None:
    # An index built in memory, past validation, as a caller could: trim must still keep one image.
    data = valid()
    data["index"]["/vmlinuz-1"] = [ID, ID, ID]
    index = CacheIndex(data)
    assert index.trim("/vmlinuz-1", 2) == []
    assert index.image_ids("/vmlinuz-1") == [ID]
    assert index.trim("/vmlinuz-1", 0) == [], "keep below 1 still keeps the newest image"
    CacheIndex.validate(index.raw(), source="idx")


def test_values_inside_the_extra_data_are_hints_the_accessors_check() -> None:
    data = valid()
    data["images"][ID]["bootwatch"] = {"sha256": 7, "size": -3,
                                      "verified": {"time": "yesterday", "ok": False, "message": ["x"],
                                                   "checks": [{"kind": "kernel", "deep": [[[]]]}, "junk"]}}
    index = CacheIndex.from_json(json.dumps(data), source="idx")
    assert index.recorded_sha256(ID) is None and index.recorded_size(ID) is None
    assert index.verification(ID) == {"time": None, "ok": False, "unchecked": False, "message": "",
                                      "checks": [{"kind": "kernel"}]}
    data["images"][ID]["bootwatch"]["verified"] = {"time": 10 ** 30, "ok": "yes"}
    assert CacheIndex.from_json(json.dumps(data), source="idx").verification(ID) is None, \
        "a record without a boolean 'ok' is no verification"


def test_an_index_as_deep_as_the_parser_goes_can_be_copied() -> None:
    depth = 900
    data = valid()
    data["future"] = json.loads("[" * depth + "]" * depth)
    index = CacheIndex.from_json(json.dumps(data), source="idx")
    assert index.copy().raw() == index.raw()
