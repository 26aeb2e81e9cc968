//! The node's database under the failures seen from outside: concurrent flush storms, a
//! flush stuck in the kernel (a frozen file system), a full disk, and a damaged log.
//! Real sled, real file systems (tmpfs and a loop-mounted ext4 image, mounted by the
//! test: these tests need root, as CI has). Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pylon_node::metrics::Metrics;
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad;
use pylon_node::storage::{self, Health, Storage};
use pylon_node::Multiaddr;
use pylon_testkit::node as kit;
use pylon_testkit::wait;

const T: Duration = Duration::from_secs(30);

#[path = "mount/mod.rs"]
mod mount;
use mount::Mount;

fn fast() -> storage::Config {
    storage::Config {
        flush_interval: Duration::from_millis(50),
        stall_timeout: Duration::from_secs(1),
        retry_interval: Duration::from_millis(100),
    }
}

async fn wait_health(storage: &Storage, want: impl Fn(&Health) -> bool, what: &str) -> Health {
    let mut rx = storage.watch_health();
    let got = tokio::time::timeout(T, async {
        rx.wait_for(|h| want(h)).await.map(|h| h.clone())
    })
    .await;
    match got {
        Ok(Ok(h)) => h,
        _ => panic!("storage never became {what}; it is {:?}", storage.health()),
    }
}

/// Hundreds of writers each asking for a flush at once, round after round: every flush
/// returns (the old code ran each on sled's pool and could park every pool thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_flush_storms_always_finish() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = storage::Metrics::unregistered();
    let storage = Storage::open(dir.path(), storage::Config::default(), metrics.clone()).unwrap();
    let tree = storage.tree("t").unwrap();
    for round in 0..20u32 {
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let (tree, storage) = (tree.clone(), storage.clone());
                tokio::spawn(async move {
                    let key = (round * 1000 + i).to_be_bytes();
                    tree.put(&key, &[7u8; 600]).unwrap();
                    storage.flush().await
                })
            })
            .collect();
        let all = tokio::time::timeout(T, futures::future::join_all(tasks))
            .await
            .unwrap_or_else(|_| panic!("round {round}: flushes did not return within {T:?}"));
        for r in all {
            r.unwrap().unwrap();
        }
    }
    // Coalesced: far fewer flushes than the 4,000 requests.
    let flushes = metrics.flushes.get();
    assert!(flushes > 0 && flushes < 4_000, "{flushes} flushes");
    storage.close(T).await.unwrap();
    let storage = Storage::open(dir.path(), storage::Config::default(), metrics).unwrap();
    assert_eq!(storage.tree("t").unwrap().scan().unwrap().len(), 4_000);
}

/// A flush stuck in the kernel (the file system frozen with fsfreeze): the watchdog
/// reports it (health `Stalled`, counted), waiters get an error instead of hanging,
/// in-memory writes go on, and all is well again once the file system thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_flush_is_reported_and_waiters_are_released() {
    let mnt = Mount::ext4(64);
    let metrics = storage::Metrics::unregistered();
    let storage = Storage::open(&mnt.path().join("db"), fast(), metrics.clone()).unwrap();
    let tree = storage.tree("t").unwrap();
    tree.put(b"before", b"1").unwrap();
    storage.flush().await.unwrap();

    mnt.freeze();
    tree.put(b"during", b"2").unwrap();
    let waited = tokio::time::timeout(T, storage.flush()).await.unwrap();
    assert_eq!(waited, Err(storage::Error::Stalled(Duration::from_secs(1))));
    let h = wait_health(&storage, |h| matches!(h, Health::Stalled { .. }), "stalled").await;
    assert!(matches!(h, Health::Stalled { .. }));
    assert_eq!(metrics.flush_stalls.get(), 1, "reported once");
    assert_eq!(metrics.healthy.get(), 0);
    // Reads and in-memory writes are not blocked by the stuck flush.
    tree.put(b"still", b"3").unwrap();
    assert_eq!(tree.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));

    mnt.thaw();
    wait_health(&storage, Health::is_ok, "ok").await;
    storage.flush().await.unwrap();
    assert_eq!(metrics.healthy.get(), 1);
    storage.close(T).await.unwrap();
    let storage = Storage::open(&mnt.path().join("db"), fast(), metrics).unwrap();
    let tree = storage.tree("t").unwrap();
    for k in [&b"before"[..], b"during", b"still"] {
        assert!(tree.get(k).unwrap().is_some(), "{k:?} lost");
    }
    storage.close(T).await.unwrap();
}

fn persistent_config() -> node::Config {
    node::Config {
        kad: Some(kad::Config {
            server: true,
            persist_table: true,
            refresh_interval: None,
            ..Default::default()
        }),
        storage: fast(),
        ..kit::config(&[kit::LOCAL_TCP])
    }
}

async fn wait_table(node: &Node, n: usize) {
    let kad = node.kad.as_ref().unwrap();
    // The routing table reports nothing: polled.
    let reached = wait::within(T, async || kad.table_len() >= n).await;
    assert!(
        reached,
        "routing table at {} of {n} (peerstore {})",
        kad.table_len(),
        node.peerstore.len()
    );
}

async fn join(n: usize, addr: &Multiaddr) -> Vec<Node> {
    let joins = (0..n).map(|_| kit::kad_node(true, vec![addr.clone()]));
    futures::future::join_all(joins).await
}

