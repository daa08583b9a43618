//! The one retry pacing every component uses: exponential backoff, doubling from a first pause
//! up to a cap, reset after a success, and a sleep that gives way to shutdown.

use std::time::Duration;

use crate::Shutdown;

/// Pauses between retries: `first`, then twice as long each time, never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first.min(max),
        }
    }

    /// The pause to take now; the one after it is twice as long (up to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }

    /// Sleeps the next pause; false if `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        let pause = self.next_pause();
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = shutdown.wait() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<u64> = (0..5).map(|_| b.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_gives_way_to_shutdown() {
        let shutdown = Shutdown::new();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(b.wait(&shutdown).await, "the pause passes");
        shutdown.trigger();
        assert!(!b.wait(&shutdown).await, "shutdown ends the pause");
    }
}
