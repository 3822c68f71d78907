//! Wake-ups of the store thread from the runtime thread, gathered into one
//! per round of the runtime.
//!
//! Ten devices polled on the same tick append ten readings, one task after
//! the other. Unparked at the first, the store thread would take that one
//! alone, park, and be unparked again for the next: a futex call each way
//! and a reading forwarded to the uplink per wake-up, so as many wake-ups
//! of the runtime again. Here a wake-up asked for on the runtime thread is
//! owed until the tasks already ready have run; one task then unparks the
//! store thread, which finds the ten readings (and the acks) waiting.
//!
//! Only on a current-thread runtime, whose tasks all run on the thread that
//! asks; elsewhere, and once [`gather_wakes`] has ended, a wake-up unparks
//! at once.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;

struct Owed {
    threads: Mutex<Vec<Thread>>,
    due: Notify,
    ended: AtomicBool,
}

impl Owed {
    fn unpark_all(&self) {
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            thread.unpark();
        }
    }
}

thread_local! {
    static OWED: RefCell<Option<Arc<Owed>>> = const { RefCell::new(None) };
}

/// Unparks `thread` at the end of this round of the runtime when called on
/// a runtime thread that gathers; says false (nothing done) otherwise.
pub(super) fn unpark_later(thread: &Thread) -> bool {
    OWED.try_with(|owed| {
        let owed = owed.borrow();
        let Some(owed) = owed.as_ref().filter(|o| !o.ended.load(Ordering::Relaxed)) else {
            return false;
        };
        let mut threads = owed.threads.lock().unwrap_or_else(PoisonError::into_inner);
        if threads.iter().all(|t| t.id() != thread.id()) {
            threads.push(thread.clone());
        }
        if threads.len() == 1 {
            owed.due.notify_one();
        }
        true
    })
    .unwrap_or(false)
}

/// Gathers the wake-ups of the store thread asked for on this runtime's
/// thread, until dropped (aborted). Spawn it once, on a current-thread
/// runtime; on another runtime it returns at once.
pub async fn gather_wakes() {
    if Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
        return;
    }
    let owed = Arc::new(Owed {
        threads: Mutex::new(Vec::new()),
        due: Notify::new(),
        ended: AtomicBool::new(false),
    });
    OWED.with(|o| *o.borrow_mut() = Some(owed.clone()));
    let _end = End(owed.clone());
    loop {
        owed.due.notified().await;
        owed.unpark_all();
    }
}

/// When the task goes: what is owed is paid, and wake-ups unpark at once.
struct End(Arc<Owed>);

impl Drop for End {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Relaxed);
        let _ = OWED.try_with(|o| {
            let mut o = o.borrow_mut();
            if o.as_ref().is_some_and(|x| Arc::ptr_eq(x, &self.0)) {
                *o = None;
            }
        });
        self.0.unpark_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A thread that counts its wake-ups (parks until unparked, 5 s at most).
    fn sleeper(woken: Arc<AtomicUsize>, rounds: usize) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for _ in 0..rounds {
                std::thread::park_timeout(Duration::from_secs(5));
                woken.fetch_add(1, Ordering::SeqCst);
            }
        })
    }

    #[test]
    fn wake_ups_of_one_round_come_as_one_and_none_is_lost_at_the_end() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let woken = Arc::new(AtomicUsize::new(0));
        let thread = sleeper(woken.clone(), 2);
        let target = thread.thread().clone();
        runtime.block_on(async {
            let gather = tokio::spawn(gather_wakes());
            tokio::task::yield_now().await;
            // Ten asks in one round: owed, not yet paid.
            for _ in 0..10 {
                assert!(unpark_later(&target));
            }
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(woken.load(Ordering::SeqCst), 0);
            tokio::task::yield_now().await;
            let t0 = std::time::Instant::now();
            while woken.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(4) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(woken.load(Ordering::SeqCst), 1);
            // Owed when the task goes: paid by its end.
            assert!(unpark_later(&target));
            gather.abort();
            let _ = gather.await;
            assert!(!unpark_later(&target), "no gathering after the end");
        });
        thread.join().unwrap();
        assert_eq!(woken.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn another_thread_or_runtime_unparks_at_once() {
        assert!(!unpark_later(&std::thread::current()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::spawn(gather_wakes()).await.unwrap();
            assert!(!unpark_later(&std::thread::current()));
        });
    }
}
