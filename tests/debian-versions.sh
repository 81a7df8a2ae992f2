#!/bin/bash
# The daemon's tests against Debian 12's own python3-watchdog (2.2.1), python3-apscheduler (3.9.1)
# and python3-sdnotify: the versions the Debian package depends on and pyproject.toml's lower
# bounds, where tests/run.sh's venv has pip's newest.
#   tests/debian-versions.sh [PYTEST ARGS...]        (tests/run.sh runs it after the suite)
# The packages are fetched with apt-get download and unpacked (dpkg-deb -x) into build/, never
# installed on the host; a venv of their own imports them through a .pth file, bootwatch and the
# test tools from pip. Needs apt's package lists (apt-get update) and dpkg.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BOOTWATCH_DEBIAN_VENV:-build/venv-debian}  # under build/: no source copy takes it along
DEPS=build/debian-deps
# bootwatch's three, then what they import in Debian's builds (their Depends that are Python).
PACKAGES=(python3-watchdog python3-apscheduler python3-sdnotify
          python3-yaml python3-tzlocal python3-pytz-deprecation-shim python3-tz python3-six python3-pkg-resources)

rm -rf "$DEPS"
mkdir -p "$DEPS/root"
(cd "$DEPS" && apt-get download -qq "${PACKAGES[@]}" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
for package in "${PACKAGES[@]}"; do
    deb=("$DEPS/${package}"_*.deb)
    [ -f "${deb[0]}" ] || { echo "tests/debian-versions.sh: apt-get download $package failed (apt-get update?)" >&2; exit 1; }
    dpkg-deb -x "${deb[0]}" "$DEPS/root"
done

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# bootwatch without its dependencies, and the test extras (read from pyproject.toml, their one list).
"$VENV/bin/python" -m pip install -q --no-deps -e .
mapfile -t TEST_EXTRAS < <("$VENV/bin/python" -c \
    'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"], sep="\n")')
"$VENV/bin/python" -m pip install -q "${TEST_EXTRAS[@]}"
# pip must not have brought its own copies (a test extra depending on one of them, say).
"$VENV/bin/python" -m pip uninstall -q -y watchdog APScheduler sdnotify tzlocal pytz six 2>/dev/null || true
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$PWD/$DEPS/root/usr/lib/python3/dist-packages" > "$site/debian-deps.pth"

"$VENV/bin/python" - "$PWD/$DEPS/root" <<'PY'
import sys
import apscheduler, sdnotify, watchdog.version
for module in (watchdog.version, apscheduler, sdnotify):
    assert module.__file__.startswith(sys.argv[1]), f"{module.__name__} is not Debian's: {module.__file__}"
print(f"tests/debian-versions.sh: Debian's watchdog {watchdog.version.VERSION_STRING}, "
      f"APScheduler {apscheduler.__version__}, sdnotify from {sys.argv[1]}")
PY
# Debian 12's pytz 2022.7.1 has an invalid escape sequence in a regular expression, which Python 3.11
# warns about when it compiles the module.
exec "$VENV/bin/python" -m pytest tests/daemon -ra -W "ignore:invalid escape sequence:DeprecationWarning" "$@"
