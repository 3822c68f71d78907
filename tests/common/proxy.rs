//! A userspace TCP proxy between the gateway and a broker that plays the
//! faults of a real network on command:
//!
//! - [`Fault::Pass`]: bytes go through;
//! - [`Fault::Blackhole`]: bytes vanish both ways and nothing is closed;
//!   a connection that saw a black hole stays dead (as after a lost NAT
//!   mapping), and connections opened meanwhile carry nothing either;
//! - [`Fault::Mute`]: what the client sends vanishes, what the server
//!   sends still arrives (a lost ack, a half-dead uplink);
//! - [`Fault::Reset`]: every connection is closed on both sides with a
//!   RST (SO_LINGER 0), and new ones are reset at once;
//! - [`Fault::Latency`]: every chunk is delayed, each way;
//! - [`Fault::Slow`]: a bandwidth cap in bytes per second, each way;
//! - flapping ([`Proxy::flap`]): up and down in turns, down being a reset.
//!
//! It runs on a small runtime of its own, for plain blocking `#[test]`s,
//! and stops (closing everything) when dropped.

use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the network does to the traffic, from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Blackhole,
    /// The client's bytes vanish; the server's go through.
    Mute,
    Reset,
    /// Added to every chunk, each way.
    Latency(Duration),
    /// Bytes per second, each way.
    Slow(u32),
}

/// The fault in force and the connections it applies to.
struct Shared {
    mode: watch::Sender<Fault>,
    conns: Mutex<Vec<Weak<Conn>>>,
}

/// What a fault needs to reach an open connection.
struct Conn {
    client: Arc<TcpStream>,
    server: Arc<TcpStream>,
    dead: Arc<AtomicBool>,
    kill: CancellationToken,
}

impl Conn {
    /// Applies a fault that acts on open connections: a reset closes both
    /// sides with RST, a blackhole swallows what comes next.
    fn suffer(&self, fault: Fault) {
        match fault {
            Fault::Reset => {
                let _ = self.client.set_zero_linger();
                let _ = self.server.set_zero_linger();
                self.kill.cancel();
            }
            Fault::Blackhole => self.dead.store(true, Relaxed),
            _ => {}
        }
    }
}

