//! Bounded retries with exponential backoff and jitter, for transient errors only.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use runner_updater_ports::{Clock, PortError};

/// Bounded retries with exponential backoff and jitter, for transient errors only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub retries: usize,
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Runs `operation`, retrying transient errors with exponential backoff and jitter seeded
    /// by `seed` (deterministic in the simulation), sleeping through `clock`; `on_retry` hears
    /// of each retry before its delay.
    ///
    /// # Errors
    /// The operation's error: a permanent one at once, a transient one once the retries are
    /// spent.
    pub async fn run<T, F, Fut>(
        &self,
        seed: u64,
        clock: &dyn Clock,
        on_retry: impl Fn(&PortError, Duration),
        mut operation: F,
    ) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.retries)
            .with_jitter_seed(seed)
            .with_jitter()
            .build();
        loop {
            match operation().await {
                Err(error) if error.is_transient() => match delays.next() {
                    Some(delay) => {
                        on_retry(&error, delay);
                        clock.sleep(delay).await;
                    }
                    None => return Err(error),
                },
                other => return other,
            }
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}
