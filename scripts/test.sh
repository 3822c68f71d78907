#!/usr/bin/env bash
# Runs the whole test suite. Installs the system packages the tests need
# (a private mosquitto is started by each test on a free port; socat makes
# the ptys of the serial tests) when they are missing; needs root or sudo
# for that step only. amqtt, the second broker of tests/faults.rs, goes in
# a virtualenv of its own under target/ (from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients socat dbus python3-dbusmock python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

amqtt_version=0.12.1
venv=target/amqtt-venv
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('amqtt') != '$amqtt_version')" 2>/dev/null; then
    echo "installing amqtt $amqtt_version in $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "amqtt==$amqtt_version"
fi

cargo test --all-targets --locked "$@"
