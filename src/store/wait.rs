//! How the store thread waits for its next command: parked on its own,
//! with its own deadline. Waiting through the runtime's timer instead would
//! take a lock shared with the runtime thread and wake that thread each
//! time a deadline is set, once per round at every reading's pace.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Instant;

use tokio::sync::mpsc;

/// What a wait ended with.
pub(super) enum Next<T> {
    Item(T),
    /// Every sender is gone.
    Closed,
    /// The deadline passed first.
    TimedOut,
}

/// Waits on a channel from one thread, which it parks in between.
pub(super) struct Waiter {
    waker: Waker,
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // From the runtime thread, at the end of its round (`gather.rs`).
        if !super::gather::unpark_later(&self.0) {
            self.0.unpark();
        }
    }
}

impl Waiter {
    /// A waiter for the calling thread, the only one that may use it.
    pub(super) fn for_this_thread() -> Waiter {
        Waiter {
            waker: Waker::from(Arc::new(Unpark(std::thread::current()))),
        }
    }

    /// The next item of `rx`, or `TimedOut` once `deadline` has passed
    /// (never, without one). An item already queued comes first, even late.
    pub(super) fn recv<T>(&self, rx: &mut mpsc::Receiver<T>, deadline: Option<Instant>) -> Next<T> {
        let mut cx = Context::from_waker(&self.waker);
        loop {
            match rx.poll_recv(&mut cx) {
                Poll::Ready(Some(item)) => return Next::Item(item),
                Poll::Ready(None) => return Next::Closed,
                Poll::Pending => {}
            }
            // A wake-up may be spurious or early: the loop polls again.
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Next::TimedOut;
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn items_come_in_order_then_the_deadline_then_the_close() {
        let (tx, mut rx) = mpsc::channel(4);
        let waiter = Waiter::for_this_thread();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.blocking_send(1).map_err(drop)?;
            tx.blocking_send(2).map_err(drop)?;
            std::thread::sleep(Duration::from_millis(300));
            Ok::<_, ()>(())
        });
        // Nothing for 50 ms: a wait without a deadline parks until then.
        assert!(matches!(waiter.recv(&mut rx, None), Next::Item(1)));
        let past = Instant::now() - Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(waiter.recv(&mut rx, Some(past)), Next::Item(2)));
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(matches!(waiter.recv(&mut rx, Some(soon)), Next::TimedOut));
        assert!(Instant::now() >= soon);
        assert!(matches!(waiter.recv(&mut rx, None), Next::Closed));
        assert_eq!(sender.join().ok(), Some(Ok(())));
    }
}
