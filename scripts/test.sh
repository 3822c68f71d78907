#!/usr/bin/env bash
# Runs the whole test suite. Installs the system packages the tests need
# (a private mosquitto is started by each test on a free port; socat makes
# the ptys of the serial tests; node runs aedes, a second broker) when they
# are missing; needs root or sudo for that step only. aedes itself comes
# from npm, into target/aedes; amqtt, the third broker (tests/faults.rs),
# from PyPI into a virtualenv of its own under target/, and so is a Home
# Assistant core (tests/homeassistant.rs), which needs pyenv's Python 3.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients socat dbus python3-dbusmock python3-venv nodejs npm)
missing=()
for p in "${packages[@]}"; do
    # A nodejs from elsewhere (NodeSource) brings its own npm.
    [ "$p" = npm ] && command -v npm >/dev/null && continue
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# aedes 1.2.0 for tests/packet_ids.rs (tests/aedes/server.js loads it from here).
aedes=target/aedes
aedes_version=1.2.0
installed=$(node -p "require('./$aedes/node_modules/aedes/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$aedes_version" ]; then
    echo "installing aedes@$aedes_version into $aedes"
    mkdir -p "$aedes"
    [ -f "$aedes/package.json" ] || echo '{ "private": true }' >"$aedes/package.json"
    npm install --prefix "$aedes" --no-audit --no-fund --save-exact "aedes@$aedes_version" >/dev/null
fi

# A Python package pinned to a version, in a virtualenv of its own.
venv_with() { # venv package version
    local venv=$1 package=$2 version=$3
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$package') != '$version')" 2>/dev/null; then
        echo "installing $package $version in $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "$package==$version"
    fi
}
venv_with target/amqtt-venv amqtt 0.12.1
# pysparkplug, a Sparkplug host library that is not ours, decodes what
# tests/sparkplug.rs captures.
venv_with target/sparkplug-venv pysparkplug 0.6.1

# Home Assistant core 2025.4.4 for tests/homeassistant.rs, in target/ha-venv.
# 2025.4.4 is the newest release that Python 3.13.0 runs, and pip alone
# would pull later releases of its unpinned dependencies that break it:
# tests/homeassistant/requirements-lock.txt pins the whole set. Byte-compiled
# once, or every start pays for it (PYTHONDONTWRITEBYTECODE is often set).
# A marker written last makes an interrupted install start over.
ha_venv=target/ha-venv
ha_python=/root/.pyenv/versions/3.13.0/bin/python3
ha_lock=tests/homeassistant/requirements-lock.txt
ha_stamp="homeassistant 2025.4.4 $(sha256sum "$ha_lock" | cut -d' ' -f1)"
if [ "$(cat "$ha_venv/.installed" 2>/dev/null)" != "$ha_stamp" ]; then
    if [ ! -x "$ha_python" ]; then
        echo "$ha_python is missing: Home Assistant 2025.4.4 needs pyenv's Python 3.13.0 (pyenv install 3.13.0)" >&2
        exit 1
    fi
    echo "installing Home Assistant 2025.4.4 in $ha_venv"
    rm -rf "$ha_venv"
    "$ha_python" -m venv "$ha_venv"
    "$ha_venv/bin/pip" install -q --disable-pip-version-check -r "$ha_lock"
    "$ha_venv/bin/python" -m compileall -q -j 0 "$ha_venv/lib" >/dev/null
    echo "$ha_stamp" >"$ha_venv/.installed"
fi

cargo test --all-targets --locked "$@"
