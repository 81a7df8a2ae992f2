"""bootwatch.config's [prove] section: the daemon's proof job and the bounds of every proof,
'bootwatch prove''s defaults included."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootwatch.config import Config, load_config
from bootwatch.errors import ConfigError
from bootwatch.prove.vm import DEFAULT_TIMEOUT, AccelChoice, VmLimits

NO_ENV: dict[str, str] = {}


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "bootwatch.toml"
    path.write_text(text)
    return load_config(path, environ=NO_ENV)


def test_defaults_are_off_and_the_proofs_own(tmp_path: Path) -> None:
    prove = load(tmp_path, "").prove
    assert prove.on_new_kernel is False
    assert prove.timeout == DEFAULT_TIMEOUT
    assert prove.memory is None and prove.accel is AccelChoice.AUTO
    assert prove.limits() == VmLimits()


def test_values_are_read_and_written_back(tmp_path: Path) -> None:
    config = load(tmp_path, '[prove]\non_new_kernel = true\ntimeout = "45s"\nmemory = 768\naccel = "tcg"\n')
    assert config.prove.on_new_kernel is True
    assert config.prove.limits() == VmLimits(timeout=45.0, memory_mib=768)
    assert config.prove.accel is AccelChoice.TCG
    text = config.to_toml()
    assert '[prove]\non_new_kernel = true\ntimeout = "45s"\nmemory = 768\naccel = "tcg"\n' in text
    assert load(tmp_path, text).prove == config.prove


def test_memory_can_be_reset_by_a_dropin(tmp_path: Path) -> None:
    (tmp_path / "bootwatch.toml.d").mkdir()
    (tmp_path / "bootwatch.toml.d" / "10.toml").write_text('[prove]\nmemory = ""\n')
    assert load(tmp_path, "[prove]\nmemory = 2048\n").prove.memory is None


@pytest.mark.parametrize(("line", "expected"), [
    ('on_new_kernel = "yes"', "expected true or false"),
    ('timeout = "500ms"', "expected a duration from 1s to 1d"),
    ('timeout = 30', "expected a duration"),
    ("memory = 32", 'expected a number of MiB from 64 to 65536, or "" for the default'),
    ("memory = 1.5", 'expected a number of MiB from 64 to 65536'),
    ('accel = "hvf"', 'expected one of "auto", "kvm", "tcg"'),
])
def test_bad_values_name_the_line(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f"[prove]\n{line}\n")
    assert f"bootwatch.toml:2: [prove] {line.split()[0]}: {expected}" in str(err.value)
