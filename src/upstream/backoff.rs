//! Exponential backoff with jitter for upstream retries.

use std::time::Duration;

use rand::Rng;

/// Delays between retries: `initial`, doubling up to `max`, each scaled by a
/// random factor in [0.8, 1.2) so that many watches failing together do not
/// retry in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next retry; a server's `Retry-After` is a floor.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let factor = rand::rng().random_range(0.8..1.2);
        let delay = self.next.mul_f64(factor).min(self.max);
        self.next = (self.next * 2).min(self.max);
        delay.max(retry_after.unwrap_or_default())
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(800), Duration::from_secs(30));
        let first = b.next_delay(None);
        assert!(first >= Duration::from_millis(640) && first < Duration::from_millis(960));
        let second = b.next_delay(None);
        assert!(second >= Duration::from_millis(1280) && second < Duration::from_millis(1920));
        for _ in 0..10 {
            assert!(b.next_delay(None) <= Duration::from_secs(30));
        }
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        b.reset();
        assert!(b.next_delay(None) < Duration::from_millis(960));
    }
}
