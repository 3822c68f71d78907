#!/usr/bin/env bash
# Benchmarks: builds release binaries, starts a private mosquitto on a free
# port, measures each figure RUNS times (3 by default) and prints one table
# (median, min, max), also written to BENCHMARKS.md with the date, the
# machine and the git commit.
#
#   scripts/bench.sh                          # 4 to 10 minutes on 2 cores
#   RUNS=5 BACKLOG=200000 scripts/bench.sh    # knobs: see the defaults below
#
# The figures, each measured on its own, one after the other:
#   ingest   readings/s committed into the store (examples/bench_ingest.rs)
#   drain    a backlog of BACKLOG rows (examples/bench_fill.rs) published at
#            QoS 1 and at QoS 0, against a plain rumqttc client sending the
#            same messages from memory (examples/bench_baseline.rs), run
#            alternately in the same broker; also the start-up time to the
#            first publish and the peak RSS (examples/bench_probe.rs)
#   steady   10 simulated devices every 10 ms (1,000 readings/s, two points
#            each): bytes written per reading, CPU time per reading, latency
#            from reading to subscriber; with the default store settings,
#            then with store.flush_interval at FAST_FLUSH (shorter runs)
#   idle     RSS with 10 devices at 1 reading/s each after IDLE_SECONDS; the
#            RUNS gateways run side by side during the steady runs
#   size     the stripped release binaries
# It exits non-zero only when it cannot run (a missing tool, a gateway that
# fails), never because a figure misses its goal.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
backlog=${BACKLOG:-1000000}
ingest_readings=${INGEST_READINGS:-500000}
steady_warmup=${STEADY_WARMUP:-5}
steady_seconds=${STEADY_SECONDS:-20}
idle_seconds=${IDLE_SECONDS:-60}
fast_flush=${FAST_FLUSH:-20ms}
began=$(date +%s)

say() { echo "bench: $*" >&2; }
die() {
    say "cannot run: $*"
    exit 1
}
for tool in cargo mosquitto python3 getconf strip; do
    command -v "$tool" >/dev/null || die "$tool is not installed (mosquitto: apt install mosquitto)"
done

say "building release binaries"
cargo build --release --locked --quiet --bins --examples || die "the build failed"
bin=$PWD/target/release/fieldgate
examples=$PWD/target/release/examples

work=$(mktemp -d)
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi
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

