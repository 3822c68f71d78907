//! Runs one gateway under measurement and watches it from outside: the
//! subscriber and latency probe of `scripts/bench.sh`. It subscribes to the
//! gateway's telemetry on the broker, starts the command given after `--`
//! (a `fieldgate run`), reads the process's `/proc/<pid>` files, stops it
//! with SIGTERM and prints one line of `key=value` figures.
//!
//! - `drain`: the store at `--db` holds a backlog. Prints the time from
//!   process start to the first telemetry message at the subscriber
//!   (`startup_ms`; the subscriber then leaves, so that it does not slow
//!   the broker), the rows drained per second from that message until the
//!   store is empty (`msgs_per_s`), and the peak RSS (`VmHWM`).
//! - `steady`: the gateway reads its devices at a steady rate. After
//!   `--warmup` seconds, over `--seconds`: readings taken (the store's
//!   `next_seq`), bytes written to disk per reading (`write_bytes`, deletes
//!   after ack included), on-CPU time per reading (field 1 of
//!   `/proc/<pid>/task/*/schedstat`, summed over the threads), write
//!   calls per reading (`syscw`: sockets, files, wake-ups alike), and the
//!   latency from each reading's `ts` to its arrival at the subscriber,
//!   p50 and p99. With `--baseline-lines`, a `mosquitto_pub -l -q 1` runs
//!   beside it in the same window, fed those payloads at `--baseline-rate`
//!   messages per second (in ticks of 10 ms), and its on-CPU time per
//!   message is printed too.
//! - `idle`: the RSS (`VmRSS`) after `--seconds`, its anonymous and
//!   file-backed parts (`smaps_rollup`), and the peak (`VmHWM`).
//!
//! ```sh
//! bench_probe steady --port 1883 --db state/fieldgate.db -- fieldgate run --config steady.yaml
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fieldgate::store::Outbox;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// The telemetry of the gateway under test.
    #[arg(long, global = true, default_value = "fieldgate/bench/telemetry/#")]
    topic: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Drain {
        #[arg(long)]
        port: u16,
        /// The gateway's store.
        #[arg(long)]
        db: PathBuf,
        /// Give up waiting for the store to empty after this many seconds
        /// (the rate is then taken over the rows drained so far).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    Steady {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Payloads, one a line, for a paced `mosquitto_pub -l` beside the
        /// gateway.
        #[arg(long)]
        baseline_lines: Option<PathBuf>,
        /// Its messages per second.
        #[arg(long, default_value_t = 1_000)]
        baseline_rate: u32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    Idle {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = args.topic.as_str();
    match args.mode {
        Mode::Drain {
            port,
            db,
            timeout,
            command,
        } => drain((port, topic), &db, Duration::from_secs(timeout), &command).await,
        Mode::Steady {
            port,
            db,
            warmup,
            seconds,
            baseline_lines,
            baseline_rate,
            command,
        } => {
            let (warmup, window) = (Duration::from_secs(warmup), Duration::from_secs(seconds));
            let baseline = match baseline_lines {
                Some(path) => Some(Baseline::start(port, &path, baseline_rate)?),
                None => None,
            };
            steady((port, topic), &db, warmup, window, baseline, &command).await
        }
        Mode::Idle { seconds, command } => {
            let mut gateway = spawn(&command)?;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let pid = pid(&gateway)?;
            let rss = proc_field(pid, "status", "VmRSS:")?;
            let peak = proc_field(pid, "status", "VmHWM:")?;
            let anon = proc_field(pid, "smaps_rollup", "Anonymous:")?;
            stop(&mut gateway).await?;
            println!(
                "idle_rss_kb={rss} anon_kb={anon} file_kb={} peak_rss_kb={peak}",
                rss.saturating_sub(anon)
            );
            Ok(())
        }
    }
}

async fn drain(
    broker: (u16, &str),
    db: &Path,
    timeout: Duration,
    command: &[String],
) -> anyhow::Result<()> {
    let backlog = Outbox::open_read_only(db)?.totals()?.rows;
    let (mut messages, subscriber) = subscribe(broker).await?;
    let start = Instant::now();
    let mut gateway = spawn(command)?;
    let first = tokio::time::timeout(timeout, messages.recv())
        .await
        .context("no telemetry arrived")?
        .context("the subscriber stopped")?;
    let startup = first.0.duration_since(start);
    subscriber.abort();
    let outbox = Outbox::open_read_only(db)?;
    let mut left = outbox.totals()?.rows;
    while left > 0 && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = outbox.totals()?.rows;
    }
    let seconds = first.0.elapsed().as_secs_f64();
    let peak = proc_field(pid(&gateway)?, "status", "VmHWM:")?;
    stop(&mut gateway).await?;
    println!(
        "startup_ms={:.1} rows={backlog} left={left} seconds={seconds:.2} msgs_per_s={:.0} peak_rss_kb={peak}",
        startup.as_secs_f64() * 1e3,
        (backlog - left) as f64 / seconds,
    );
    Ok(())
}

