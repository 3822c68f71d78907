#!/usr/bin/env bash
# Builds release binaries for a 64-bit and a 32-bit Raspberry Pi OS and runs
# them under qemu-user: `version`, `check` on every file in config/, and a
# short `run` of config/demo.yaml that must deliver readings to a private
# mosquitto. Prints the binary sizes and how long each step took.
# Toolchain: scripts/cross-toolchain.sh (cached under ~/.cache).
#
# Environment: FIELDGATE_CROSS_TARGET_DIR (default target/cross),
#   FIELDGATE_MAX_BYTES (default 8 MiB: the largest arm64 binary accepted).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
export CARGO_TARGET_DIR=${FIELDGATE_CROSS_TARGET_DIR:-$PWD/target/cross}
MAX_BYTES=${FIELDGATE_MAX_BYTES:-$((8 * 1024 * 1024))}
READINGS=5

say() { printf '[cross-check] %s\n' "$*"; }
fail() { printf '[cross-check] FAIL: %s\n' "$*" >&2; exit 1; }
gnu() { case $1 in aarch64-*) echo aarch64-linux-gnu;; *) echo arm-linux-gnueabihf;; esac; }
qemu() { case $1 in aarch64-*) echo qemu-aarch64-static;; *) echo qemu-arm-static;; esac; }
timed() {  # label command... ; appends "label seconds" to $TIMES
  local t0=$SECONDS; "${@:2}"; TIMES+=("$(printf '%-44s %4ss' "$1" $((SECONDS - t0)))")
}
TIMES=()
START=$SECONDS

for p in mosquitto mosquitto-clients; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && continue
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done

timed "toolchain setup" scripts/cross-toolchain.sh setup
eval "$(scripts/cross-toolchain.sh env)"
say "$(rustc --version) / $(cargo --version)"

WORK=$(mktemp -d)
BROKER_PID=""
GW_PID=""
cleanup() {
  for pid in $GW_PID $BROKER_PID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A private broker on a free port; another process may grab the port between
# the pick and the bind, hence the retries.
start_broker() {
  for _ in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 40000))
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" >"$WORK/mosquitto.conf"
    /usr/sbin/mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
      kill -0 "$BROKER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true
  done
  cat "$WORK/mosquitto.log" >&2
  fail "mosquitto did not start"
}

check_target() {
  local t=$1 bin q out f n=0
  bin=$CARGO_TARGET_DIR/$t/release/fieldgate
  q=("$(qemu "$t")" -L "/usr/$(gnu "$t")")

  out=$("${q[@]}" "$bin" version) || fail "$t: version"
  [ "$out" = "fieldgate $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] || fail "$t: version printed '$out'"
  for f in config/*.yaml; do
    out=$("${q[@]}" "$bin" check --config "$f" 2>&1) || fail "$t: check $f: $out"
    n=$((n + 1))
  done

  local dir=$WORK/$t; mkdir -p "$dir/state"
  sed -e "s|^\(  url:\).*|\1 mqtt://127.0.0.1:$PORT|" -e "s|^\(  state_dir:\).*|\1 $dir/state|" \
    config/demo.yaml >"$dir/demo.yaml"
  grep -q "127.0.0.1:$PORT" "$dir/demo.yaml" || fail "could not point demo.yaml at the test broker"
  timeout 60 mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -t 'fieldgate/demo-gateway/telemetry/#' \
    -C "$READINGS" >"$dir/received" 2>"$dir/sub.err" &
  local sub=$!
  sleep 0.5   # the subscription must exist before readings are published
  "${q[@]}" "$bin" run --config "$dir/demo.yaml" >"$dir/gateway.log" 2>&1 &
  GW_PID=$!
  local sub_ok=0 status=0
  wait "$sub" || sub_ok=$?
  kill -TERM "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" || status=$?
  GW_PID=""
  if [ "$sub_ok" != 0 ] || [ "$(grep -c '"seq":' "$dir/received")" -lt "$READINGS" ]; then
    cat "$dir/gateway.log" "$dir/sub.err" >&2
    fail "$t: the demo delivered $(grep -c '"seq":' "$dir/received") of $READINGS readings"
  fi
  [ "$status" = 0 ] || { cat "$dir/gateway.log" >&2; fail "$t: run exited with $status after SIGTERM"; }
  say "$t: version, check of $n configs, and $READINGS readings delivered: ok"
}

start_broker
for t in "${TARGETS[@]}"; do
  timed "build $t" cargo build --release --locked --target "$t"
  timed "qemu checks $t" check_target "$t"
done

say "sizes (release profile strips; re-stripped copies to be sure):"
for t in "${TARGETS[@]}"; do
  bin=$CARGO_TARGET_DIR/$t/release/fieldgate
  "$(gnu "$t")-strip" -o "$WORK/stripped" "$bin"
  size=$(stat -c %s "$WORK/stripped")
  glibc=$("$(gnu "$t")-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  printf '  %-32s %9s bytes (%s MiB), needs %s\n' "$t" "$size" \
    "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')" "$glibc"
  if [ "$t" = aarch64-unknown-linux-gnu ] && [ "$size" -gt "$MAX_BYTES" ]; then
    fail "$t binary is $size bytes, over the $MAX_BYTES limit"
  fi
done
# The same binaries as Pi packages, when cargo-deb is there (scripts/check-deb.sh installs it).
if cargo deb --version >/dev/null 2>&1; then
  for t in "${TARGETS[@]}"; do
    timed "package $t" cargo deb --target "$t" --no-build --no-strip --quiet >"$WORK/deb-path"
    deb=$(tail -1 "$WORK/deb-path")
    say "  $deb ($(dpkg-deb -f "$deb" Architecture), $(stat -c %s "$deb") bytes)"
  done
fi
say "times:"
printf '  %s\n' "${TIMES[@]}"
say "total $((SECONDS - START))s"
