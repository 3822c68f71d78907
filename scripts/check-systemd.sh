#!/usr/bin/env bash
# Checks systemd/: `systemd-analyze verify` must print nothing (it exits 0 on
# unknown keys, so any message counts as a failure), `systemd-analyze
# security` must rate the unit at most MAX_EXPOSURE, and the D-Bus policy must
# be well-formed. Usage: scripts/check-systemd.sh [path/to/fieldgate]
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=3.0
UNIT=systemd/fieldgate.service
fail() { printf 'check-systemd: FAIL: %s\n' "$*" >&2; exit 1; }

bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --locked --quiet
  bin=target/debug/fieldgate
fi
[ -x "$bin" ] || fail "no executable at $bin"

# verify insists that ExecStart= exists, and --root finds no sysinit.target
# in an empty root on systemd 252: check a copy that points at this build.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/bin/fieldgate |ExecStart=$(realpath "$bin") |" "$UNIT" >"$tmp/fieldgate.service"
grep -q "^ExecStart=$(realpath "$bin") " "$tmp/fieldgate.service" || fail "ExecStart= is not /usr/bin/fieldgate"
out=$(systemd-analyze verify "$tmp/fieldgate.service" 2>&1) || fail "verify: $out"
[ -z "$out" ] || fail "verify: $out"
echo "systemd-analyze verify: ok"

out=$(systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1) || fail "security: $out"
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
[ -n "$exposure" ] || fail "no exposure level in: $out"
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
  fail "exposure $exposure is over $MAX_EXPOSURE:"$'\n'"$(grep '✗' <<<"$out")"
echo "systemd-analyze security: exposure $exposure (at most $MAX_EXPOSURE)"

python3 - systemd/fieldgate-bluez.conf <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
allow = root.findall("./policy[@user='fieldgate']/allow[@send_destination='org.bluez']")
sys.exit(0 if root.tag == "busconfig" and allow else "D-Bus policy: no allow for fieldgate -> org.bluez")
PY
echo "D-Bus policy: ok"
