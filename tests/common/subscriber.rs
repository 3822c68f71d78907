//! A persistent-session MQTT subscriber on its own small runtime, so plain
//! blocking `#[test]`s can collect every PUBLISH and poll what arrived.

use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

use super::{STARTUP_TIMEOUT, lock, poll};

/// One received message.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// When the subscriber received it.
    pub at: Instant,
}

impl Message {
    /// The payload parsed as JSON; panics (showing topic and payload) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {:?} is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    /// The payload as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A persistent-session MQTT subscriber collecting every PUBLISH in a background thread.
#[derive(Debug)]
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
    last_error: Arc<Mutex<Option<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connect to 127.0.0.1:`port` with client id `client_id` and clean_session(false),
    /// subscribe to `filter` at QoS 2 and collect every PUBLISH, reconnecting (after a short
    /// sleep) on any connection error until dropped. Returns once the first SUBACK arrived;
    /// panics after 10 s (or if the broker refuses the subscription).
    ///
    /// The subscription is (re)sent after a CONNACK only when the broker has no session for
    /// us or the previous SUBACK never arrived, so retained messages are not replayed by a
    /// needless re-subscribe after reconnecting to a persistent session.
    pub fn connect(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let last_error = Arc::new(Mutex::new(None));
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();

        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);

        let ctx = SubscriberTask {
            options,
            filter: filter.to_owned(),
            messages: Arc::clone(&messages),
            last_error: Arc::clone(&last_error),
            ready: ready_tx,
        };
        let thread = thread::Builder::new()
            .name(format!("mqtt-sub-{client_id}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build subscriber runtime");
                rt.block_on(ctx.run(shutdown_rx));
            })
            .expect("spawn subscriber thread");

        // Constructed before waiting so that a panic below still stops the thread (Drop).
        let subscriber = Subscriber {
            messages,
            last_error,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(())) => subscriber,
            Ok(Err(e)) => panic!("subscriber {client_id:?} on port {port}: {e}"),
            Err(_) => panic!(
                "subscriber {client_id:?} got no SUBACK for {filter:?} from port {port} within \
                 {STARTUP_TIMEOUT:?}; last connection error: {:?}",
                lock(&subscriber.last_error)
            ),
        }
    }

    /// Snapshot of all messages received so far, in arrival order (duplicates included).
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.messages).clone()
    }

    /// Number of messages received so far.
    pub fn count(&self) -> usize {
        lock(&self.messages).len()
    }

    /// Forget the messages received so far.
    pub fn clear(&self) {
        lock(&self.messages).clear();
    }

    /// The most recent connection error, if any (for failure messages).
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Wait until `pred(&messages)` is true, polling every 50 ms. Returns false on timeout.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Message]) -> bool) -> bool {
        poll(timeout, || pred(&lock(&self.messages)))
    }

    /// Wait until at least `n` messages arrived. Returns false on timeout.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |m| m.len() >= n)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Do not propagate a panic from the thread: we may already be unwinding.
            if thread.join().is_err() {
                eprintln!("subscriber thread panicked");
            }
        }
    }
}

struct SubscriberTask {
    options: MqttOptions,
    filter: String,
    messages: Arc<Mutex<Vec<Message>>>,
    last_error: Arc<Mutex<Option<String>>>,
    ready: mpsc::Sender<Result<(), String>>,
}

impl SubscriberTask {
    async fn run(self, mut shutdown: tokio::sync::oneshot::Receiver<()>) {
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), 100);
        let mut subscribed = false;
        let mut ready_sent = false;
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present || !subscribed {
                        subscribed = false;
                        // try_: the request channel (capacity 100) is otherwise empty.
                        if let Err(e) = client.try_subscribe(self.filter.as_str(), QoS::ExactlyOnce)
                        {
                            let e = format!("subscribe to {:?}: {e}", self.filter);
                            *lock(&self.last_error) = Some(e.clone());
                            if !ready_sent {
                                let _ = self.ready.send(Err(e));
                                ready_sent = true;
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let failed = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure));
                    if failed {
                        if !ready_sent {
                            let _ = self.ready.send(Err(format!(
                                "broker refused subscription to {:?}: {:?}",
                                self.filter, ack.return_codes
                            )));
                            ready_sent = true;
                        }
                    } else {
                        subscribed = true;
                        if !ready_sent {
                            let _ = self.ready.send(Ok(()));
                            ready_sent = true;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    lock(&self.messages).push(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        at: Instant::now(),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    *lock(&self.last_error) = Some(e.to_string());
                    // poll() has no backoff of its own: sleep, but stay responsive to shutdown.
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        // Best-effort clean DISCONNECT (the session stays on the broker: clean_session false).
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
    }
}