async fn steady(
    broker: (u16, &str),
    db: &Path,
    warmup: Duration,
    window: Duration,
    mut baseline: Option<Baseline>,
    command: &[String],
) -> anyhow::Result<()> {
    let (mut messages, subscriber) = subscribe(broker).await?;
    let mut gateway = spawn(command)?;
    let pid = pid(&gateway)?;
    tokio::time::sleep(warmup).await;
    let sample = || -> anyhow::Result<(i64, u64, u64, u64)> {
        let seq = Outbox::open_read_only(db)?.next_seq();
        let written = proc_field(pid, "io", "write_bytes:")?;
        let calls = proc_field(pid, "io", "syscw:")?;
        Ok((seq, written, on_cpu_ns(pid)?, calls))
    };
    while messages.try_recv().is_ok() {} // arrived during the warm-up
    let before = sample()?;
    let baseline_before = baseline.as_ref().map(Baseline::sample).transpose()?;
    let end = Instant::now() + window;
    let mut latencies_us = Vec::new();
    while let Ok(Some((at, wall, body))) =
        tokio::time::timeout_at(end.into(), messages.recv()).await
    {
        if at < end {
            latencies_us.extend(latency_us(wall, &body));
        }
    }
    let after = sample()?;
    let baseline_after = baseline.as_ref().map(Baseline::sample).transpose()?;
    subscriber.abort();
    stop(&mut gateway).await?;
    let baseline_figures = match (&mut baseline, baseline_before, baseline_after) {
        (Some(baseline), Some(b), Some(a)) => {
            baseline.stop().await?;
            let messages = (a.0 - b.0).max(1) as f64;
            let per_message = (a.1 - b.1) as f64 / 1e3 / messages;
            let per_reading =
                (after.2 - before.2) as f64 / 1e3 / (after.0 - before.0).max(1) as f64;
            format!(
                " baseline_msgs_per_s={:.0} baseline_cpu_us_per_msg={per_message:.2} cpu_ratio={:.3} baseline_write_calls_per_msg={:.2}",
                (a.0 - b.0) as f64 / window.as_secs_f64(),
                per_reading / per_message,
                (a.2 - b.2) as f64 / messages,
            )
        }
        _ => String::new(),
    };

    let readings = (after.0 - before.0).max(1) as f64;
    latencies_us.sort_unstable();
    let pick = |q: f64| {
        let rank = ((q * latencies_us.len() as f64).ceil() as usize).max(1);
        latencies_us
            .get(rank - 1)
            .map_or(f64::NAN, |&us| us as f64 / 1e3)
    };
    println!(
        "readings_per_s={:.0} bytes_per_reading={:.0} cpu_us_per_reading={:.2} write_calls_per_reading={:.2} latency_p50_ms={:.1} latency_p99_ms={:.1} received={}{baseline_figures}",
        readings / window.as_secs_f64(),
        (after.1 - before.1) as f64 / readings,
        (after.2 - before.2) as f64 / 1e3 / readings,
        (after.3 - before.3) as f64 / readings,
        pick(0.50),
        pick(0.99),
        latencies_us.len(),
    );
    Ok(())
}

/// A message as it arrived: when (monotonic and wall clock), and its payload.
type Arrival = (Instant, SystemTime, bytes::Bytes);