/// A full disk (a small tmpfs filled by the test): the node goes on serving and its
/// routing table and peerstore keep growing in memory; the storage reports the failure;
/// once space is freed it recovers by itself, writes the table back, and a restart finds
/// every peer met during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_does_not_stop_the_table_and_it_catches_up() {
    let mnt = Mount::tmpfs("16m");
    let data = mnt.path().join("node");
    std::fs::create_dir(&data).unwrap();
    let metrics = Metrics::unregistered();
    let node = Node::start_in(&data, persistent_config(), metrics.clone())
        .await
        .unwrap();
    let addr = node.listen_multiaddrs()[0].clone();
    let mut peers = join(5, &addr).await;
    wait_table(&node, 5).await;
    node.storage().unwrap().flush().await.unwrap();

    let filler = mnt.fill();
    peers.extend(join(10, &addr).await);
    wait_table(&node, 15).await;
    let storage = node.storage().unwrap();
    wait_health(storage, |h| matches!(h, Health::Failing { .. }), "failing").await;
    let write_errors = metrics
        .storage
        .write_errors
        .get_or_create(&storage::OpLabels { op: "write" })
        .get();
    assert!(metrics.storage.flush_errors.get() + write_errors > 0);
    let during = (node.kad.as_ref().unwrap().table_len(), node.peerstore.len());
    eprintln!(
        "disk full: table {} peers, peerstore {}",
        during.0, during.1
    );
    assert!(during.0 >= 15 && during.1 >= 15, "{during:?}");

    std::fs::remove_file(&filler).unwrap();
    wait_health(storage, Health::is_ok, "ok again").await;
    assert!(metrics.storage.reopens.get() >= 1);
    // Peers keep arriving after the recovery, and are saved as before.
    peers.extend(join(3, &addr).await);
    wait_table(&node, 18).await;
    node.stop(Duration::from_secs(2)).await.unwrap();

    let again = Node::start_in(&data, persistent_config(), Metrics::unregistered())
        .await
        .unwrap();
    let warm = again.kad.as_ref().unwrap().table_len();
    eprintln!("after freeing the disk and restarting: table {warm} peers");
    assert_eq!(warm, 18, "every peer met, during the outage too, was saved");
    again.stop(Duration::from_secs(2)).await.unwrap();
    for p in peers {
        p.shutdown(Duration::from_millis(100)).await;
    }
}

/// On a full disk the final flush fails and `stop` says so (the binary exits non-zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_reports_a_failed_final_flush() {
    let mnt = Mount::tmpfs("8m");
    let data = mnt.path().join("node");
    std::fs::create_dir(&data).unwrap();
    let node = Node::start_in(&data, persistent_config(), Metrics::unregistered())
        .await
        .unwrap();
    let filler = mnt.fill();
    // Something to write that does not fit.
    let tree = node.storage().unwrap().tree("x").unwrap();
    let _ = tree.put(b"k", &vec![1u8; 256 * 1024]);
    let stopped = node.stop(Duration::from_millis(100)).await;
    assert!(
        matches!(stopped, Err(storage::Error::Failed(_))),
        "{stopped:?}"
    );
    std::fs::remove_file(filler).unwrap();
}

/// A damaged log (bytes flipped in the database file): sled drops what follows the
/// damage when it opens; the loss is detected, logged and counted, not silent.
#[tokio::test]
async fn a_damaged_log_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let metrics = storage::Metrics::unregistered();
    {
        let storage = Storage::open(&path, storage::Config::default(), metrics.clone()).unwrap();
        let tree = storage.tree("kad_table").unwrap();
        for i in 0..200u32 {
            tree.put(&i.to_be_bytes(), &[9u8; 200]).unwrap();
            if i % 20 == 19 {
                storage.flush().await.unwrap();
            }
        }
        storage.close(T).await.unwrap();
    }
    assert_eq!(metrics.lost_flushes.get(), 0);
    // Flip bytes in the middle of the log.
    let file = path.join("db");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&file, bytes).unwrap();

    let metrics = storage::Metrics::unregistered();
    let storage = Storage::open(&path, storage::Config::default(), metrics.clone()).unwrap();
    let held = storage.tree("kad_table").unwrap().scan().unwrap().len();
    eprintln!(
        "after the flip: {held} of 200 entries, lost flushes reported: {}",
        metrics.lost_flushes.get()
    );
    assert!(
        held < 200,
        "the flip lost nothing: the test damaged the wrong place"
    );
    assert!(
        metrics.lost_flushes.get() > 0,
        "{held} of 200 entries survived and no loss was reported"
    );
}

/// Opening waits (bounded) for the holder of the database's lock to let go — a node of
/// this process stopping, or the previous process of a restart exiting — and past the
/// wait says another process holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_waits_for_the_lock_then_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = Storage::open(
        &path,
        storage::Config::default(),
        storage::Metrics::unregistered(),
    )
    .unwrap();
    first.tree("peers").unwrap().put(b"k", b"v").unwrap();
    let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
    let second = {
        let path = path.clone();
        std::thread::spawn(move || {
            let s = Storage::open(
                &path,
                storage::Config::default(),
                storage::Metrics::unregistered(),
            );
            let _ = opened_tx.send(());
            s
        })
    };
    assert!(
        opened_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the second open waits while the first holds the database"
    );
    first.close(T).await.unwrap();
    drop(first);
    let second = tokio::task::spawn_blocking(move || second.join().unwrap())
        .await
        .unwrap()
        .expect("opened once the first let go");
    assert_eq!(
        second.tree("peers").unwrap().get(b"k").unwrap().as_deref(),
        Some(&b"v"[..])
    );

    // Held for good: refused after the wait, naming why.
    let third = tokio::task::spawn_blocking(move || {
        Storage::open(
            &path,
            storage::Config::default(),
            storage::Metrics::unregistered(),
        )
    })
    .await
    .unwrap();
    let err = third.err().expect("refused while held").to_string();
    assert!(err.contains("another process holds the database"), "{err}");
    drop(second);
}
