#!/usr/bin/env bash
# Builds the amd64 .deb with cargo-deb (installed when missing) and checks
# its files, modes, conffiles, dependencies and maintainer scripts.
#
#   scripts/check-deb.sh            build and inspect only
#   scripts/check-deb.sh --install  also install, upgrade, remove and purge it
#                                   on this machine (root; for throwaway CI hosts)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'check-deb: FAIL: %s\n' "$*" >&2; exit 1; }
has() { grep -qF -- "$2" <<<"$1" || fail "$3: no '$2' in:"$'\n'"$1"; }

cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked
deb=$(cargo deb --locked | tail -1)
[ -f "$deb" ] || fail "cargo deb produced no package"
echo "built $deb ($(stat -c %s "$deb") bytes)"

info=$(dpkg-deb -I "$deb")
has "$info" "Package: fieldgate" control
has "$info" "Architecture: amd64" control
has "$info" "libc6 (>= 2.34)" Depends
has "$info" "adduser" Depends
ctrl() { dpkg-deb --ctrl-tarfile "$deb" | tar -xO "./$1"; }
[ "$(ctrl conffiles)" = /etc/fieldgate/fieldgate.yaml ] || fail "conffiles: $(ctrl conffiles)"
has "$(ctrl postinst)" "adduser --system" postinst
has "$(ctrl postinst)" "dpkg-statoverride --update --add root fieldgate 0640" postinst
has "$(ctrl postinst)" "deb-systemd-helper enable fieldgate.service" postinst
has "$(ctrl postinst)" "deb-systemd-invoke try-restart fieldgate.service" postinst
# A first install does not start the service: its configuration has no broker.
! grep -q 'deb-systemd-invoke.*start fieldgate' <<<"$(ctrl postinst | grep -v try-restart)" ||
  fail "postinst starts the service on a first install"
has "$(ctrl prerm)" "deb-systemd-invoke stop fieldgate.service" prerm
has "$(ctrl postrm)" "rm -rf /var/lib/fieldgate" postrm
has "$(ctrl postrm)" "deb-systemd-helper purge fieldgate.service" postrm

files=$(dpkg-deb -c "$deb" | awk '{print $1, $2, $6}')
has "$files" "-rwxr-xr-x 0/0 ./usr/bin/fieldgate" files
has "$files" "-rw-r--r-- 0/0 ./usr/lib/systemd/system/fieldgate.service" files
has "$files" "-rw-r--r-- 0/0 ./usr/share/dbus-1/system.d/fieldgate-bluez.conf" files
has "$files" "-rw-r----- 0/0 ./etc/fieldgate/fieldgate.yaml" files
has "$files" "-rw-r--r-- 0/0 ./usr/share/doc/fieldgate/examples/example.yaml" files
data() { dpkg-deb --fsys-tarfile "$deb" | tar -xO "./$1"; }
cmp -s <(data usr/lib/systemd/system/fieldgate.service) systemd/fieldgate.service || fail "packaged unit differs"
cmp -s <(data etc/fieldgate/fieldgate.yaml) config/installed/fieldgate.yaml || fail "packaged config differs"
echo "contents: ok (binary, unit, D-Bus policy, conffile 0640, maintainer scripts)"

[ "${1:-}" = --install ] || exit 0
[ "$(id -u)" = 0 ] || fail "--install needs root"
! dpkg-query -W fieldgate >/dev/null 2>&1 || fail "fieldgate is already installed here"
dpkg -i "$deb" >/dev/null
id -nG fieldgate | grep -qw dialout || fail "the fieldgate user is not in dialout"
[ "$(stat -c '%U:%G %a' /etc/fieldgate/fieldgate.yaml)" = "root:fieldgate 640" ] ||
  fail "config is $(stat -c '%U:%G %a' /etc/fieldgate/fieldgate.yaml)"
# Refused until the broker is set (so an unedited install reads and queues
# nothing); readable by the fieldgate user (a read error would not name the key).
set +e; out=$(runuser -u fieldgate -- fieldgate check --config /etc/fieldgate/fieldgate.yaml 2>&1); code=$?; set -e
{ [ "$code" = 2 ] && grep -q 'mqtt.url: missing' <<<"$out"; } || fail "unedited config: exit $code: $out"
if [ -d /run/systemd/system ]; then
  ! systemctl is-active --quiet fieldgate || fail "a first install started the service"
fi
sed -i 's|^  # url: .*|  url: mqtt://127.0.0.1:1883|' /etc/fieldgate/fieldgate.yaml
runuser -u fieldgate -- fieldgate check --config /etc/fieldgate/fieldgate.yaml >/dev/null ||
  fail "the fieldgate user cannot check its configuration"
echo "# edited" >>/etc/fieldgate/fieldgate.yaml
dpkg -i "$deb" >/dev/null 2>&1   # an upgrade keeps the edited conffile
grep -q '^# edited' /etc/fieldgate/fieldgate.yaml || fail "reinstall replaced the edited config"
mkdir -p /var/lib/fieldgate && : >/var/lib/fieldgate/fieldgate.db
dpkg -r fieldgate >/dev/null
{ [ ! -e /usr/bin/fieldgate ] && [ -e /etc/fieldgate/fieldgate.yaml ] && [ -e /var/lib/fieldgate/fieldgate.db ]; } ||
  fail "remove must delete the binary and keep config and data"
dpkg -P fieldgate >/dev/null
{ [ ! -e /etc/fieldgate ] && [ ! -e /var/lib/fieldgate ]; } || fail "purge must delete config and data"
! dpkg-statoverride --list /etc/fieldgate/fieldgate.yaml >/dev/null || fail "purge left the statoverride"
echo "install, upgrade, remove, purge: ok"