/// Subscribes to `topic` on the broker at `port`; returns once the broker
/// has confirmed the subscription.
async fn subscribe(
    (port, topic): (u16, &str),
) -> anyhow::Result<(
    mpsc::UnboundedReceiver<Arrival>,
    tokio::task::JoinHandle<()>,
)> {
    let id = format!("bench-probe-{}", std::process::id());
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("subscriber on port {port}: {e}"),
            Err(_) => bail!("no SUBACK from the broker on port {port}"),
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let _client = client; // the event loop ends when every client is gone
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event
                && tx
                    .send((Instant::now(), SystemTime::now(), p.payload))
                    .is_err()
            {
                break;
            }
        }
    });
    Ok((rx, task))
}

/// From the reading's `ts` (milliseconds) to `arrived`, for each reading
/// of a message (one, or a batch).
fn latency_us(arrived: SystemTime, body: &[u8]) -> Vec<i64> {
    let arrived_us = arrived
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let readings = match json {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    readings
        .iter()
        .filter_map(|r| r["ts"].as_str()?.parse::<jiff::Timestamp>().ok())
        .map(|ts| arrived_us - ts.as_microsecond())
        .collect()
}

fn spawn(command: &[String]) -> anyhow::Result<Child> {
    let (program, args) = command.split_first().context("no command")?;
    Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {program}"))
}

fn pid(child: &Child) -> anyhow::Result<u32> {
    child.id().context("the gateway exited early")
}

/// SIGTERM, then a clean exit within 10 s.
async fn stop(child: &mut Child) -> anyhow::Result<()> {
    run_text("kill", &["-TERM", &pid(child)?.to_string()])?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .context("the gateway did not stop within 10 s of SIGTERM")??;
    anyhow::ensure!(status.success(), "the gateway exited with {status}");
    Ok(())
}

/// The number after `key` in `/proc/<pid>/<file>` (`VmHWM:` in kB, …).
fn proc_field(pid: u32, file: &str, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/{file}"))
}

/// Nanoseconds on a CPU, summed over the threads the process has now
/// (field 1 of each `/proc/<pid>/task/<tid>/schedstat`). Finer than
/// utime + stime, which count whole clock ticks.
fn on_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        let ns: u64 = text
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse()?;
        total += ns;
    }
    Ok(total)
}

/// A `mosquitto_pub -l -q 1` fed the same payloads at a steady rate: the
/// CPU a plain C client spends per message, in the same run.
struct Baseline {
    child: Child,
    pid: u32,
    /// Lines written to its stdin so far.
    sent: Arc<AtomicU64>,
    feeder: tokio::task::JoinHandle<()>,
}

impl Baseline {
    fn start(port: u16, lines: &Path, rate: u32) -> anyhow::Result<Baseline> {
        let text =
            std::fs::read(lines).with_context(|| format!("cannot read {}", lines.display()))?;
        let lines: Vec<Vec<u8>> = text
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        anyhow::ensure!(!lines.is_empty(), "no payloads");
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
            .args(["-i", &format!("bench-mosquitto-pub-{}", std::process::id())])
            .args(["-t", "fieldgate/mosquitto_pub/telemetry/dev0"])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start mosquitto_pub")?;
        let pid = child.id().context("mosquitto_pub exited at once")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let per_tick = (rate as usize / 100).max(1);
        let feeder = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut next = lines.iter().cycle();
            loop {
                tick.tick().await;
                for line in next.by_ref().take(per_tick) {
                    if stdin.write_all(line).await.is_err() {
                        return;
                    }
                }
                counter.fetch_add(per_tick as u64, Ordering::Relaxed);
            }
        });
        Ok(Baseline {
            child,
            pid,
            sent,
            feeder,
        })
    }

    /// Messages handed to it, its on-CPU nanoseconds and its write calls.
    fn sample(&self) -> anyhow::Result<(u64, u64, u64)> {
        Ok((
            self.sent.load(Ordering::Relaxed),
            on_cpu_ns(self.pid)?,
            proc_field(self.pid, "io", "syscw:")?,
        ))
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.feeder.abort();
        self.child.kill().await?;
        Ok(())
    }
}

fn run_text(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program).args(args).output()?;
    anyhow::ensure!(out.status.success(), "{program} {args:?} failed");
    Ok(String::from_utf8(out.stdout)?)
}
