#!/usr/bin/env bash
# Installs fieldgate as a systemd service (run as root on the Pi):
#
#   scripts/install.sh [--bin PATH]        install or upgrade; enable, restart if running
#   scripts/install.sh --uninstall         remove binary and unit; keep config and data
#   scripts/install.sh --uninstall --purge ... and remove /etc/fieldgate and /var/lib/fieldgate
#
# --bin defaults to target/release/fieldgate. An existing
# /etc/fieldgate/fieldgate.yaml is never overwritten; a new one has no
# broker, which `fieldgate run` refuses, so a first install is not started
# (as with the .deb): nothing is read or queued before it is edited. With DESTDIR set
# (packaging, tests) files go under it and no user is created and systemctl
# is not called. PREFIX (default /usr/local) is where the binary goes.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BIN_DIR=$DESTDIR$PREFIX/bin
UNIT_DIR=$DESTDIR/etc/systemd/system
DBUS_DIR=$DESTDIR/etc/dbus-1/system.d
CONF_DIR=$DESTDIR/etc/fieldgate
STATE_DIR=$DESTDIR/var/lib/fieldgate
USER_NAME=fieldgate

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
live() { [ -z "$DESTDIR" ]; }
have_systemd() { live && [ -d /run/systemd/system ]; }

bin=$REPO/target/release/fieldgate
action=install
purge=0
while [ $# -gt 0 ]; do
  case $1 in
    --bin) [ $# -ge 2 ] || die "--bin needs a path"; bin=$2; shift;;
    --uninstall) action=uninstall;;
    --purge) purge=1;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0;;
    *) die "unknown argument: $1";;
  esac
  shift
done
[ "$purge" = 0 ] || [ "$action" = uninstall ] || die "--purge goes with --uninstall"
if live && [ "$(id -u)" != 0 ]; then die "run as root (or set DESTDIR)"; fi

install_files() {
  [ -x "$bin" ] || die "no executable at $bin (cargo build --release, or --bin PATH)"
  install -d -m 0755 "$BIN_DIR" "$UNIT_DIR" "$DBUS_DIR" "$CONF_DIR"
  # Copy, then rename: a running gateway keeps its old binary intact.
  install -m 0755 "$bin" "$BIN_DIR/.fieldgate.new"
  mv -f "$BIN_DIR/.fieldgate.new" "$BIN_DIR/fieldgate"
  sed "s|^ExecStart=/usr/bin/fieldgate |ExecStart=$PREFIX/bin/fieldgate |" "$REPO/systemd/fieldgate.service" \
    >"$UNIT_DIR/.fieldgate.service.new"
  chmod 0644 "$UNIT_DIR/.fieldgate.service.new"
  mv -f "$UNIT_DIR/.fieldgate.service.new" "$UNIT_DIR/fieldgate.service"
  install -m 0644 "$REPO/systemd/fieldgate-bluez.conf" "$DBUS_DIR/fieldgate-bluez.conf"
  say "installed $BIN_DIR/fieldgate, $UNIT_DIR/fieldgate.service, $DBUS_DIR/fieldgate-bluez.conf"

  local conf=$CONF_DIR/fieldgate.yaml
  if [ -e "$conf" ]; then
    say "kept the existing $conf"
  else
    # 0640: the file may hold the broker password.
    sed "s|^\(  state_dir:\) *[^ ]*|\1 /var/lib/fieldgate|" "$REPO/config/installed/fieldgate.yaml" >"$conf.new"
    chmod 0640 "$conf.new"
    if live; then chown "root:$USER_NAME" "$conf.new"; fi
    mv "$conf.new" "$conf"
    say "wrote $conf: set the broker and your devices in it, then: systemctl restart fieldgate"
  fi
}

create_user() {
  if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin --comment "fieldgate gateway" "$USER_NAME"
    say "created the system user $USER_NAME"
  fi
  local g
  for g in dialout bluetooth; do
    getent group "$g" >/dev/null && usermod -a -G "$g" "$USER_NAME"
  done
  return 0
}

case $action in
  install)
    if live; then create_user; fi
    install_files
    if have_systemd; then
      systemctl reload dbus.service 2>/dev/null || true
      systemctl daemon-reload
      systemctl enable fieldgate.service
      # An upgrade restarts a running gateway; a stopped one stays stopped.
      systemctl try-restart fieldgate.service || say "fieldgate did not restart: systemctl status fieldgate"
      if systemctl is-active --quiet fieldgate.service; then
        say "fieldgate is running: systemctl status fieldgate; journalctl -u fieldgate -f"
      else
        say "fieldgate is enabled, not started: edit $CONF_DIR/fieldgate.yaml, then: systemctl restart fieldgate"
      fi
    elif live; then
      say "systemd is not running here: enable fieldgate.service yourself"
    fi
    ;;
  uninstall)
    if have_systemd; then
      systemctl disable --now fieldgate.service 2>/dev/null || true
    fi
    rm -f "$BIN_DIR/fieldgate" "$UNIT_DIR/fieldgate.service" "$DBUS_DIR/fieldgate-bluez.conf"
    if have_systemd; then systemctl daemon-reload; fi
    say "removed the binary, the unit and the D-Bus policy"
    if [ "$purge" = 1 ]; then
      rm -rf "$CONF_DIR" "$STATE_DIR"
      say "purged $CONF_DIR and $STATE_DIR (the $USER_NAME user stays)"
    else
      say "kept $CONF_DIR and $STATE_DIR (--purge removes them)"
    fi
    ;;
esac
