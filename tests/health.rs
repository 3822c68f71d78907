//! What an operator sees: the counters on `P/status` and the same numbers
//! on the Prometheus endpoint.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(60);

fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn status_counters_and_the_metrics_endpoint_agree() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-health", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let config = write_config(
        dir.path(),
        broker.port,
        "",
        &sim_device("meter", "5ms", 40, ""),
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("metrics:\n  listen: 127.0.0.1:{metrics_port}\n"));
    std::fs::write(&config, text).unwrap();
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 40),
        "{}",
        gw.log()
    );

    let counted = |m: &[Message]| {
        m.iter()
            .any(|m| m.topic.ends_with("/status") && m.json()["counters"]["published"] == 40)
    };
    assert!(sub.wait_until(LONG, counted), "{}", gw.log());
    let status = latest_status(&sub.messages()).unwrap();
    assert_eq!(status["counters"]["readings_in"], 40);
    assert_eq!(status["devices"]["meter"]["readings"], 40);
    assert_eq!(status["devices"]["meter"]["bad_input"], 0);
    assert_eq!(status["queue"]["rows"], 0);
    assert!(status["uptime_s"].is_u64());

    // The downstream connection shows on both once it has subscribed.
    let commands_up =
        |m: &[Message]| latest_status(m).is_some_and(|s| s["commands"]["link"] == "up");
    assert!(sub.wait_until(LONG, commands_up), "{}", gw.log());
    let response = scrape(metrics_port);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains(
            "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{response}"
    );
    assert!(response.ends_with("# EOF\n"), "{response}");
    assert_eq!(
        metric(&response, "fieldgate_published_total"),
        Some(40.0),
        "{response}"
    );
    assert_eq!(metric(&response, "fieldgate_readings_in_total"), Some(40.0));
    assert_eq!(
        metric(
            &response,
            "fieldgate_device_readings_total{device=\"meter\"}"
        ),
        Some(40.0)
    );
    assert_eq!(metric(&response, "fieldgate_queue_rows"), Some(0.0));
    assert_eq!(metric(&response, "fieldgate_commands_link_up"), Some(1.0));
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}
