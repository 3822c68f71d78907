//! The commands this process is carrying out, with everyone waiting for
//! their answer: a duplicate of a running command (a broker's redelivery, a
//! cloud's resend) is answered when the original ends, with its answer,
//! instead of being run again or answered before the write is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::outcome::Reply;

/// Replies kept per running id; a duplicate past it is acknowledged and
/// gets no answer of its own (the others carry the same answer).
const REPLIES_PER_ID: usize = 4;

#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<String, Vec<Reply>>>>);

impl Running {
    /// Starts tracking `id`; its first reply is `reply`.
    pub fn start(&self, id: &str, reply: Reply) {
        self.lock().insert(id.to_owned(), vec![reply]);
    }

    /// If `id` is running, adds `reply` to those waiting for its answer
    /// (once per distinct reply) and returns true.
    pub fn join(&self, id: &str, reply: Reply) -> bool {
        let mut map = self.lock();
        let Some(replies) = map.get_mut(id) else {
            return false;
        };
        if replies.len() < REPLIES_PER_ID && !replies.contains(&reply) {
            replies.push(reply);
        }
        true
    }

    /// Stops tracking `id`; returns everyone waiting for its answer.
    pub fn finish(&self, id: &str) -> Vec<Reply> {
        self.lock().remove(id).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Reply>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(topic: &str) -> Reply {
        Reply {
            topic: topic.into(),
            correlation: None,
        }
    }

    #[test]
    fn duplicates_wait_for_the_original_and_are_answered_with_it() {
        let running = Running::default();
        assert!(!running.join("c-1", reply("p/responses")));
        running.start("c-1", reply("p/responses"));
        assert!(running.join("c-1", reply("p/responses")));
        assert!(running.join("c-1", reply("cloud/answers")));
        for _ in 0..10 {
            assert!(running.join("c-1", reply("elsewhere")));
        }
        let waiting = running.finish("c-1");
        assert_eq!(
            waiting,
            vec![
                reply("p/responses"),
                reply("cloud/answers"),
                reply("elsewhere")
            ]
        );
        assert!(running.finish("c-1").is_empty());
        assert!(!running.join("c-1", reply("p/responses")));
    }
}
