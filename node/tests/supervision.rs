//! Supervised tasks: one that ends or panics before shutdown is reported (the binary then
//! stops non-zero and readiness fails); one that ends because of shutdown is not.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pylon_node::metrics::{Metrics, TaskLabels};
use pylon_node::node::Node;

const T: Duration = Duration::from_secs(10);

async fn node() -> (Node, std::sync::Arc<Metrics>) {
    let metrics = Metrics::unregistered();
    let node = Node::start_volatile(Default::default(), metrics.clone())
        .await
        .unwrap();
    (node, metrics)
}

#[tokio::test]
async fn a_core_task_that_ends_or_panics_is_reported() {
    let (node, metrics) = node().await;
    let mut failure = node.host.watch_failure();
    assert!(failure.borrow().is_none());
    node.host.spawn_supervised("test_task", async {});
    let got = tokio::time::timeout(T, failure.wait_for(|f| f.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(got.as_deref(), Some("test_task ended"));
    let ended = TaskLabels {
        task: "test_task",
        how: "ended",
    };
    assert_eq!(metrics.task_failures.get_or_create(&ended).get(), 1);

    node.host.spawn_supervised("test_panic", async {
        panic!("boom (expected by the test)")
    });
    let panicked = TaskLabels {
        task: "test_panic",
        how: "panicked",
    };
    tokio::time::timeout(T, async {
        while metrics.task_failures.get_or_create(&panicked).get() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the panic is counted");
    // The first failure is the one reported.
    assert_eq!(
        node.host.watch_failure().borrow().as_deref(),
        Some("test_task ended")
    );
    node.shutdown(T).await;
}

#[tokio::test]
async fn tasks_ended_by_shutdown_are_not_failures() {
    let (node, metrics) = node().await;
    let token = node.host.shutdown_token();
    node.host.spawn_supervised("until_shutdown", async move {
        token.cancelled().await;
    });
    node.host
        .spawn_supervised("forever", std::future::pending());
    node.shutdown(T).await;
    assert!(node.host.watch_failure().borrow().is_none());
    for task in ["until_shutdown", "forever"] {
        for how in ["ended", "panicked"] {
            let labels = TaskLabels { task, how };
            assert_eq!(metrics.task_failures.get_or_create(&labels).get(), 0);
        }
    }
}
