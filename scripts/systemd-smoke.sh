#!/usr/bin/env bash
# Boots a Debian bookworm container under systemd-nspawn, installs the amd64
# .deb there and checks the unit under a real systemd: not started by the
# install, its unedited configuration refused and not restarted, READY (Type=notify)
# with all the hardening on, readings delivered to a local mosquitto, the
# watchdog kept fed, a hung (SIGSTOPped) gateway restarted by the watchdog,
# plain journal lines, a clean stop, and purge. Needs root. The root file
# system is cached under ~/.cache; each boot gets a throwaway overlay on it.
# Usage: scripts/systemd-smoke.sh [fieldgate_*.deb]
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'systemd-smoke: FAIL: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root"
deb=${1:-$(find target/debian -name 'fieldgate_*_amd64.deb' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2)}
[ -f "$deb" ] || fail "no .deb: run scripts/check-deb.sh first, or pass one"
for p in debootstrap systemd-container; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done

ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/fieldgate/smoke-bookworm
if [ ! -f "$ROOT/.complete" ]; then
  rm -rf "$ROOT"; mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,mosquitto,mosquitto-clients \
    bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
  cat >"$ROOT/etc/systemd/system/smoke.service" <<'EOF'
[Unit]
ConditionPathExists=/smoke/inside.sh
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/smoke/inside.sh
ExecStopPost=/bin/systemctl poweroff --no-block
[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/smoke.service "$ROOT/etc/systemd/system/multi-user.target.wants/smoke.service"
  touch "$ROOT/.complete"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$deb" "$work/fieldgate.deb"
cat >"$work/inside.sh" <<'EOF'
#!/bin/bash
# Runs inside the container; the last line of /smoke/result is the verdict.
set -uo pipefail
exec >/smoke/inside.log 2>&1
set -x
verdict() { echo "$*" >>/smoke/result; systemctl --no-block poweroff; exit 0; }
show() { systemctl show fieldgate -p "$1" --value; }
dpkg -i /smoke/fieldgate.deb || verdict "dpkg -i"
id -nG fieldgate | grep -qw dialout || verdict "user not in dialout"
# A first install is enabled, not started; its configuration has no broker,
# which `run` refuses (exit 2), and systemd does not restart that.
[ "$(show UnitFileState)" = enabled ] || verdict "not enabled after install"
[ "$(show ActiveState)" = inactive ] || verdict "a first install started the service"
systemctl start fieldgate && verdict "the unedited configuration started"
sleep 7
[ "$(show NRestarts)" = 0 ] || verdict "the unedited configuration was restarted"
journalctl -u fieldgate -o cat | grep -q 'mqtt.url: missing' || verdict "no mqtt.url message in the journal"
printf 'listener 18830 127.0.0.1\nallow_anonymous true\n' >/etc/mosquitto/conf.d/smoke.conf
systemctl restart mosquitto
cat >/etc/fieldgate/fieldgate.yaml <<'Y'
gateway: { id: smoke, state_dir: /var/lib/fieldgate }
mqtt: { url: "mqtt://127.0.0.1:18830" }
devices:
  - { name: d, kind: simulated, poll: 250ms, points: [ { name: v, signal: ramp } ] }
Y
# A short watchdog, so that a missed ping shows within seconds.
mkdir -p /etc/systemd/system/fieldgate.service.d
printf '[Service]\nWatchdogSec=4s\n' >/etc/systemd/system/fieldgate.service.d/smoke.conf
systemctl daemon-reload
systemctl restart fieldgate || verdict "start (no READY=1?)"
[ "$(show ActiveState)" = active ] || verdict "not active after start"
n=$(timeout 20 mosquitto_sub -h 127.0.0.1 -p 18830 -t 'fieldgate/smoke/telemetry/#' -C 5 | grep -c '"seq"')
[ "$n" = 5 ] || verdict "got $n of 5 readings"
sleep 12
[ "$(show NRestarts)" = 0 ] && [ "$(show ActiveState)" = active ] || verdict "watchdog not fed"
journalctl -u fieldgate -o cat | grep -q '^ INFO fieldgate::gateway: fieldgate .* running' ||
  verdict "journal lines not plain: $(journalctl -u fieldgate -o cat | head -3)"
kill -STOP "$(show MainPID)"
for _ in $(seq 30); do [ "$(show NRestarts)" = 1 ] && [ "$(show ActiveState)" = active ] && break; sleep 1; done
journalctl -u fieldgate | grep -q "Failed with result 'watchdog'" || verdict "hung gateway not caught"
[ "$(show ActiveState)" = active ] || verdict "not restarted after the watchdog"
systemctl stop fieldgate
[ "$(show Result)" = success ] || verdict "stop: $(show Result)"
runuser -u fieldgate -- fieldgate queue --config /etc/fieldgate/fieldgate.yaml stats || verdict "queue stats"
systemd-analyze security fieldgate | tail -1
dpkg -P fieldgate || verdict "purge"
[ ! -e /var/lib/fieldgate ] || verdict "purge kept the data"
verdict ok
EOF
chmod +x "$work/inside.sh"

t0=$SECONDS
timeout 300 systemd-nspawn -q -D "$ROOT" -b --volatile=overlay --private-network --register=no \
  --keep-unit -M fieldgate-smoke --bind="$work:/smoke" >"$work/console.log" 2>&1 || true
result=$(tail -1 "$work/result" 2>/dev/null || echo "no result")
if [ "$result" != ok ]; then
  cat "$work/inside.log" "$work/console.log" >&2 2>/dev/null || true
  fail "$result"
fi
grep -h 'exposure level' "$work/inside.log" || true
echo "systemd-smoke: ok: READY, readings, watchdog fed and firing, journal, stop, purge ($((SECONDS - t0))s boot to poweroff)"
