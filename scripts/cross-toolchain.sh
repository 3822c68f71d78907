#!/usr/bin/env bash
# Builds fieldgate for aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf
# on a Debian 12 x86_64 host without rustup targets (for machines where the
# rustup server is out of reach): Debian's rustc-web/cargo-web from
# bookworm-security and libstd-rust-web-dev for arm64/armhf are fetched with a
# private apt state and unpacked into a cache directory, with Debian's cross gcc
# as linkers and qemu-user-static as the runner. The system's apt and dpkg
# state are never touched, apart from installing the cross gcc, the target libc
# headers and qemu when they are missing.
#
# Usage:
#   scripts/cross-toolchain.sh build --release --target aarch64-unknown-linux-gnu
#   scripts/cross-toolchain.sh setup              # set up only (idempotent)
#   eval "$(scripts/cross-toolchain.sh env)"      # the environment, for a shell
#
# Environment:
#   FIELDGATE_CROSS_HOME  cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/fieldgate/cross)
#   FIELDGATE_CROSS_RUST  Debian version of rustc-web (default below; `auto` = newest)
#   FIELDGATE_CROSS_MIRROR, FIELDGATE_CROSS_SECURITY_MIRROR   Debian mirrors
#   FIELDGATE_CROSS_ALLOW_UNVERIFIED=1  see pool_fetch
set -euo pipefail

HOME_DIR=${FIELDGATE_CROSS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/fieldgate/cross}
RUST_VER=${FIELDGATE_CROSS_RUST:-1.96.0+dfsg1-1~deb12u2}
MIRROR=${FIELDGATE_CROSS_MIRROR:-http://deb.debian.org/debian}
SEC_MIRROR=${FIELDGATE_CROSS_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
SYS_PKGS=(gcc libc6-dev pkg-config xz-utils qemu-user-static
          gcc-aarch64-linux-gnu libc6-dev-arm64-cross
          gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
HOST_ARCH=$(dpkg --print-architecture)
[ "$HOST_ARCH" = amd64 ] || { echo "cross-toolchain: needs an amd64 host" >&2; exit 1; }
HOST_MULTIARCH=x86_64-linux-gnu

log() { printf '[cross] %s\n' "$*" >&2; }
die() { printf '[cross] error: %s\n' "$*" >&2; exit 1; }
tgt_gnu() { case $1 in aarch64-*) echo aarch64-linux-gnu;; armv7-*) echo arm-linux-gnueabihf;; esac; }
tgt_qemu() { case $1 in aarch64-*) echo qemu-aarch64-static;; armv7-*) echo qemu-arm-static;; esac; }

ensure_system_pkgs() {
  local missing=() p sudo=""
  for p in "${SYS_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || sudo=sudo
  log "apt-get install ${missing[*]}"
  # The system lists may be fresh enough already; refresh them only if not.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    { $sudo apt-get update -qq >&2 &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
}

# One apt state per Debian architecture: this mirror has served a stale armhf
# bookworm-security index ("File has unexpected size"), and with one shared
# state that takes every architecture down with it.
APTD=$HOME_DIR/apt
# For the armhf fallback below. The arm64 pin was checked against the signed
# index; the armhf one could only be taken from the mirror's stale index.
declare -A PIN=(
  [libstd-rust-web-dev_1.96.0+dfsg1-1~deb12u2_arm64]=02419380801b9f61391294823659b17b90f7a863ca3bbccb9140d2f0f8a2c910
  [libstd-rust-web-dev_1.96.0+dfsg1-1~deb12u2_armhf]=b9f9dd1d03a903680f918cb2bba00a2a3d76558545d5e6a8061072ab461bb989
)
papt_opts() {
  local d=$APTD/$1
  printf '%s\n' -o "Dir::State=$d/state" -o "Dir::State::status=$d/state/status" \
    -o "Dir::Cache=$d/cache" -o "Dir::Etc::SourceList=$APTD/etc/sources.list" \
    -o "Dir::Etc::SourceParts=$APTD/etc/sources.list.d" \
    -o "Dir::Etc::Preferences=$APTD/etc/preferences" -o "Dir::Etc::PreferencesParts=$APTD/etc/preferences.d" \
    -o "APT::Architecture=$1" -o "APT::Architectures=$1" \
    -o "Acquire::Languages=none" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1"
}
papt_get()   { local a=$1 o; shift; mapfile -t o < <(papt_opts "$a"); apt-get -q "${o[@]}" "$@"; }
papt_cache() { local a=$1 o; shift; mapfile -t o < <(papt_opts "$a"); apt-cache "${o[@]}" "$@"; }
papt_ready() {
  local d=$APTD/$1
  [ -f "$d/updated" ] && return 0
  mkdir -p "$d"/state/lists/partial "$d"/cache/archives/partial "$APTD"/etc/sources.list.d "$APTD"/etc/preferences.d
  : >>"$d/state/status"
  cat >"$APTD/etc/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR bookworm main
deb [signed-by=$KEYRING] $MIRROR bookworm-updates main
deb [signed-by=$KEYRING] $SEC_MIRROR bookworm-security main
EOF
  log "private apt update ($1)"
  papt_get "$1" update >&2 || log "warning: the $1 index is incomplete (stale mirror?); falling back to the pool"
  : >"$d/updated"
}

