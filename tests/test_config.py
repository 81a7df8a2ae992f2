"""bootwatch.config: defaults, files and drop-ins, strict validation with file:line messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bootwatch.config import (
    EMBEDDED_DEFAULTS,
    EMBEDDED_DEFAULTS_TOML,
    Config,
    format_duration,
    load_config,
    parse_duration,
)
from bootwatch.entries.model import EntrySource
from bootwatch.errors import EXIT_CONFIG, ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "bootwatch" / "bootwatch.toml"
NO_ENV: dict[str, str] = {}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def defaults() -> Config:
    """The embedded defaults: a config path that does not exist and is not explicit."""
    return load_config(environ=NO_ENV)


def error_of(path: Path, text: str) -> ConfigError:
    write(path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV)
    assert info.value.exit_code == EXIT_CONFIG == 78
    assert "\n" not in str(info.value)
    return info.value


# --- defaults ---------------------------------------------------------------------------------

def test_embedded_defaults() -> None:
    if Path("/etc/bootwatch/bootwatch.toml").exists():
        pytest.skip("this host has /etc/bootwatch/bootwatch.toml; embedded defaults not in use")
    config = defaults()
    assert config.sources == ()
    assert config.paths.boot == Path("/boot")
    assert config.paths.entries == Path("/boot/loader/entries")
    assert config.paths.cache == Path("/var/lib/bootwatch/cache")
    assert config.paths.runtime == Path("/run/bootwatch")
    assert config.cache.track == "referenced"
    assert config.cache.patterns == ("vmlinuz-*", "vmlinux-*", "initramfs-*", "initrd*", "*.efi")
    assert config.cache.keep == 2
    assert config.cache.auto_restore is True
    assert config.watch.settle == 0.25
    assert config.watch.rescan_interval == 900
    assert config.log.level == "info"
    assert (config.jobs.clean_interval, config.jobs.gc_interval,
            config.jobs.verify_interval) == (3600, 60, 86400)
    assert config.metrics.textfile is None


def _embedded(tmp_path: Path) -> Config:
    # An empty explicit file: exactly the embedded defaults, whatever this host's /etc holds.
    empty = write(tmp_path / "empty" / "bootwatch.toml", "")
    return load_config(empty, environ=NO_ENV)


def test_shipped_config_equals_embedded_defaults(tmp_path: Path) -> None:
    shipped = load_config(SHIPPED, environ=NO_ENV)
    embedded = _embedded(tmp_path)
    assert shipped.sources == (SHIPPED,)
    assert dataclass_values(shipped) == dataclass_values(embedded)


def test_shipped_config_commented_keys_are_the_defaults(tmp_path: Path) -> None:
    """entries, runtime and textfile are commented out in the shipped file (setting them would
    stop entries following boot and runtime following $RUNTIME_DIRECTORY); the values the
    comments show must still be the defaults."""
    text = SHIPPED.read_text()
    commented = re.findall(r"^#(\w+) = (.*)$", text, flags=re.M)
    assert {name for name, _ in commented} == {"entries", "runtime", "textfile", "esp", "memory"}
    uncommented = write(tmp_path / "u.toml", re.sub(r"^#(\w+ = )", r"\1", text, flags=re.M))
    config = load_config(uncommented, environ=NO_ENV)
    embedded = _embedded(tmp_path)
    assert config.paths.entries == embedded.paths.entries
    assert config.paths.runtime == embedded.paths.runtime
    assert config.metrics.textfile == Path("/var/lib/prometheus/node-exporter/bootwatch.prom")
    assert config.entries.esp == Path("/efi")
    assert config.prove.memory == 1024


def test_every_key_is_documented_in_the_shipped_file() -> None:
    text = SHIPPED.read_text()
    for section, keys in EMBEDDED_DEFAULTS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert re.search(rf"^{key} = ", text, flags=re.M), key


def test_embedded_defaults_text_parses_to_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", EMBEDDED_DEFAULTS_TOML)
    assert dataclass_values(load_config(path, environ=NO_ENV)) == \
        dataclass_values(_embedded(tmp_path))


def dataclass_values(config: Config) -> Config:
    # Everything but where it came from.
    import dataclasses
    return dataclasses.replace(config, sources=())


# --- loading, drop-ins, environment -----------------------------------------------------------

def test_dropins_merge_key_by_key_in_lexical_order(tmp_path: Path) -> None:
    main = write(tmp_path / "bootwatch.toml", """
