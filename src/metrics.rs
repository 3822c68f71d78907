//! `metrics.listen`: the counters of `P/status` as a Prometheus text
//! endpoint, for a local scraper (node_exporter's textfile collector, a
//! Prometheus on the same network). Off unless configured.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::health::{Health, Snapshot};
use crate::store::{QueueStatus, Store};

type Labels = Vec<(String, String)>;

/// What `render` writes (it ends in `# EOF`); a scraper told
/// `text/plain; version=0.0.4` would parse it as the older format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listen` until the task is aborted.
pub async fn serve(listen: SocketAddr, store: Store, health: Arc<Health>) {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics endpoint: cannot listen on {listen}: {e}");
            return;
        }
    };
    tracing::info!("metrics on http://{listen}/metrics");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (store, health) = (store.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &store, &health).await {
                tracing::debug!("metrics request: {e}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, store: &Store, health: &Health) -> std::io::Result<()> {
    // A request line is all we need; bound what we read.
    let mut request = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut request))
        .await
        .map_err(|_| std::io::Error::other("no request within 5 s"))??;
    let line = String::from_utf8_lossy(&request[..n]);
    let (status, content_type, body) =
        if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
            let queue = store.status().await.unwrap_or_default();
            ("200 OK", OPENMETRICS, render(&health.snapshot(), &queue))
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "try /metrics\n".to_owned(),
            )
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn per_device(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (String, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (device, value) in values {
        family
            .get_or_create(&vec![("device".to_owned(), device)])
            .inc_by(value);
    }
    registry.register(name, help, family);
}

/// The Prometheus text exposition of the counters and the queue.
pub fn render(health: &Snapshot, queue: &QueueStatus) -> String {
    let mut r = Registry::with_prefix("fieldgate");
    counter(
        &mut r,
        "readings_in",
        "Readings handed to the store",
        health.readings_in,
    );
    counter(
        &mut r,
        "published",
        "Readings the broker acknowledged",
        health.published,
    );
    counter(
        &mut r,
        "answers_published",
        "Answers to commands the broker acknowledged",
        health.answers_published,
    );
    counter(
        &mut r,
        "reconnects",
        "MQTT connections after the first",
        health.reconnects,
    );
    gauge(
        &mut r,
        "commands_link_up",
        "1 while the downstream connection (commands, configurations) is subscribed",
        i64::from(health.downstream_up),
    );
    gauge(
        &mut r,
        "uptime_seconds",
        "Seconds since the gateway started",
        health.uptime_s as i64,
    );
    gauge(
        &mut r,
        "queue_rows",
        "Readings waiting in the store",
        queue.rows as i64,
    );
    gauge(
        &mut r,
        "queue_bytes",
        "Bytes of the readings waiting in the store",
        queue.bytes as i64,
    );
    gauge(
        &mut r,
        "queue_buffered",
        "Readings held in memory while the disk is full",
        queue.buffered as i64,
    );
    gauge(
        &mut r,
        "queue_written",
        "Readings written to the card since the start (those acknowledged before their commit are not)",
        queue.written as i64,
    );
    per_device(
        &mut r,
        "evicted",
        "Readings dropped by the store's limits",
        queue.evicted.clone().into_iter(),
    );
    per_device(
        &mut r,
        "dead_letters",
        "Readings the broker refused",
        queue.dead_letters.clone().into_iter(),
    );
    let devices = || health.devices.iter();
    per_device(
        &mut r,
        "device_readings",
        "Readings per device",
        devices().map(|(d, s)| (d.clone(), s.readings)),
    );
    per_device(
        &mut r,
        "device_bad_input",
        "Input that could not be read",
        devices().map(|(d, s)| (d.clone(), s.bad_input)),
    );
    per_device(
        &mut r,
        "device_errors",
        "Failed reads and lost links",
        devices().map(|(d, s)| (d.clone(), s.errors)),
    );
    let up = Family::<Labels, Gauge>::default();
    for (device, s) in devices() {
        up.get_or_create(&vec![("device".to_owned(), device.clone())])
            .set(i64::from(s.problem.is_none()));
    }
    r.register("device_up", "1 when the device has no current problem", up);
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &r);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn the_exposition_has_the_status_counters() {
        let health = Health::new();
        health.published.fetch_add(7, Relaxed);
        let pump = health.device("pump");
        pump.bad_input.fetch_add(2, Relaxed);
        pump.set_problem(Some("stale".into()));
        let queue = QueueStatus {
            rows: 3,
            evicted: [("fan".to_string(), 5)].into(),
            ..QueueStatus::default()
        };
        let text = render(&health.snapshot(), &queue);
        for line in [
            "fieldgate_published_total 7",
            "fieldgate_queue_rows 3",
            "fieldgate_evicted_total{device=\"fan\"} 5",
            "fieldgate_device_bad_input_total{device=\"pump\"} 2",
            "fieldgate_device_up{device=\"pump\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