# gateway_config NAME ID POLL DEVICES [STORE]: a config in $work/NAME with
# its own state dir, DEVICES simulated devices of two points every POLL, and
# the given `store:` section.
gateway_config() {
    local dir=$work/$1
    mkdir -p "$dir"
    {
        echo "gateway: { id: $2, state_dir: $dir/state, status_interval: 1h }"
        # drain_rate 0: the drain figures measure the link, not the pacing.
        echo "mqtt: { url: \"mqtt://127.0.0.1:$port\", drain_rate: 0 }"
        echo "store: { ${5:-} }"
        echo "devices:"
        [ "$4" -eq 0 ] && echo "  []"
        for i in $(seq 0 $(($4 - 1))); do
            echo "  - name: dev$i"
            echo "    kind: simulated"
            echo "    poll: $3"
            echo "    points:"
            echo "      - { name: temperature, signal: sine, min: 55, max: 75 }"
            echo "      - { name: setpoint, signal: constant, value: 65 }"
        done
    } >"$dir/fieldgate.yaml"
    "$bin" check --config "$dir/fieldgate.yaml" >/dev/null || die "invalid generated config $dir/fieldgate.yaml"
    echo "$dir"
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
done

drain_config=$(gateway_config drain bench 1s 0)
for run in $(seq "$runs"); do
    for qos in 1 0; do
        say "drain QoS $qos, run $run/$runs: baseline"
        out=$(measure "$examples/bench_baseline" --port "$port" "$work/fill-q$qos/fieldgate.db")
        base=$(value "$out" msgs_per_s)
        record "baseline_q$qos" "$base"
        say "drain QoS $qos, run $run/$runs: gateway"
        rm -rf "$drain_config/state"
        cp -r "$work/fill-q$qos" "$drain_config/state"
        out=$(measure "$examples/bench_probe" drain --port "$port" --db "$drain_config/state/fieldgate.db" \
            -- "$bin" run --config "$drain_config/fieldgate.yaml")
        [ "$(value "$out" left)" -eq 0 ] || say "the store was not empty at the timeout: $out"
        rate=$(value "$out" msgs_per_s)
        record "drain_q$qos" "$rate"
        record "ratio_q$qos" "$(awk -v a="$rate" -v b="$base" 'BEGIN { print a / b }')"
        record "peak_rss_q$qos" "$(awk -v k="$(value "$out" peak_rss_kb)" 'BEGIN { print k / 1024 }')"
        record startup "$(value "$out" startup_ms)"
    done
done
rm -rf "$drain_config/state"

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

# steady PREFIX WARMUP SECONDS [STORE]: the steady runs of 10 devices
# every 10 ms, with the given `store:` section; figures named PREFIX*.
steady() {
    local config
    config=$(gateway_config "steady$1" bench 10ms 10 "${4:-}")
    for run in $(seq "$runs"); do
        say "steady 1,000 readings/s${4:+ with $4}, run $run/$runs (${2}s warm-up, ${3}s window)"
        rm -rf "$config/state"
        out=$(measure "$examples/bench_probe" steady --port "$port" --db "$config/state/fieldgate.db" \
            --warmup "$2" --seconds "$3" -- "$bin" run --config "$config/fieldgate.yaml")
        for figure in readings_per_s bytes_per_reading cpu_us_per_reading latency_p50_ms latency_p99_ms; do
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

# size FIGURE STRIP BINARY...: the first BINARY that exists, in MB once
# stripped (release binaries are stripped already).
size() {
    local figure=$1 strip=$2 binary copy=$work/size.bin
    shift 2
    for binary in "$@"; do
        [ -f "$binary" ] || continue
        if ! { command -v "$strip" >/dev/null && "$strip" -o "$copy" "$binary" 2>/dev/null; }; then
            cp "$binary" "$copy"
        fi
        record "$figure" "$(awk -v b="$(stat -c %s "$copy")" 'BEGIN { print b / 1e6 }')"
        return 0
    done
}
size size_x86_64 strip "$bin"
# The arm64 build of scripts/cross-check.sh, or of a plain cargo or cross.
size size_arm64 aarch64-linux-gnu-strip \
    "${FIELDGATE_CROSS_TARGET_DIR:-target/cross}/aarch64-unknown-linux-gnu/release/fieldgate" \
    target/aarch64-unknown-linux-gnu/release/fieldgate

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
    row baseline_q1 "baseline publisher, QoS 1 (plain rumqttc, from memory)" "msgs/s" 0 ""
    row drain_q1 "drain of $backlog rows, QoS 1" "msgs/s" 0 ""
    row ratio_q1 "drain QoS 1 / baseline" "ratio" 2 ">= 0.8"
    row baseline_q0 "baseline publisher, QoS 0" "msgs/s" 0 ""
    row drain_q0 "drain of $backlog rows, QoS 0" "msgs/s" 0 ""
    row ratio_q0 "drain QoS 0 / baseline" "ratio" 2 ""
    row peak_rss_q1 "peak RSS draining $backlog rows, QoS 1" "MiB" 1 "<= 30"
    row peak_rss_q0 "peak RSS draining $backlog rows, QoS 0" "MiB" 1 "<= 30"
    row idle_rss "idle RSS, 10 devices at 1/s, after ${idle_seconds}s" "MiB" 1 "<= 15"
    row startup "start-up to first publish, $backlog-row backlog (QoS 1 and 0 runs)" "ms" 1 "<= 300"
    row readings_per_s "steady rate (10 devices every 10 ms)" "readings/s" 0 ""
    row bytes_per_reading "bytes written per reading at that rate, deletes included" "bytes" 0 "<= 256"
    row cpu_us_per_reading "CPU time per reading at that rate (utime+stime)" "µs" 1 "<= 20"
    row latency_p50_ms "latency reading to subscriber at that rate, p50" "ms" 1 ""
    row latency_p99_ms "latency reading to subscriber at that rate, p99" "ms" 1 "<= 50"
    row fast_latency_p50_ms "… with store.flush_interval: $fast_flush: latency p50" "ms" 1 ""
    row fast_latency_p99_ms "… with store.flush_interval: $fast_flush: latency p99" "ms" 1 "<= 50"
    row fast_bytes_per_reading "… with store.flush_interval: $fast_flush: bytes written per reading" "bytes" 0 "<= 256"
    row fast_cpu_us_per_reading "… with store.flush_interval: $fast_flush: CPU time per reading" "µs" 1 "<= 20"
    row size_x86_64 "stripped release binary, x86_64" "MB" 2 ""
    row size_arm64 "stripped release binary, arm64" "MB" 2 ""
}

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
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
    echo "The drain ratio is taken run by run, each gateway run against the"
    echo "baseline run just before it, in the same broker. The broker has no"
    echo "subscriber while draining. The idle gateways ran side by side, during"
    echo "the steady runs."
    echo "Figures taken on a machine shared with other work are noisy; compare"
    echo "ratios, and runs made on the same machine."
} >BENCHMARKS.md
table
say "done in $((elapsed / 60)) min $((elapsed % 60)) s; table written to BENCHMARKS.md"
