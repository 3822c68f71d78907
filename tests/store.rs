//! The store on a Pi's terms: crashes at random moments, a full disk, a
//! damaged file, limits, and the `queue` command next to a live gateway.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(120);

/// 20 rounds of `kill -9` at random moments of a steady flow, while the
/// broker comes and goes: every committed reading arrives at least once.
#[test]
fn twenty_random_kill_9s_with_a_flapping_broker_lose_no_committed_reading() {
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let devices = sim_device("r1", "2ms", 1_000_000, "")
        + &sim_device("r2", "3ms", 1_000_000, "    qos: 2\n");
    let mut rig = Rig::new("check-rounds", TELEMETRY, &devices);

    let mut committed_below = 1;
    let mut committed = std::collections::BTreeSet::new();
    for round in 0..20 {
        // The broker is up about two rounds in three.
        let want_broker = rng.u8(0..3) > 0;
        if want_broker != rig.broker.is_running() {
            if want_broker {
                rig.broker.restart()
            } else {
                rig.broker.stop()
            }
        }
        let mut gw = rig.gateway();
        std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
        gw.kill9();
        let next = next_seq(rig.dir.path());
        assert!(
            next >= committed_below,
            "round {round}: seq went back from {committed_below} to {next}"
        );
        committed_below = next;
        // Committed at some kill: must arrive in the end (or already has).
        committed.extend(stored_seqs(rig.dir.path()));
    }
    assert!(
        committed.len() > 1_000,
        "too little flow to prove anything: {} committed rows",
        committed.len()
    );

    // A last, clean run with the broker up delivers the rest.
    if !rig.broker.is_running() {
        rig.broker.restart();
    }
    let (dir, port) = (rig.dir.path(), rig.broker.port);
    let config = write_config(dir, port, "", "");
    let mut gw = Gateway::start(&config, dir);
    rig.expect_seqs(&gw, LONG, &committed);
    let messages = rig.sub.messages();
    let seqs = distinct_seqs(&messages);
    assert_ordered_per_device(&messages);
    let received = telemetry(&messages).len();
    let status = gw.sigterm_and_wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", gw.log());
    eprintln!(
        "{} readings committed at a kill over 20 kill -9 rounds: all arrived; {} duplicates ({:.1}%)",
        committed.len(),
        received - seqs.len(),
        100.0 * (received - seqs.len()) as f64 / seqs.len() as f64
    );
    assert_eq!(stored_rows(dir), 0);
}

/// A tmpfs of a few MiB, mounted over the state directory for one test.
struct TinyDisk {
    mount: PathBuf,
}