# Fetches a .deb straight from the pool, by the host arch's Filename, checked
# against a sha256 pin or (FIELDGATE_CROSS_ALLOW_UNVERIFIED=1) the mirror's
# unsigned index.
pool_fetch() {  # dir name version arch
  local dir=$1 n=$2 v=$3 a=$4 fn url sha idx
  fn=$(papt_cache "$HOST_ARCH" show "$n:$HOST_ARCH=$v" 2>/dev/null | awk '/^Filename:/ {print $2; exit}')
  [ -n "$fn" ] || die "cannot locate $n $v in the $HOST_ARCH index either"
  fn=${fn%_"$HOST_ARCH".deb}_$a.deb
  case $fn in pool/updates/*) url=$SEC_MIRROR/$fn idx=$SEC_MIRROR/dists/bookworm-security;;
              *) url=$MIRROR/$fn idx=$MIRROR/dists/bookworm;; esac
  sha=${PIN[${n}_${v}_$a]:-}
  if [ -z "$sha" ]; then
    [ "${FIELDGATE_CROSS_ALLOW_UNVERIFIED:-0}" = 1 ] ||
      die "no signed $a index and no sha256 pin for $n $v (FIELDGATE_CROSS_ALLOW_UNVERIFIED=1 trusts the raw index)"
    /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$idx/main/binary-$a/Packages.xz" "$dir/.Packages-$a.xz" >&2
    sha=$(xz -dc "$dir/.Packages-$a.xz" | awk -v p="$n" -v v="$v" \
      '$1=="Package:"{m=($2==p)} m&&$1=="Version:"{mv=($2==v)} m&&mv&&$1=="SHA256:"{print $2; exit}')
    [ -n "$sha" ] || die "$n $v $a is not in $idx"
    log "warning: $n $v $a checked only against an unsigned index"
  fi
  log "pool fallback: $url"
  /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$url" "$dir/${n}_${v}_$a.deb" "SHA256:$sha" >&2
}

# bookworm-security keeps only the newest rustc-web, so a pinned version vanishes.
resolve_version() {
  if [ "$RUST_VER" = auto ] || ! papt_cache "$HOST_ARCH" show "rustc-web:$HOST_ARCH=$RUST_VER" >/dev/null 2>&1; then
    local v; v=$(papt_cache "$HOST_ARCH" policy "rustc-web:$HOST_ARCH" | awk '/Candidate:/ {print $2}')
    { [ -n "$v" ] && [ "$v" != "(none)" ]; } || die "rustc-web is not in $MIRROR or $SEC_MIRROR"
    [ "$RUST_VER" = auto ] || log "warning: rustc-web $RUST_VER is gone from the archive; using $v"
    RUST_VER=$v
  fi
}

# Host libraries the extracted rustc/cargo need that this system lacks.
host_lib_closure() {
  local -A seen=(); local queue=("$@") p d
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}; queue=("${queue[@]:1}")
    for d in $(papt_cache "$HOST_ARCH" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                 --no-replaces --no-enhances "$p:$HOST_ARCH" 2>/dev/null |
               awk '/^ *\|?(Pre)?Depends: [^<]/ {print $2}' | sed 's/:.*//' | sort -u); do
      [ -n "${seen[$d]:-}" ] && continue; seen[$d]=1
      case $d in lib*-dev|libc-dev*) continue;; lib*) ;; *) continue;; esac
      { dpkg-query -W -f='${Status}\n' "$d:$HOST_ARCH" 2>/dev/null || dpkg-query -W -f='${Status}\n' "$d" 2>/dev/null; } |
        grep -q 'ok installed' && continue
      echo "$d"; queue+=("$d")
    done
  done
}

