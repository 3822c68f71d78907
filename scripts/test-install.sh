#!/usr/bin/env bash
# Tests scripts/install.sh against a temporary DESTDIR: installs twice, checks
# files and modes, checks that an edited configuration survives a reinstall,
# then --uninstall and --uninstall --purge.
# Usage: scripts/test-install.sh [path/to/fieldgate]
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'test-install: FAIL: %s\n' "$*" >&2; exit 1; }
mode() { stat -c %a "$1"; }
expect_mode() { [ -e "$1" ] || fail "missing $1"; [ "$(mode "$1")" = "$2" ] || fail "$1 has mode $(mode "$1"), want $2"; }
expect_gone() { [ ! -e "$1" ] || fail "$1 should be gone"; }

bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --locked --quiet
  bin=target/debug/fieldgate
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
export DESTDIR=$root/dest
run() { scripts/install.sh "$@" >"$root/out" 2>&1 || { cat "$root/out" >&2; fail "install.sh $*"; }; }

run --bin "$bin"
run --bin "$bin"   # idempotent
B=$DESTDIR/usr/local/bin/fieldgate U=$DESTDIR/etc/systemd/system/fieldgate.service
D=$DESTDIR/etc/dbus-1/system.d/fieldgate-bluez.conf C=$DESTDIR/etc/fieldgate/fieldgate.yaml
expect_mode "$B" 755
expect_mode "$U" 644
expect_mode "$D" 644
expect_mode "$C" 640
cmp -s "$bin" "$B" || fail "the installed binary differs from $bin"
grep -qx 'ExecStart=/usr/local/bin/fieldgate run --config /etc/fieldgate/fieldgate.yaml' "$U" ||
  fail "ExecStart does not point at the installed binary"
grep -q '^  state_dir: /var/lib/fieldgate' "$C" || fail "state_dir is not /var/lib/fieldgate"
# No broker yet: `run` (and `check`) refuse it, so nothing is read or queued
# before the operator has edited it.
set +e; out=$("$B" check --config "$C" 2>&1); code=$?; set -e
[ "$code" = 2 ] || fail "check of the installed configuration exited $code, want 2: $out"
grep -q 'mqtt.url: missing' <<<"$out" || fail "the refusal does not name mqtt.url: $out"
FIELDGATE__MQTT__URL=mqtt://127.0.0.1:1883 "$B" check --config "$C" >/dev/null ||
  fail "the installed configuration does not check once the broker is set"
[ -z "$(find "$DESTDIR" -name '.*.new')" ] || fail "temporary files left behind"

echo "# edited by the operator" >>"$C"
run --bin "$bin"
grep -q '^# edited by the operator' "$C" || fail "reinstall overwrote the edited configuration"
grep -q 'kept the existing' "$root/out" || fail "reinstall did not say it kept the configuration"

mkdir -p "$DESTDIR/var/lib/fieldgate" && : >"$DESTDIR/var/lib/fieldgate/fieldgate.db"
run --uninstall
run --uninstall   # idempotent
expect_gone "$B"; expect_gone "$U"; expect_gone "$D"
grep -q '^# edited by the operator' "$C" || fail "--uninstall removed the configuration"
[ -e "$DESTDIR/var/lib/fieldgate/fieldgate.db" ] || fail "--uninstall removed the data"

run --uninstall --purge
expect_gone "$DESTDIR/etc/fieldgate"; expect_gone "$DESTDIR/var/lib/fieldgate"

scripts/install.sh --purge >/dev/null 2>&1 && fail "--purge without --uninstall was accepted"
scripts/install.sh --bin "$root/nope" >/dev/null 2>&1 && fail "a missing binary was accepted"
echo "test-install: ok (install x2, kept edited config, uninstall x2, purge)"