impl TinyDisk {
    fn mount(at: &Path, size: &str) -> TinyDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root: this test fills a real, small filesystem"
        );
        TinyDisk {
            mount: at.to_owned(),
        }
    }

    /// Fills all but `keep` bytes with a ballast file.
    fn fill(&self, keep: u64) -> PathBuf {
        let ballast = self.mount.join("ballast");
        let free = free_bytes(&self.mount);
        let f = std::fs::File::create(&ballast).unwrap();
        // tmpfs allocates on write, not on set_len: write it out.
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![0u8; 64 << 10];
        let mut left = free.saturating_sub(keep);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if w.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = w.flush();
        ballast
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

#[test]
fn a_full_disk_keeps_the_gateway_running_and_delivering_until_space_returns() {
    let per_device = 15_000;
    let devices = sim_device("f1", "1ms", per_device, "    priority: low\n")
        + &sim_device("f2", "1ms", per_device, "    priority: high\n");
    // No configured limit stops it first: the disk does.
    let store = "  max_bytes: 1GiB\n  memory_buffer: 1000000\n";
    let mut rig = Rig::with("check-full", TELEMETRY, store, "", &devices);
    rig.broker.stop();
    let disk = TinyDisk::mount(&rig.dir.path().join("state"), "8m");
    let ballast = disk.fill(1_500 << 10);
    let mut gw = rig.gateway();
    assert!(
        gw.wait_for_log("store commit failed", LONG),
        "the disk never filled\n{}",
        gw.log()
    );
    assert!(gw.is_running(), "{}", gw.log());

    // The broker comes back while the disk is still full: what is stored drains.
    rig.broker.restart();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= 1_000);
    assert!(gw.is_running());

    // Space returns: the readings held in memory are stored and sent.
    std::fs::remove_file(&ballast).unwrap();
    assert!(
        gw.wait_for_log("store writes succeed again", LONG),
        "{}",
        gw.log()
    );
    let evicted = || -> u64 {
        let (_, text) = queue(&rig.config, &["stats"]);
        text.lines()
            .skip_while(|l| !l.starts_with("evicted"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    let total = 2 * per_device as usize;
    let arrived = rig.sub.wait_until(LONG, |m| {
        distinct_seqs(m).len() as u64 + evicted() >= total as u64
    });
    let received = distinct_seqs(&rig.sub.messages()).len();
    let dropped = evicted();
    assert!(
        arrived,
        "{received} received + {dropped} evicted < {total}\n{}",
        gw.log()
    );
    assert_eq!(
        received as u64 + dropped,
        total as u64,
        "each reading is either delivered or counted as evicted"
    );
    // Room was made by evicting the low-priority device only.
    let by_device =
        telemetry(&rig.sub.messages())
            .into_iter()
            .fold(HashMap::new(), |mut m, (d, s, _)| {
                m.entry(d)
                    .or_insert_with(std::collections::HashSet::new)
                    .insert(s);
                m
            });
    assert_eq!(
        by_device["f2"].len(),
        per_device as usize,
        "no high-priority reading may be lost"
    );
    eprintln!(
        "full disk: {received} delivered, {dropped} low-priority readings evicted to make room"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    drop(disk);
}

#[test]
fn a_damaged_store_is_moved_aside_and_the_gateway_starts() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let status = Subscriber::connect(broker.port, "check-corrupt", "fieldgate/gw/status");
    let sub = Subscriber::connect(broker.port, "check-corrupt-t", "fieldgate/gw/telemetry/#");

    // A store with some pages to damage: readings queued with no broker.
    let config = write_config(
        dir.path(),
        free_port(),
        "",
        &sim_device("c", "1ms", 3_000, ""),
    );
    let mut gw = Gateway::start(&config, dir.path());
    wait_for_queued(&config, &gw, 3_000, LONG);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    let db = dir.path().join("state").join("fieldgate.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 64 << 10, "{} bytes", bytes.len());
    for b in &mut bytes[16_384..32_768] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();

    let config = write_config(dir.path(), broker.port, "", &sim_device("c", "5ms", 20, ""));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 20),
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains("ERROR") && log.contains("is damaged"), "{log}");
    let birth = status
        .messages()
        .iter()
        .map(|m| m.json())
        .find(|j| j["state"] == "online")
        .unwrap();
    let moved = birth["store"]["recovered_from"]
        .as_str()
        .expect("reported on P/status")
        .to_owned();
    assert!(moved.contains("fieldgate.db.corrupt-"), "{moved}");
    assert_eq!(
        std::fs::read(&moved).unwrap(),
        bytes,
        "the damaged file is kept as it was"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn queue_stats_peek_and_purge_work_next_to_a_live_gateway() {
    let dir = tempfile::tempdir().unwrap();
    // No broker: everything stays queued. The low-priority device is over
    // the row limit.
    let devices = sim_device("pump", "1ms", 200, "    priority: high\n")
        + &sim_device("fan", "1ms", 400, "    priority: low\n");
    let config =
        write_config_with_store(dir.path(), free_port(), "  max_rows: 300\n", "", &devices);
    let mut gw = Gateway::start(&config, dir.path());
    let deadline = Instant::now() + LONG;
    while !gw.log().contains("store limit reached") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // both devices finish their counts
    // 200 pump readings and both devices' `online` (high priority) stay;
    // 98 of the fan's readings fill the rest.
    assert_eq!(queued_rows(&config), 300);

    let (code, stats) = queue(&config, &["stats"]);
    assert_eq!(code, 0, "{stats}");
    let fan_line = stats
        .lines()
        .find(|l| l.starts_with("fan ") && l.contains("low"))
        .unwrap();
    assert!(fan_line.split_whitespace().nth(2) == Some("98"), "{stats}");
    let evicted_line = stats
        .lines()
        .skip_while(|l| !l.starts_with("evicted"))
        .nth(1)
        .unwrap();
    assert_eq!(
        evicted_line.split_whitespace().collect::<Vec<_>>(),
        ["fan", "302"],
        "{stats}"
    );

    let (code, peek) = queue(&config, &["peek", "-n", "4", "--device", "fan"]);
    assert_eq!(code, 0, "{peek}");
    let lines: Vec<&str> = peek.lines().collect();
    assert_eq!(lines.len(), 4, "{peek}");
    assert_eq!(lines[0], r#"high   qos1 availability of fan: "online""#);
    for line in &lines[1..] {
        assert!(line.starts_with("low    qos1 {\"seq\":"), "{line}");
        assert!(line.contains("\"device\":\"fan\""), "{line}");
    }

    // Without --yes nothing goes.
    let (code, dry) = queue(&config, &["purge", "--device", "fan"]);
    assert_eq!(code, 2, "{dry}");
    assert!(dry.contains("99 readings of fan would be deleted"), "{dry}");
    assert_eq!(queued_rows(&config), 300);
    let (code, done) = queue(&config, &["purge", "--device", "fan", "--yes"]);
    assert_eq!(code, 0, "{done}");
    assert!(done.contains("deleted 99"), "{done}");
    assert_eq!(queued_rows(&config), 201);
    let (code, _) = queue(&config, &["purge", "--older-than", "1h", "--yes"]);
    assert_eq!(code, 0);
    assert_eq!(queued_rows(&config), 201, "nothing is an hour old");

    // The gateway did not notice: it keeps running and stops cleanly.
    assert!(gw.is_running(), "{}", gw.log());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir.path()), 201);
}
