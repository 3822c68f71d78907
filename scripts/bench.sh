#!/usr/bin/env bash
# Benchmarks: builds release binaries, starts a private mosquitto on a free
# port, measures each figure RUNS times (3 by default) and prints one table
# (median, min, max), also written to BENCHMARKS.md with the date, the
# machine and the git commit (the notes below the table in BENCHMARKS.md,
# after its "notes" marker line, are kept).
#
#   scripts/bench.sh                          # 5 to 10 minutes on 2 cores
#   RUNS=5 BACKLOG=200000 scripts/bench.sh    # knobs: see the defaults below
#
# As in production, a QoS 1 subscriber (mosquitto_sub -q 1) takes every
# telemetry message off the broker during each drain and steady run.
# The figures, each measured on its own, one after the other:
#   ingest   readings/s committed into the store (examples/bench_ingest.rs)
#   drain    a backlog of BACKLOG rows (examples/bench_fill.rs) published at
#            QoS 1 and at QoS 0, against two baselines sending the same
#            payloads from memory, run alternately in the same broker: a
#            plain rumqttc client (examples/bench_baseline.rs) and
#            `mosquitto_pub -l`; at QoS 1 also with mqtt.max_inflight 1000
#            next to the default 100; the start-up time to the first
#            publish and the peak RSS (examples/bench_probe.rs)
#   steady   10 simulated devices every 10 ms (1,000 readings/s, two points
#            each): bytes written per reading, on-CPU time per reading (from
#            /proc/PID/task/*/schedstat) against that of a `mosquitto_pub -l`
#            paced at the same rate with the same payloads in the same
#            window, latency from reading to subscriber; with the default
#            store settings, then with store.flush_interval at FAST_FLUSH
#            (shorter runs)
#   idle     RSS with 10 devices at 1 reading/s each after IDLE_SECONDS; the
#            RUNS gateways run side by side during the steady runs
#   modbus   RSS with 100 Modbus points (10 devices of 10 holding registers
#            on a Modbus TCP slave, examples/bench_modbus_slave.rs) every
#            100 ms, after IDLE_SECONDS, beside the idle gateways
#   size     the stripped release binaries; arm64 built with
#            scripts/cross-toolchain.sh (CROSS=0: only when already built)
# It exits non-zero only when it cannot run (a missing tool, a gateway that
# fails), never because a figure misses its goal.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
backlog=${BACKLOG:-60000}
ingest_readings=${INGEST_READINGS:-500000}
steady_warmup=${STEADY_WARMUP:-5}
steady_seconds=${STEADY_SECONDS:-20}
idle_seconds=${IDLE_SECONDS:-60}
fast_flush=${FAST_FLUSH:-20ms}
cross=${CROSS:-1}
began=$(date +%s)

say() { echo "bench: $*" >&2; }
die() {
    say "cannot run: $*"
    exit 1
}
for tool in cargo mosquitto mosquitto_pub mosquitto_sub stdbuf python3 strip; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt install mosquitto mosquitto-clients)"
done

say "building release binaries"
work=$(mktemp -d)
# The gateway as shipped: built alone, since building the examples with it
# turns on features of the dev-dependencies (tokio-modbus's server) in the
# crates they share, which makes a bigger binary.
cargo build --release --locked --quiet --bins || die "the build failed"
bin=$work/fieldgate
cp target/release/fieldgate "$bin"
cargo build --release --locked --quiet --examples || die "the build failed"
examples=$PWD/target/release/examples

