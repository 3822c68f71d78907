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
//!   after ack included), CPU time per reading (`utime + stime`), and the
//!   latency from each reading's `ts` to its arrival at the subscriber,
//!   p50 and p99.
//! - `idle`: the RSS (`VmRSS`) after `--seconds`.
//!
//! ```sh
//! bench_probe steady --port 1883 --db state/fieldgate.db -- fieldgate run --config steady.yaml
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fieldgate::store::Outbox;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
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
            command,
        } => {
            let (warmup, window) = (Duration::from_secs(warmup), Duration::from_secs(seconds));
            steady((port, topic), &db, warmup, window, &command).await
        }
        Mode::Idle { seconds, command } => {
            let mut gateway = spawn(&command)?;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let rss = proc_field(pid(&gateway)?, "status", "VmRSS:")?;
            stop(&mut gateway).await?;
            println!("idle_rss_kb={rss}");
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
    command: &[String],
) -> anyhow::Result<()> {
    let tick: f64 = run_text("getconf", &["CLK_TCK"])?.trim().parse()?;
    let (mut messages, subscriber) = subscribe(broker).await?;
    let mut gateway = spawn(command)?;
    let pid = pid(&gateway)?;
    tokio::time::sleep(warmup).await;
    let sample = || -> anyhow::Result<(i64, u64, u64)> {
        let seq = Outbox::open_read_only(db)?.next_seq();
        let written = proc_field(pid, "io", "write_bytes:")?;
        Ok((seq, written, cpu_ticks(pid)?))
    };
    while messages.try_recv().is_ok() {} // arrived during the warm-up
    let before = sample()?;
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
    subscriber.abort();
    stop(&mut gateway).await?;

    let readings = (after.0 - before.0).max(1) as f64;
    latencies_us.sort_unstable();
    let pick = |q: f64| {
        let rank = ((q * latencies_us.len() as f64).ceil() as usize).max(1);
        latencies_us
            .get(rank - 1)
            .map_or(f64::NAN, |&us| us as f64 / 1e3)
    };
    println!(
        "readings_per_s={:.0} bytes_per_reading={:.0} cpu_us_per_reading={:.2} latency_p50_ms={:.1} latency_p99_ms={:.1} received={}",
        readings / window.as_secs_f64(),
        (after.1 - before.1) as f64 / readings,
        (after.2 - before.2) as f64 / tick * 1e6 / readings,
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

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses: state is the
    // first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("unreadable /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc stat")?.parse()?)
    };
    Ok(field(11)? + field(12)?)
}

fn run_text(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program).args(args).output()?;
    anyhow::ensure!(out.status.success(), "{program} {args:?} failed");
    Ok(String::from_utf8(out.stdout)?)
}
