//! Waiting for a condition nothing reports: the one polling loop of the tests.
//!
//! A test that can wait for an event waits for that (a host event through
//! [`crate::node::until`], a `Connection::closed()` future, a channel the test holds).
//! What is left has no event to wait for: a counter inside a node, a port the kernel
//! frees, a routing table filling, a metric or a log of another process. Those are polled
//! here, always against a deadline, and a timeout names what was awaited.
//!
//! The check runs at once, then after 5 ms, 10 ms, then every [`MAX_INTERVAL`]: quick when
//! the condition is nearly there, not busy on a long wait (a check may be a request to
//! another process). The sleeps are tokio's, so a test on paused time waits in virtual
//! time.
//!
//! What it is not: a way to let time pass. A test that needs time to pass (a grace period,
//! an idle timeout) says so with its own sleep on paused time, or waits for the effect.

use std::time::Duration;

/// The first pause between two checks.
pub const FIRST_INTERVAL: Duration = Duration::from_millis(5);

/// The longest pause between two checks.
pub const MAX_INTERVAL: Duration = Duration::from_millis(20);

/// Waits until `cond` holds; panics naming `what` if it does not within `deadline`.
pub async fn until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    until_async(what, deadline, async || cond()).await
}

/// [`until`] with a condition that is itself asynchronous (an HTTP request, a question to
/// another process).
pub async fn until_async(what: &str, deadline: Duration, cond: impl AsyncFnMut() -> bool) {
    if !within(deadline, cond).await {
        panic!("{what}: not within {deadline:?}");
    }
}

/// Whether `cond` came to hold within `deadline`; for a caller that reports the failure
/// itself (with what it saw last) or for whom a timeout is no failure.
pub async fn within(deadline: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    tokio::time::timeout(deadline, async {
        let mut interval = FIRST_INTERVAL;
        while !cond().await {
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(MAX_INTERVAL);
        }
    })
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_condition_is_checked_until_it_holds() {
        let mut checks = 0;
        assert!(
            within(Duration::from_secs(10), async || {
                checks += 1;
                checks == 4
            })
            .await
        );
        assert_eq!(checks, 4);
    }

    #[tokio::test]
    async fn a_condition_that_never_holds_ends_at_the_deadline() {
        assert!(!within(Duration::from_millis(30), async || false).await);
    }

    #[tokio::test]
    #[should_panic(expected = "the thing: not within")]
    async fn until_names_what_it_waited_for() {
        until("the thing", Duration::from_millis(10), || false).await;
    }
}