download_all() {   # dir name:arch=version...
  local dir=$1 w n a v; shift
  for w in "$@"; do
    n=${w%%:*}; a=${w#*:}; a=${a%%=*}; v=; [[ $w == *=* ]] && v=${w#*=}
    compgen -G "$dir/${n}_*_${a}.deb" >/dev/null && continue
    papt_ready "$a"
    ( cd "$dir" && papt_get "$a" download "$n:$a${v:+=$v}" >&2 ) && continue
    [ -n "$v" ] || return 1
    pool_fetch "$dir" "$n" "$v" "$a"
  done
}

TC=""
setup_toolchain() {
  mkdir -p "$HOME_DIR"
  if [ "$RUST_VER" != auto ] && [ -f "$HOME_DIR/toolchain-$RUST_VER/.complete" ]; then
    TC=$HOME_DIR/toolchain-$RUST_VER; return 0
  fi
  exec 9>"$HOME_DIR/.lock"; flock 9   # two first runs would extract into one dir
  papt_ready "$HOST_ARCH"
  resolve_version
  TC=$HOME_DIR/toolchain-$RUST_VER
  [ -f "$TC/.complete" ] && return 0
  local mm=${RUST_VER%%+*}; mm=${mm%.*}
  local want=("rustc-web:$HOST_ARCH=$RUST_VER" "cargo-web:$HOST_ARCH=$RUST_VER"
              "libstd-rust-web-dev:$HOST_ARCH=$RUST_VER" "libstd-rust-web-$mm:$HOST_ARCH=$RUST_VER"
              "libstd-rust-web-dev:arm64=$RUST_VER" "libstd-rust-web-dev:armhf=$RUST_VER") p
  for p in $(host_lib_closure "libstd-rust-web-$mm" cargo-web rustc-web | grep -v '^libstd-rust-web'); do
    want+=("$p:$HOST_ARCH")
  done
  local debs=$HOME_DIR/debs/$RUST_VER; mkdir -p "$debs"
  log "fetching into $debs: ${want[*]}"
  download_all "$debs" "${want[@]}" || die "download failed"
  local tmp=$TC.tmp.$$ f tool t
  rm -rf "$tmp"; mkdir -p "$tmp/wrap"
  for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$tmp"; done
  for tool in rustc rustdoc cargo; do
    # Relative to itself, so the cache can move.
    cat >"$tmp/wrap/$tool" <<EOF
#!/bin/sh
P=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$P/usr/lib/$HOST_MULTIARCH:\$P/usr/lib:\$P/lib/$HOST_MULTIARCH\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$P/usr/bin/$tool" "\$@"
EOF
    chmod +x "$tmp/wrap/$tool"
  done
  rm -rf "$TC"; mv "$tmp" "$TC"
  "$TC/wrap/rustc" -vV >&2 || die "the extracted rustc does not run (a missing host library?)"
  for t in "${TARGETS[@]}"; do
    compgen -G "$TC/usr/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null || die "no std for $t in $TC"
  done
  touch "$TC/.complete"
  log "toolchain ready: $TC"
}

env_lines() {
  local t up gnu
  echo "export RUSTC='$TC/wrap/rustc' RUSTDOC='$TC/wrap/rustdoc' PKG_CONFIG_ALLOW_CROSS=1"
  for t in "${TARGETS[@]}"; do
    up=$(echo "$t" | tr 'a-z-' 'A-Z_'); gnu=$(tgt_gnu "$t")
    echo "export CARGO_TARGET_${up}_LINKER=$gnu-gcc"
    echo "export CARGO_TARGET_${up}_RUNNER='$(tgt_qemu "$t") -L /usr/$gnu'"
    echo "export CC_${t//-/_}=$gnu-gcc AR_${t//-/_}=$gnu-ar"
    # Only target .pc files, so no host library can leak into a target link.
    echo "export PKG_CONFIG_LIBDIR_${t//-/_}=/usr/lib/$gnu/pkgconfig:/usr/$gnu/lib/pkgconfig"
  done
  # Debian's cargo matches its rustc; rustup's cargo proxy would try to download.
  echo "export PATH='$TC/wrap':\"\$PATH\""
}

case ${1:-} in
  -h|--help|"") sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0;;
esac
ensure_system_pkgs
setup_toolchain
case $1 in
  setup) exit 0;;
  env) env_lines; exit 0;;
esac
eval "$(env_lines)"
exec "$TC/wrap/cargo" "$@"
