#!/usr/bin/env bash
# SD-card wear: bytes the gateway writes to disk per reading, at a steady
# 1,000 readings/s (10 simulated devices every 10ms) with a broker that
# acknowledges everything, so each reading is inserted and then deleted.
# Reads write_bytes from /proc/<pid>/io over a window after a warm-up.
#   DURATION=30 WARMUP=5 scripts/wear.sh
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-30}
warmup=${WARMUP:-5}

cargo build --release --quiet
bin=$PWD/target/release/fieldgate
work=$(mktemp -d)
broker_pid=""
gw_pid=""
cleanup() {
    if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; fi
    if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
user root
max_inflight_messages 0
max_queued_messages 1000000
CONF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!

{
    echo "gateway: { id: wear, state_dir: $work/state }"
    echo "mqtt: { url: \"mqtt://127.0.0.1:$port\" }"
    echo "devices:"
    for i in $(seq 0 9); do
        echo "  - name: dev$i"
        echo "    kind: simulated"
        echo "    poll: 10ms"
        echo "    points:"
        echo "      - { name: temperature, signal: sine, min: 55, max: 75 }"
        echo "      - { name: setpoint, signal: constant, value: 65 }"
    done
} > "$work/wear.yaml"

RUST_LOG=warn "$bin" run --config "$work/wear.yaml" 2>"$work/gateway.log" &
gw_pid=$!

written() { awk '/^write_bytes/ { print $2 }' "/proc/$gw_pid/io"; }
next_seq() { "$bin" queue --config "$work/wear.yaml" stats | awk '/^next/ { print $3 }'; }
queued() { "$bin" queue --config "$work/wear.yaml" stats | awk '/^rows/ { print $2 }'; }

sleep "$warmup"
w1=$(written); s1=$(next_seq)
sleep "$duration"
w2=$(written); s2=$(next_seq)
readings=$((s2 - s1))
bytes=$((w2 - w1))
echo "wear: $readings readings in ${duration}s ($((readings / duration))/s), $bytes bytes written, $((bytes / readings)) bytes per reading, $(queued) rows queued at the end"