impl Shared {
    /// Sets the mode and applies it to the open connections at once.
    fn apply(&self, fault: Fault) {
        self.mode.send_replace(fault);
        let mut conns = super::lock(&self.conns);
        conns.retain(|c| c.strong_count() > 0);
        for conn in conns.iter().filter_map(Weak::upgrade) {
            conn.suffer(fault);
        }
    }
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    /// Bumped by every `set`, which stops a running flap.
    generation: Arc<AtomicU64>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
    handle: tokio::runtime::Handle,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 to 127.0.0.1:`target`, passing.
    pub fn start(target: u16) -> Proxy {
        let std_listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("local_addr").port();
        let (mode, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            mode,
            conns: Mutex::new(Vec::new()),
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let handle = rt.handle().clone();
        let (m, a, s) = (shared.clone(), accepted.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    loop {
                        let client = tokio::select! {
                            _ = s.cancelled() => break,
                            accepted = listener.accept() => match accepted {
                                Ok((client, _)) => client,
                                Err(_) => {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                        };
                        a.fetch_add(1, Relaxed);
                        tokio::spawn(connection(client, target, m.clone(), s.child_token()));
                    }
                });
                // Dropping the runtime here drops every connection task.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn proxy thread");
        Proxy {
            port,
            shared,
            accepted,
            generation: Arc::new(AtomicU64::new(0)),
            stop,
            thread: Some(thread),
            handle,
        }
    }

    /// `mqtt://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to open and new connections (and stops a flap).
    pub fn set(&self, fault: Fault) {
        self.generation.fetch_add(1, Relaxed);
        self.shared.apply(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.shared.mode.borrow()
    }

    /// Up for `up`, then reset for `down`, in turns (starting down) until
    /// the next [`Proxy::set`].
    pub fn flap(&self, up: Duration, down: Duration) {
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        let (shared, current) = (self.shared.clone(), self.generation.clone());
        self.handle.spawn(async move {
            let mut flips = 0u64;
            // Bounded: a forgotten flap ends after an hour's worth of turns.
            while current.load(Relaxed) == generation && flips < 2_000 {
                let (fault, lasts) = if flips.is_multiple_of(2) {
                    (Fault::Reset, down)
                } else {
                    (Fault::Pass, up)
                };
                shared.apply(fault);
                tokio::time::sleep(lasts).await;
                flips += 1;
            }
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Relaxed)
    }

    /// From now on, connections opened so far forward nothing; new ones work.
    pub fn blackhole_existing(&self) {
        let conns = super::lock(&self.shared.conns);
        for conn in conns.iter().filter_map(Weak::upgrade) {
            conn.dead.store(true, Relaxed);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One proxied connection: two pipes, registered for the faults to reach.
async fn connection(client: TcpStream, target: u16, shared: Arc<Shared>, kill: CancellationToken) {
    let _ = client.set_nodelay(true);
    let mode = shared.mode.subscribe();
    let fault = *mode.borrow();
    match fault {
        Fault::Reset => {
            let _ = client.set_zero_linger();
            return;
        }
        // Take and drop whatever the client sends; never answer.
        Fault::Blackhole => return discard(&client, &kill).await,
        _ => {}
    }
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn {
        client: Arc::new(client),
        server: Arc::new(server),
        dead: Arc::new(AtomicBool::new(false)),
        kill,
    });
    {
        let mut conns = super::lock(&shared.conns);
        conns.push(Arc::downgrade(&conn));
        // A fault that came while connecting applies to this one too.
        conn.suffer(*mode.borrow());
    }
    let up = tokio::spawn(pipe(
        true,
        conn.client.clone(),
        conn.server.clone(),
        mode.clone(),
        conn.dead.clone(),
        conn.kill.clone(),
    ));
    let down = tokio::spawn(pipe(
        false,
        conn.server.clone(),
        conn.client.clone(),
        mode,
        conn.dead.clone(),
        conn.kill.clone(),
    ));
    let _ = up.await;
    let _ = down.await;
    // The sockets close (FIN, or RST after SO_LINGER 0) when `conn` goes.
}

/// Reads and drops everything until the peer closes or the proxy stops.
async fn discard(from: &TcpStream, kill: &CancellationToken) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            _ = kill.cancelled() => return,
            n = read(from, &mut buf) => if n == 0 { return },
        }
    }
}

/// One direction: a reader that stamps each chunk with its release time,
/// and a writer that releases it (at the capped rate, if any). A bounded
/// queue between them keeps the backpressure of a real link. `upstream`:
/// from the client to the server.
async fn pipe(
    upstream: bool,
    from: Arc<TcpStream>,
    to: Arc<TcpStream>,
    mode: watch::Receiver<Fault>,
    dead: Arc<AtomicBool>,
    kill: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Option<(Instant, Vec<u8>)>>(4);
    let writer = {
        let (mode, dead, kill) = (mode.clone(), dead.clone(), kill.clone());
        tokio::spawn(async move {
            while let Some(item) = tokio::select! {
                _ = kill.cancelled() => None,
                item = rx.recv() => item,
            } {
                let Some((release, bytes)) = item else {
                    // The other side closed: pass the close on.
                    kill.cancel();
                    return;
                };
                tokio::select! {
                    _ = kill.cancelled() => return,
                    _ = tokio::time::sleep_until(release) => {}
                }
                let mut sent = 0;
                while sent < bytes.len() {
                    if dead.load(Relaxed) || (upstream && *mode.borrow() == Fault::Mute) {
                        break;
                    }
                    let step = match *mode.borrow() {
                        Fault::Slow(rate) => (rate as usize / 20).max(1),
                        _ => bytes.len(),
                    };
                    let end = (sent + step).min(bytes.len());
                    let ok = tokio::select! {
                        _ = kill.cancelled() => return,
                        ok = write_all(&to, &bytes[sent..end]) => ok,
                    };
                    if !ok {
                        kill.cancel();
                        return;
                    }
                    let fault = *mode.borrow();
                    if let Fault::Slow(rate) = fault {
                        let pause = Duration::from_secs_f64((end - sent) as f64 / rate as f64);
                        tokio::select! {
                            _ = kill.cancelled() => return,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                    sent = end;
                }
            }
        })
    };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let cap = match *mode.borrow() {
            Fault::Slow(rate) => (rate as usize / 10).clamp(1, buf.len()),
            _ => buf.len(),
        };
        let n = tokio::select! {
            _ = kill.cancelled() => break,
            n = read(&from, &mut buf[..cap]) => n,
        };
        if dead.load(Relaxed) {
            if n == 0 {
                // A dead link passes no close on either.
                break;
            }
            continue;
        }
        if n == 0 {
            let _ = tx.send(None).await;
            break;
        }
        let delay = match *mode.borrow() {
            Fault::Latency(d) => d,
            _ => Duration::ZERO,
        };
        let item = Some((Instant::now() + delay, buf[..n].to_vec()));
        tokio::select! {
            _ = kill.cancelled() => break,
            sent = tx.send(item) => if sent.is_err() { break },
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Bytes read, 0 at the end of the stream or on an error.
async fn read(from: &TcpStream, buf: &mut [u8]) -> usize {
    loop {
        if from.readable().await.is_err() {
            return 0;
        }
        match from.try_read(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return 0,
        }
    }
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if to.writable().await.is_err() {
            return false;
        }
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
    true
}