[watch]
settle = "1s"
rescan_interval = "5m"
[cache]
patterns = ["a*", "b*"]
""")
    write(tmp_path / "bootwatch.toml.d" / "20-later.toml", '[watch]\nsettle = "3s"\n')
    write(tmp_path / "bootwatch.toml.d" / "10-first.toml",
          '[watch]\nsettle = "2s"\n[cache]\npatterns = ["c*"]\nkeep = 5\n')
    write(tmp_path / "bootwatch.toml.d" / "30-ignored.conf", "this is not read")
    config = load_config(main, environ=NO_ENV)
    assert config.watch.settle == 3.0           # 20-later wins over 10-first over main
    assert config.watch.rescan_interval == 300  # only main set it
    assert config.cache.patterns == ("c*",)     # a list is replaced, not appended to
    assert config.cache.keep == 5
    assert config.sources == (main, tmp_path / "bootwatch.toml.d" / "10-first.toml",
                              tmp_path / "bootwatch.toml.d" / "20-later.toml")


def test_dropins_apply_without_main_file(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    main = tmp_path / "bootwatch.toml"
    write(tmp_path / "bootwatch.toml.d" / "50.toml", '[log]\nlevel = "debug"\n')
    # A main file named explicitly must exist...
    with pytest.raises(ConfigError, match=r"bootwatch\.toml: no such file"):
        load_config(main, environ=NO_ENV)
    # ...the default one (/etc/bootwatch/bootwatch.toml, moved into tmp_path here) need not.
    import bootwatch.config as config_module
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", main)
    config = load_config(environ=NO_ENV)
    assert config.log.level == "debug"
    assert config.sources == (tmp_path / "bootwatch.toml.d" / "50.toml",)


def test_bootwatch_config_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "env.toml", '[cache]\nkeep = 7\n')
    assert load_config(environ={"BOOTWATCH_CONFIG": str(path)}).cache.keep == 7
    # An explicit path argument wins over the environment.
    other = write(tmp_path / "arg.toml", '[cache]\nkeep = 3\n')
    assert load_config(other, environ={"BOOTWATCH_CONFIG": str(path)}).cache.keep == 3
    with pytest.raises(ConfigError, match="no such file"):
        load_config(environ={"BOOTWATCH_CONFIG": str(tmp_path / "missing.toml")})


def test_runtime_directory_from_environment(tmp_path: Path) -> None:
    empty = write(tmp_path / "e.toml", "")
    env = {"RUNTIME_DIRECTORY": "/run/bw-test:/run/other"}
    assert load_config(empty, environ=env).paths.runtime == Path("/run/bw-test")
    # A file that sets it wins.
    set_ = write(tmp_path / "s.toml", '[paths]\nruntime = "/run/mine"\n')
    assert load_config(set_, environ=env).paths.runtime == Path("/run/mine")
    with pytest.raises(ConfigError, match=r"RUNTIME_DIRECTORY: expected an absolute path"):
        load_config(empty, environ={"RUNTIME_DIRECTORY": "relative"})


def test_entries_follow_boot(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", '[paths]\nboot = "/srv/boot/"\n')
    config = load_config(path, environ=NO_ENV)
    assert config.paths.boot == Path("/srv/boot")
    assert config.paths.entries == Path("/srv/boot/loader/entries")


def test_with_overrides(tmp_path: Path) -> None:
    config = _embedded(tmp_path)
    moved = config.with_overrides(boot=tmp_path / "boot", cache=tmp_path / "cache")
    assert moved.paths.boot == tmp_path / "boot"
    assert moved.paths.entries == tmp_path / "boot" / "loader" / "entries"
    assert moved.paths.cache == tmp_path / "cache"
    assert config.paths.boot == Path("/boot")  # frozen: the original is unchanged
    assert config.with_overrides() == config

    explicit = write(tmp_path / "x.toml", '[paths]\nentries = "/etc/entries"\n')
    moved = load_config(explicit, environ=NO_ENV).with_overrides(boot=tmp_path / "boot")
    assert moved.paths.entries == Path("/etc/entries")

    # A relative override (from the command line) is taken relative to the working directory.
    assert config.with_overrides(cache=Path("rel")).paths.cache.is_absolute()


def test_to_toml_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", """
[paths]
boot = "/srv/boot"
cache = "/srv/cache"
[cache]
track = "all"
patterns = ["vmlinuz-*", "weird \\"name\\"*"]
keep = 4
auto_restore = false
[watch]
settle = "1.5s"
rescan_interval = "1h30m"
[log]
level = "NOTICE"
[jobs]
clean_interval = "90s"
gc_interval = "2m"
verify_interval = "7d"
[metrics]
textfile = "/var/lib/prometheus/node-exporter/bootwatch.prom"
""")
    config = load_config(path, environ={"RUNTIME_DIRECTORY": "/run/rt"})
    text = config.to_toml()
    assert 'rescan_interval = "1h30m"' in text
    assert 'settle = "1s500ms"' in text
    assert 'clean_interval = "1m30s"' in text
    assert 'level = "notice"' in text
    again = load_config(write(tmp_path / "again.toml", text), environ=NO_ENV)
    assert dataclass_values(again).paths.runtime == Path("/run/rt")
    # entries becomes explicit when written out, so compare the values, not the flag.
    assert again.paths.entries == config.paths.entries
    assert again.cache == config.cache and again.watch == config.watch
    assert again.log == config.log and again.jobs == config.jobs
    assert again.metrics == config.metrics


def test_textfile_can_be_reset_by_a_dropin(tmp_path: Path) -> None:
    main = write(tmp_path / "m.toml",
                 '[metrics]\ntextfile = "/var/lib/prometheus/node-exporter/bootwatch.prom"\n')
    write(tmp_path / "m.toml.d" / "off.toml", '[metrics]\ntextfile = ""\n')
    assert load_config(main, environ=NO_ENV).metrics.textfile is None


# --- durations --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400),
    ("1h30m", 5400), ("1.5s", 1.5), ("2d12h", 216000), ("1m1ms", 60.001),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(parse_duration(text))) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0s", "0ms", "5", "1 h", "1hh", "-1s", "h", "1w", "1.s",
                                  "s1", "1h 30m", "1e3s", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# --- errors: file, line, [section] key, expected, found --------------------------------------

BAD = [
    # (file text, line, "[section] key", expected fragment, found fragment)
    ('[watch]\nsettle = "fast"\n', 2, "[watch] settle",
     'expected a duration like "250ms", "30s", "15m", "1h" or "1d"', 'found "fast"'),
    ('# c\n\n[watch]\nrescan_interval = "0s"\n', 4, "[watch] rescan_interval",
     "greater than zero", 'found "0s"'),
    ('[watch]\nsettle = 250\n', 2, "[watch] settle", "a duration string", "found 250"),
    ('[paths]\nboot = "boot"\n', 2, "[paths] boot", "an absolute path", 'found "boot"'),
    ('[paths]\ncache = 5\n', 2, "[paths] cache", "an absolute path", "found 5"),
    ('[cache]\ntrack = "some"\n', 2, "[cache] track", '"referenced" or "all"', 'found "some"'),
    ('[cache]\nkeep = 0\n', 2, "[cache] keep", "an integer of at least 1", "found 0"),
    ('[cache]\nkeep = "2"\n', 2, "[cache] keep", "an integer", 'found "2"'),
    ('[cache]\nkeep = true\n', 2, "[cache] keep", "an integer", "found true"),
    ('[cache]\nauto_restore = "yes"\n', 2, "[cache] auto_restore", "true or false",
     'found "yes"'),
    ('[cache]\npatterns = "vmlinuz-*"\n', 2, "[cache] patterns", "a list of glob strings",
     'found "vmlinuz-*"'),
    ('[cache]\npatterns = ["a", 1]\n', 2, "[cache] patterns", "a list of glob strings",
     'found ["a", 1'),
    ('[log]\nlevel = "loud"\n', 2, "[log] level", '"debug", "info", "notice"', 'found "loud"'),
    ('[jobs]\ngc_interval = "soon"\n', 2, "[jobs] gc_interval", "a duration", 'found "soon"'),
    ('[metrics]\ntextfile = "bootwatch.prom"\n', 2, "[metrics] textfile", "an absolute path",
     'found "bootwatch.prom"'),
    ('[metrics]\ntextfile = "/tmp/bootwatch.txt"\n', 2, "[metrics] textfile", '".prom"',
     'found "/tmp/bootwatch.txt"'),
    ('[watch]\nsettle = "1s"\nsetle = "2s"\n', 3, "[watch] setle", "one of settle, rescan",
     "unknown key"),
    ('[paths]\n\n[wach]\nsettle = "1s"\n', 3, "[wach]", "one of [paths], [entries], [cache]",
     "unknown section"),
    ('settle = "1s"\n', 1, "settle", "only the sections", "key outside any section"),
    ('[log]\nlevel = "info"\n[watch]\nsettle = fast\n', 4, "[watch] settle", "valid TOML",
     "settle = fast"),
    ('[cache]\nkeep = 2\nkeep = 3\n', 3, "[cache] keep", "valid TOML", "keep = 3"),
    ('[watch]\nsettle = "1s\n', 2, "[watch] settle", "valid TOML", 'settle = "1s'),
    # Dotted keys and inline tables at the top level are found too.
    ('watch.settle = "x"\n', 1, "[watch] settle", "a duration", 'found "x"'),
    ('\nwatch = { settle = "1s", rescan_interval = "never" }\n', 2,
     "[watch] rescan_interval", "a duration", 'found "never"'),
    ('log = 3\n', 1, "[log]", "a table", "found 3"),
]


@pytest.mark.parametrize("text,line,where,expected,found", BAD,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_config(tmp_path: Path, text: str, line: int, where: str, expected: str,
                    found: str) -> None:
    path = tmp_path / "bootwatch.toml"
    message = str(error_of(path, text))
    assert message.startswith(f"{path}:{line}: {where}: "), message
    assert expected in message, message
    assert found in message, message


def test_error_names_the_dropin_that_is_wrong(tmp_path: Path) -> None:
    main = write(tmp_path / "bootwatch.toml", '[watch]\nsettle = "1s"\n')
    bad = write(tmp_path / "bootwatch.toml.d" / "50-bad.toml",
                '# a comment\n[cache]\n\nkeep = -1\n')
    with pytest.raises(ConfigError) as info:
        load_config(main, environ=NO_ENV)
    assert str(info.value).startswith(f"{bad}:4: [cache] keep: expected an integer of at least 1")


def test_unknown_key_has_a_hint(tmp_path: Path) -> None:
    err = error_of(tmp_path / "h.toml", '[watch]\nsetle = "1s"\n')
    assert err.hint == "did you mean settle?"
    err = error_of(tmp_path / "h.toml", 'keep = 2\n')
    assert err.hint == "put it under [cache]"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[paths]\nboot = "/b\xf6ot"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV)
    assert str(info.value) == f"{path}:2: expected UTF-8 text, found byte 0xf6"


def test_unreadable_is_a_config_error(tmp_path: Path) -> None:
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    with pytest.raises(ConfigError, match=r"dir\.toml: cannot read"):
        load_config(directory, environ=NO_ENV)


def test_entry_sources_auto_or_an_explicit_list(tmp_path: Path) -> None:
    assert _embedded(tmp_path).entries.sources is None
    listed = load_config(write(tmp_path / "l.toml", '[entries]\nsources = ["grub", "bls", "grub"]\n'), environ=NO_ENV)
    assert listed.entries.sources == (EntrySource.GRUB, EntrySource.BLS)
    assert load_config(write(tmp_path / "r.toml", listed.to_toml()), environ=NO_ENV).entries == listed.entries
    for bad in ('"grub"', "[]", '["lilo"]', "1"):
        with pytest.raises(ConfigError, match=r"\[entries\] sources"):
            load_config(write(tmp_path / "bad.toml", f"[entries]\nsources = {bad}\n"), environ=NO_ENV)


def test_package_lock_lists_are_paths_by_kind_and_may_be_empty(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "c.toml", '[watch]\npackage_locks = ["/srv/root/var/lib/dpkg/lock/"]\n'
                               'package_lock_files = []\ntransaction_timeout = "90s"\n'), environ=NO_ENV)
    assert config.watch.package_locks == (Path("/srv/root/var/lib/dpkg/lock"),)
    assert config.watch.package_lock_files == ()
    assert config.watch.package_pid_files == (Path("/var/lib/dnf/rpmdb_lock.pid"), Path("/run/zypp.pid"))
    assert config.watch.transaction_timeout == 90.0
    assert [(str(lock.path), lock.kind.value) for lock in config.watch.locks()] == [
        ("/srv/root/var/lib/dpkg/lock", "record"), ("/var/lib/dnf/rpmdb_lock.pid", "pid-file"),
        ("/run/zypp.pid", "pid-file")]
    assert load_config(write(tmp_path / "r.toml", config.to_toml()), environ=NO_ENV).watch == config.watch


@pytest.mark.parametrize(("line", "expected"), [
    ('package_locks = ["var/lib/dpkg/lock"]', 'expected a list of absolute paths'),
    ('package_pid_files = "/run/zypp.pid"', 'expected a list of absolute paths'),
    ('package_lock_files = [1]', 'expected a list of absolute paths'),
    ('transaction_timeout = "0.5s"', 'expected a duration from 1s to 1d'),
    ('transaction_timeout = "2d"', 'expected a duration from 1s to 1d'),
])
def test_package_lock_settings_are_checked(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path / "bad.toml", f"[watch]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=NO_ENV)
    assert f"{path}:2: [watch] {line.split()[0]}: {expected}" in str(err.value)
