//! The broker-bound ceiling for the drain figures: a plain rumqttc client
//! that publishes the same telemetry messages as the gateway (the rows of a
//! store filled by `bench_fill`, turned into payloads by
//! `payload::telemetry` and loaded into memory before the clock starts),
//! with the gateway's window of 100 messages in flight and each row's QoS.
//! No store, no bookkeeping: the clock runs from CONNACK until the last
//! PUBACK (QoS 1) or the last message written to the socket (QoS 0).
//!
//! With `--lines FILE` it only writes the payloads to FILE, one a line,
//! for `mosquitto_pub -l`, the second baseline.
//!
//! ```sh
//! cargo run --release --example bench_baseline -- --port 1883 /tmp/state/fieldgate.db
//! cargo run --release --example bench_baseline -- --lines /tmp/payloads /tmp/state/fieldgate.db
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fieldgate::reading::{Priority, Qos};
use fieldgate::store::Outbox;
use fieldgate::uplink::payload::{self, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(Parser)]
struct Args {
    /// The store whose rows to publish (it is only read).
    db: PathBuf,
    #[arg(long, required_unless_present = "lines")]
    port: Option<u16>,
    /// Write the payloads to this file, one a line, and exit.
    #[arg(long)]
    lines: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The gateway id in the topics (the payloads are the gateway's own;
    /// the id differs so that a probe of the gateway never sees these).
    #[arg(long, default_value = "baseline")]
    gateway_id: String,
    /// Messages in flight at most (the gateway's `mqtt.max_inflight`).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topics = Topics::new("fieldgate", &args.gateway_id);
    let outbox = Outbox::open_read_only(&args.db)?;
    let mut messages = Vec::new();
    for priority in Priority::ALL {
        for row in outbox.fetch(priority, 0, i64::MAX as usize)? {
            let qos = match row.qos {
                Qos::AtMostOnce => QoS::AtMostOnce,
                Qos::AtLeastOnce => QoS::AtLeastOnce,
                Qos::ExactlyOnce => QoS::ExactlyOnce,
            };
            let body = payload::telemetry(&row).into_bytes();
            messages.push((topics.telemetry(&row.device), qos, body));
        }
    }
    drop(outbox);
    let total = messages.len();
    anyhow::ensure!(total > 0, "{} holds no rows", args.db.display());
    if let Some(path) = &args.lines {
        let mut text = Vec::new();
        for (_, _, body) in &messages {
            text.extend_from_slice(body);
            text.push(b'\n');
        }
        std::fs::write(path, text)?;
        println!("messages={total}");
        return Ok(());
    }
    let port = args.port.context("--port is needed to publish")?;

    let mut options = MqttOptions::new("bench-baseline", args.host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(args.inflight);
    let (client, mut eventloop) = AsyncClient::new(options, 1_000);
    let publisher = tokio::spawn(async move {
        for (topic, qos, body) in messages {
            client.publish(topic, qos, false, body).await?;
        }
        anyhow::Ok(client)
    });

    let mut start = None;
    let mut done = 0;
    while done < total {
        match eventloop.poll().await? {
            Event::Incoming(Packet::ConnAck(_)) => start = Some(Instant::now()),
            Event::Incoming(Packet::PubAck(_)) | Event::Incoming(Packet::PubComp(_)) => done += 1,
            Event::Outgoing(Outgoing::Publish(0)) => done += 1, // QoS 0 has no packet id
            _ => {}
        }
    }
    let seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    // A QoS 0 message written is not yet read by the broker: wait for the
    // ack of one more QoS 1 message, so that the broker is idle when the
    // next measurement starts.
    let client = publisher.await??;
    client
        .publish(topics.telemetry("sync"), QoS::AtLeastOnce, false, "{}")
        .await?;
    while !matches!(eventloop.poll().await?, Event::Incoming(Packet::PubAck(_))) {}
    client.disconnect().await?;
    while !matches!(
        eventloop.poll().await,
        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
    ) {}
    println!(
        "messages={total} seconds={seconds:.2} msgs_per_s={:.0}",
        total as f64 / seconds
    );
    Ok(())
}