broker_pid=""
listener_pid=""
slave_pid=""
cleanup() {
    local pid
    for pid in "$listener_pid" "$slave_pid" "$broker_pid"; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
log=$work/gateway.log
mkdir -p "$work/samples"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
user root
max_inflight_messages 0
max_queued_messages 1000000
CONF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "mosquitto did not start: $(cat "$work/mosquitto.log")"

# gateway_config NAME ID POLL DEVICES [STORE] [MQTT]: a config in $work/NAME
# with its own state dir, DEVICES simulated devices of two points every
# POLL, the given `store:` section and more `mqtt:` settings. With
# MODBUS_PORT set, the devices are Modbus TCP units 1.. on that port with 10
# holding registers each.
gateway_config() {
    local dir=$work/$1 i p
    mkdir -p "$dir"
    {
        echo "gateway: { id: $2, state_dir: $dir/state, status_interval: 1h }"
        # drain_rate 0: the drain figures measure the link, not the pacing;
        # connect_jitter 0s: the start-up figure, not a random wait.
        echo "mqtt: { url: \"mqtt://127.0.0.1:$port\", drain_rate: 0, connect_jitter: 0s${6:+, $6} }"
        echo "store: { ${5:-} }"
        echo "devices:"
        [ "$4" -eq 0 ] && echo "  []"
        for i in $(seq 0 $(($4 - 1))); do
            echo "  - name: dev$i"
            echo "    poll: $3"
            if [ -n "${MODBUS_PORT:-}" ]; then
                echo "    kind: modbus"
                echo "    tcp: { host: 127.0.0.1, port: $MODBUS_PORT }"
                echo "    unit: $((i + 1))"
                echo "    points:"
                for p in $(seq 0 9); do
                    echo "      - { name: r$p, register: holding, address: $p }"
                done
            else
                echo "    kind: simulated"
                echo "    points:"
                echo "      - { name: temperature, signal: sine, min: 55, max: 75 }"
                echo "      - { name: setpoint, signal: constant, value: 65 }"
            fi
        done
    } >"$dir/fieldgate.yaml"
    "$bin" check --config "$dir/fieldgate.yaml" >/dev/null || die "invalid generated config $dir/fieldgate.yaml"
    echo "$dir"
}

# listen / unlisten: a QoS 1 subscriber to all telemetry on the broker, as
# in production; unlisten says how many messages it took.
listen() {
    stdbuf -oL mosquitto_sub -d -q 1 -h 127.0.0.1 -p "$port" -i "bench-sub-$$" \
        -t 'fieldgate/+/telemetry/#' >"$work/sub.out" 2>&1 &
    listener_pid=$!
    for _ in $(seq 100); do
        grep -q 'received SUBACK' "$work/sub.out" && return 0
        sleep 0.1
    done
    die "mosquitto_sub did not subscribe: $(cat "$work/sub.out")"
}
unlisten() {
    kill "$listener_pid" 2>/dev/null || true
    wait "$listener_pid" 2>/dev/null || true
    listener_pid=""
    say "the subscriber took $(grep -c 'received PUBLISH' "$work/sub.out") messages"
    rm -f "$work/sub.out"
}

# measure COMMAND...: runs a measurement, its stderr (and the gateway's) to
# the log; prints its one line of key=value figures.
measure() {
    local out
    out=$(RUST_LOG=warn "$@" 2>>"$log") || {
        tail -n 20 "$log" >&2
        die "$(basename "$1") $2 failed"
    }
    echo "$out"
}
# value LINE KEY: the value of KEY in a line of key=value figures.
value() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
# record FIGURE VALUE
record() { echo "$2" >>"$work/samples/$1"; }

say "ingest: $ingest_readings readings into the store, $runs runs"
for run in $(seq "$runs"); do
    rm -rf "$work/ingest"
    out=$(measure "$examples/bench_ingest" "$work/ingest" --readings "$ingest_readings")
    record ingest "$(value "$out" readings_per_s)"
done
rm -rf "$work/ingest"

for qos in 1 0; do
    say "filling a store with $backlog rows at QoS $qos"
    measure "$examples/bench_fill" "$work/fill-q$qos/fieldgate.db" "$backlog" --qos "$qos" >/dev/null
    measure "$examples/bench_baseline" --lines "$work/lines-q$qos" "$work/fill-q$qos/fieldgate.db" >/dev/null
done

# drain_gateway CONFIG QOS: drains a copy of the QoS store with CONFIG;
# prints the probe's figures.
drain_gateway() {
    rm -rf "$1/state"
    cp -r "$work/fill-q$2" "$1/state"
    measure "$examples/bench_probe" drain --port "$port" --db "$1/state/fieldgate.db" \
        -- "$bin" run --config "$1/fieldgate.yaml"
}
# mosquitto_pub_drain QOS: messages/s of `mosquitto_pub -l` sending the
# payloads of the QoS store, from its start to its exit (after the last ack).
mosquitto_pub_drain() {
    local t0 t1
    t0=$(date +%s%N)
    mosquitto_pub -h 127.0.0.1 -p "$port" -q "$1" -M 100 -l -i "bench-mosquitto-pub-$$" \
        -t fieldgate/mosquitto_pub/telemetry/dev0 <"$work/lines-q$1" 2>>"$log" ||
        die "mosquitto_pub failed"
    t1=$(date +%s%N)
    awk -v n="$(wc -l <"$work/lines-q$1")" -v ns=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
}

drain_config=$(gateway_config drain bench 1s 0)
wide_config=$(gateway_config drain-wide bench 1s 0 "" "max_inflight: 1000")
for run in $(seq "$runs"); do
    for qos in 1 0; do
        listen
        say "drain QoS $qos, run $run/$runs: baseline rumqttc"
        out=$(measure "$examples/bench_baseline" --port "$port" "$work/fill-q$qos/fieldgate.db")
        base=$(value "$out" msgs_per_s)
        record "baseline_q$qos" "$base"
        say "drain QoS $qos, run $run/$runs: baseline mosquitto_pub -l"
        mosq=$(mosquitto_pub_drain "$qos")
        record "mosquitto_pub_q$qos" "$mosq"
        say "drain QoS $qos, run $run/$runs: gateway"
        out=$(drain_gateway "$drain_config" "$qos")
        [ "$(value "$out" left)" -eq 0 ] || say "the store was not empty at the timeout: $out"
        rate=$(value "$out" msgs_per_s)
        record "drain_q$qos" "$rate"
        record "ratio_q$qos" "$(awk -v a="$rate" -v b="$base" 'BEGIN { print a / b }')"
        record "ratio_mosquitto_pub_q$qos" "$(awk -v a="$rate" -v b="$mosq" 'BEGIN { print a / b }')"
        record "peak_rss_q$qos" "$(awk -v k="$(value "$out" peak_rss_kb)" 'BEGIN { print k / 1024 }')"
        record startup "$(value "$out" startup_ms)"
        if [ "$qos" = 1 ]; then
            say "drain QoS 1, run $run/$runs: gateway with max_inflight 1000"
            out=$(drain_gateway "$wide_config" 1)
            [ "$(value "$out" left)" -eq 0 ] || say "the store was not empty at the timeout: $out"
            wide=$(value "$out" msgs_per_s)
            record drain_wide_q1 "$wide"
            record ratio_wide_q1 "$(awk -v a="$wide" -v b="$rate" 'BEGIN { print a / b }')"
        fi
        unlisten
    done
done
rm -rf "$drain_config/state" "$wide_config/state"

# The idle gateways run side by side while the steady runs go on (they
# last longer than the idle period); the steady figures are per process.
say "idle: $runs gateways side by side, 10 devices at 1 reading/s, RSS after ${idle_seconds}s"
idle_pids=()
for run in $(seq "$runs"); do
    config=$(gateway_config "idle$run" "idle$run" 1s 10)
    (measure "$examples/bench_probe" idle --seconds "$idle_seconds" \
        -- "$bin" run --config "$config/fieldgate.yaml" >"$work/idle$run.out") &
    idle_pids+=($!)
done
say "modbus: 100 points every 100 ms, RSS after ${idle_seconds}s, beside them"
"$examples/bench_modbus_slave" --port 0 >"$work/slave.out" 2>>"$log" &
slave_pid=$!
for _ in $(seq 100); do
    grep -q '^port=' "$work/slave.out" && break
    sleep 0.1
done
modbus_port=$(sed -n 's/^port=//p' "$work/slave.out")
[ -n "$modbus_port" ] || die "the Modbus slave did not start"
config=$(MODBUS_PORT=$modbus_port gateway_config modbus modbus 100ms 10)
(measure "$examples/bench_probe" idle --seconds "$idle_seconds" \
    -- "$bin" run --config "$config/fieldgate.yaml" >"$work/modbus.out") &
modbus_pid=$!

# steady PREFIX WARMUP SECONDS [STORE]: the steady runs of 10 devices
# every 10 ms, with the given `store:` section, a paced mosquitto_pub -l
# beside them; figures named PREFIX*.
steady() {
    local config
    config=$(gateway_config "steady$1" bench 10ms 10 "${4:-}")
    for run in $(seq "$runs"); do
        say "steady 1,000 readings/s${4:+ with $4}, run $run/$runs (${2}s warm-up, ${3}s window)"
        rm -rf "$config/state"
        listen
        out=$(measure "$examples/bench_probe" steady --port "$port" --db "$config/state/fieldgate.db" \
            --warmup "$2" --seconds "$3" --baseline-lines "$work/lines-q1" --baseline-rate 1000 \
            -- "$bin" run --config "$config/fieldgate.yaml")
        unlisten
        for figure in readings_per_s bytes_per_reading cpu_us_per_reading latency_p50_ms latency_p99_ms \
            baseline_cpu_us_per_msg cpu_ratio write_calls_per_reading baseline_write_calls_per_msg; do
            record "$1$figure" "$(value "$out" "$figure")"
        done
    done
}
steady "" "$steady_warmup" "$steady_seconds"
steady fast_ 3 10 "flush_interval: $fast_flush"

for i in "${!idle_pids[@]}"; do
    wait "${idle_pids[$i]}" || die "idle run $((i + 1)) failed"
    record idle_rss "$(awk -v k="$(value "$(cat "$work/idle$((i + 1)).out")" idle_rss_kb)" 'BEGIN { print k / 1024 }')"
done
wait "$modbus_pid" || die "the Modbus run failed"
kill "$slave_pid" 2>/dev/null || true
wait "$slave_pid" 2>/dev/null || true
slave_pid=""
out=$(cat "$work/modbus.out")
for figure in idle_rss anon file peak_rss; do
    record "modbus_$figure" "$(awk -v k="$(value "$out" "${figure}_kb")" 'BEGIN { print k * 1024 / 1e6 }')"
done

# size FIGURE STRIP BINARY...: the first BINARY that exists, in MiB once
# stripped (release binaries are stripped already).
size() {
    local figure=$1 strip=$2 binary copy=$work/size.bin
    shift 2
    for binary in "$@"; do
        [ -f "$binary" ] || continue
        if ! { command -v "$strip" >/dev/null && "$strip" -o "$copy" "$binary" 2>/dev/null; }; then
            cp "$binary" "$copy"
        fi
        record "$figure" "$(awk -v b="$(stat -c %s "$copy")" 'BEGIN { print b / 1048576 }')"
        return 0
    done
}
cross_dir=${FIELDGATE_CROSS_TARGET_DIR:-$PWD/target/cross}
if [ "$cross" = 1 ]; then
    say "building the arm64 binary (scripts/cross-toolchain.sh)"
    CARGO_TARGET_DIR=$cross_dir scripts/cross-toolchain.sh build --release --locked --quiet \
        --target aarch64-unknown-linux-gnu >>"$log" 2>&1 ||
        say "the arm64 build failed (see above); its size is left out"
fi
size size_x86_64 strip "$bin"
# The arm64 build of scripts/cross-check.sh, or of a plain cargo or cross.
size size_arm64 aarch64-linux-gnu-strip \
    "$cross_dir/aarch64-unknown-linux-gnu/release/fieldgate" \
    target/aarch64-unknown-linux-gnu/release/fieldgate
size size_armv7 arm-linux-gnueabihf-strip \
    "$cross_dir/armv7-unknown-linux-gnueabihf/release/fieldgate" \
    target/armv7-unknown-linux-gnueabihf/release/fieldgate

elapsed=$(($(date +%s) - began))

# row FIGURE LABEL UNIT DECIMALS GOAL: one line of the table, when measured.
# GOAL is like ">= 200000" or "<= 30", or "" for none.
row() {
    local file=$work/samples/$1
    [ -s "$file" ] || return 0
    sort -g "$file" | awk -v label="$2" -v unit="$3" -v d="$4" -v goal="$5" '
        { v[NR] = $1 }
        END {
            median = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            f = "%." d "f"
            verdict = ""
            if (goal != "") {
                split(goal, g, " ")
                ok = g[1] == ">=" ? median >= g[2] : median <= g[2]
                verdict = ok ? "yes" : "**no**"
            }
            printf "| %s | %s | " f " | " f " | " f " | %d | %s | %s |\n", \
                label, unit, median, v[1], v[NR], NR, goal, verdict
        }'
}

table() {
    echo "| figure | unit | median | min | max | runs | goal | met |"
    echo "|---|---|--:|--:|--:|--:|---|---|"
    row ingest "ingest into the store (100 devices, 2 points)" "readings/s" 0 ">= 200000"
    row baseline_q1 "baseline rumqttc, QoS 1 (from memory, 100 in flight)" "msgs/s" 0 ""
    row mosquitto_pub_q1 "baseline mosquitto_pub -l, QoS 1 (-M 100)" "msgs/s" 0 ""
    row drain_q1 "drain of a $backlog-row backlog, QoS 1" "msgs/s" 0 ""
    row ratio_q1 "drain QoS 1 / rumqttc" "ratio" 2 ">= 0.8"
    row ratio_mosquitto_pub_q1 "drain QoS 1 / mosquitto_pub -l" "ratio" 2 ">= 0.9"
    row drain_wide_q1 "drain QoS 1 with max_inflight 1000" "msgs/s" 0 ""
    row ratio_wide_q1 "drain with max_inflight 1000 / 100" "ratio" 2 ">= 1"
    row baseline_q0 "baseline rumqttc, QoS 0" "msgs/s" 0 ""
    row mosquitto_pub_q0 "baseline mosquitto_pub -l, QoS 0" "msgs/s" 0 ""
    row drain_q0 "drain of a $backlog-row backlog, QoS 0" "msgs/s" 0 ""
    row ratio_q0 "drain QoS 0 / rumqttc" "ratio" 2 ""
    row ratio_mosquitto_pub_q0 "drain QoS 0 / mosquitto_pub -l" "ratio" 2 ""
    row peak_rss_q1 "peak RSS draining, QoS 1" "MiB" 1 "<= 30"
    row peak_rss_q0 "peak RSS draining, QoS 0" "MiB" 1 "<= 30"
    row startup "start-up to first publish, $backlog-row backlog (QoS 1 and 0 runs)" "ms" 1 "<= 300"
    row idle_rss "idle RSS, 10 devices at 1/s, after ${idle_seconds}s" "MiB" 1 "<= 15"
    row modbus_idle_rss "RSS, 100 Modbus points every 100 ms, after ${idle_seconds}s" "MB" 2 "<= 6.5"
    row modbus_anon "… of which anonymous (heap, stacks)" "MB" 2 ""
    row modbus_file "… of which file-backed (binary, libraries)" "MB" 2 ""
    row modbus_peak_rss "… peak (VmHWM)" "MB" 2 ""
    row readings_per_s "steady rate (10 devices every 10 ms)" "readings/s" 0 ""
    row bytes_per_reading "bytes written to disk per reading at that rate, deletes included" "bytes" 0 "<= 32"
    row cpu_us_per_reading "on-CPU time per reading at that rate" "µs" 1 "<= 20"
    row baseline_cpu_us_per_msg "mosquitto_pub -l on-CPU time per message, same rate and payloads" "µs" 1 ""
    row cpu_ratio "CPU per reading / mosquitto_pub CPU per message, same run" "ratio" 2 "<= 0.4"
    row write_calls_per_reading "write calls per reading at that rate (sockets, files, wake-ups; syscw)" "calls" 2 ""
    row baseline_write_calls_per_msg "mosquitto_pub -l write calls per message, same run" "calls" 2 ""
    row latency_p50_ms "latency reading to subscriber at that rate, p50" "ms" 1 ""
    row latency_p99_ms "latency reading to subscriber at that rate, p99" "ms" 1 "<= 20"
    row fast_latency_p50_ms "… with store.flush_interval: $fast_flush: latency p50" "ms" 1 ""
    row fast_latency_p99_ms "… with store.flush_interval: $fast_flush: latency p99" "ms" 1 "<= 20"
    row fast_bytes_per_reading "… with store.flush_interval: $fast_flush: bytes written per reading" "bytes" 0 "<= 32"
    row fast_cpu_ratio "… with store.flush_interval: $fast_flush: CPU / mosquitto_pub CPU" "ratio" 2 "<= 0.4"
    row size_x86_64 "stripped release binary, x86_64" "MiB" 2 ""
    row size_arm64 "stripped release binary, arm64" "MiB" 2 "<= 6"
    row size_armv7 "stripped release binary, armv7 (when built)" "MiB" 2 ""
}

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
marker="<!-- notes: written by hand, kept by scripts/bench.sh -->"
notes=""
if [ -f BENCHMARKS.md ] && grep -qxF "$marker" BENCHMARKS.md; then
    notes=$(awk -v m="$marker" 'found || $0 == m { found = 1; print }' BENCHMARKS.md)
fi
{
    echo "# Benchmarks"
    echo
    echo "Measured by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d) at commit $commit,"
    echo "in $((elapsed / 60)) min $((elapsed % 60)) s."
    echo "Machine: $(nproc) cores, ${cpu:-unknown CPU}, $(uname -sr), $(df -T "$work" | awk 'NR == 2 { print $2 }') file system;"
    echo "$(rustc --version), $(mosquitto -h 2>/dev/null | head -n 1 || true)."
    echo
    table
    echo
    echo "Each figure is the median of its runs, with the smallest and largest."
    echo "A QoS 1 subscriber (mosquitto_sub -q 1) took every telemetry message"
    echo "off the broker during each drain and steady run, baselines included."
    echo "The drain ratios are taken run by run, each gateway run against the"
    echo "baseline runs just before it, in the same broker. The CPU ratio"
    echo "compares on-CPU time (schedstat, all threads) in one window, with"
    echo "mosquitto_pub -l fed the same payloads at the same rate beside the"
    echo "gateway. The idle and Modbus gateways ran side by side, during the"
    echo "steady runs; MB is 10^6 bytes, MiB 2^20."
    echo "Figures taken on a machine shared with other work are noisy; compare"
    echo "ratios, and runs made on the same machine."
    if [ -n "$notes" ]; then
        echo
        echo "$notes"
    fi
} >"$work/BENCHMARKS.md"
mv "$work/BENCHMARKS.md" BENCHMARKS.md
table
say "done in $((elapsed / 60)) min $((elapsed % 60)) s; table written to BENCHMARKS.md"
