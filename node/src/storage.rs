//! The node's durable storage: one sled database and one owner of flushing.
//!
//! What sled 0.34 gives us: writes land in in-memory log buffers and are durable once a
//! flush (`fsync`) that started after them returns; recovery after a crash replays the
//! log up to the first torn or corrupted message and silently drops the rest. What it
//! does not give us, and this module adds:
//! - **No concurrent flushes.** sled's `flush_async` runs the flush on sled's own
//!   thread pool, and the log writes a flush waits for are queued on that same pool;
//!   enough concurrent flushes park every pool thread in `make_stable` and the database
//!   wedges for good. Here one thread (`pylon-storage`) owns every flush: callers ask
//!   for one and wait; requests that arrive while a flush runs are served together by
//!   the next one (coalesced). sled's own periodic flusher is off; ours flushes unasked
//!   writes every `flush_interval`.
//! - **A watchdog.** A flush running longer than `stall_timeout` is logged, counted and
//!   makes [`Storage::health`] `Stalled` (the node reports not ready); waiters get
//!   [`Error::Stalled`] instead of hanging.
//! - **Recovery from I/O errors.** sled marks the whole database failed on its first
//!   I/O error (a full disk, say) and refuses every later write until it is reopened.
//!   The owner thread reopens it every `retry_interval`; once that works, the
//!   registered [`ReopenHook`]s write the state their owners hold in memory back (the
//!   peerstore, the routing table), a flush makes it durable and health is `Ok` again.
//!   Nothing that was acknowledged as durable is lost; writes that failed were never
//!   acknowledged.
//! - **Lost writes are reported.** Each flush first records an increasing epoch inside
//!   the database and, once durable, in the file `<db>.epoch` beside it. At open, a
//!   database holding an older epoch than the file lost writes it had acknowledged (a
//!   corrupted or truncated log); this is logged as an error and counted
//!   (`pylon_storage_lost_flushes_total`).
//!
//! Not here: what is stored (the peerstore, the DHT store) and when a caller needs
//! durability (they call [`Storage::flush`] before acknowledging).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::peerstore::{self, Entries, Store};

/// Timing of the flush owner.
#[derive(Debug, Clone)]
pub struct Config {
    /// Writes nobody asked to flush are flushed this often.
    pub flush_interval: Duration,
    /// A flush running longer than this is stuck: logged, counted, health `Stalled`,
    /// and its waiters get [`Error::Stalled`].
    pub stall_timeout: Duration,
    /// After an I/O error, how often reopening the database is tried.
    pub retry_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            flush_interval: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(30),
            retry_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cannot open the database at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the database failed: {0}")]
    Failed(String),
    #[error("a flush has not finished within {0:?}")]
    Stalled(Duration),
    #[error("the database was reopened after a failure; writes before it may be lost")]
    Reopened,
    #[error("storage is closed")]
    Closed,
}

impl From<Error> for peerstore::Error {
    fn from(e: Error) -> Self {
        peerstore::Error::Storage(e.to_string())
    }
}

/// How the storage is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The last write or flush failed (a full disk, say); reopening is being retried.
    /// In-memory state goes on and is written back once the database works again.
    Failing {
        error: String,
    },
    /// A flush has been running longer than `stall_timeout`.
    Stalled {
        since: Duration,
    },
}

impl Health {
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }
}

/// Called on the storage thread after the database was reopened, before the flush that
/// makes the recovery durable: write back what the owner holds in memory. Must not wait
/// for [`Storage::flush`] (that flush waits for the hook).
pub type ReopenHook = Box<dyn Fn() + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TreeLabels {
    pub tree: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// Storage metrics (`pylon_storage_*`).
pub struct Metrics {
    pub flushes: Counter,
    pub flush_seconds: Histogram,
    pub flush_errors: Counter,
    pub flush_stalls: Counter,
    pub write_errors: Family<OpLabels, Counter>,
    pub reopens: Counter,
    pub healthy: Gauge,
    pub lost_flushes: Counter,
    pub dropped_on_load: Family<TreeLabels, Counter>,
    pub size_bytes: Gauge,
    pub volume_available_bytes: Gauge,
    pub volume_size_bytes: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics {
            flushes: Counter::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            flush_errors: Counter::default(),
            flush_stalls: Counter::default(),
            write_errors: Family::default(),
            reopens: Counter::default(),
            healthy: Gauge::default(),
            lost_flushes: Counter::default(),
            dropped_on_load: Family::default(),
            size_bytes: Gauge::default(),
            volume_available_bytes: Gauge::default(),
            volume_size_bytes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("pylon_storage");
        r.register(
            "flush_seconds",
            "Duration of database flushes (fsync)",
            m.flush_seconds.clone(),
        );
        r.register(
            "flushes",
            "Flushes run (each serves every request made before it started)",
            m.flushes.clone(),
        );
        r.register(
            "flush_errors",
            "Flushes that failed",
            m.flush_errors.clone(),
        );
        r.register(
            "flush_stalls",
            "Flushes still running after the stall timeout",
            m.flush_stalls.clone(),
        );
        r.register(
            "write_errors",
            "Database operations that failed, by operation",
            m.write_errors.clone(),
        );
        r.register(
            "reopens",
            "Times the database was reopened after a failure",
            m.reopens.clone(),
        );
        r.register(
            "healthy",
            "1 when the database is writable and flushes complete, 0 otherwise",
            m.healthy.clone(),
        );
        r.register(
            "lost_flushes",
            "Completed flushes missing from the database at open (corrupted or truncated log)",
            m.lost_flushes.clone(),
        );
        r.register(
            "dropped_on_load",
            "Undecodable entries dropped when loading, by tree",
            m.dropped_on_load.clone(),
        );
        r.register(
            "size_bytes",
            "Size of the database on disk",
            m.size_bytes.clone(),
        );
        r.register(
            "volume_available_bytes",
            "Bytes free for the node on the database's file system",
            m.volume_available_bytes.clone(),
        );
        r.register(
            "volume_size_bytes",
            "Size of the database's file system",
            m.volume_size_bytes.clone(),
        );
        Arc::new(m)
    }

    pub fn unregistered() -> Arc<Self> {
        Self::new(&mut Registry::default())
    }

    /// Counts entries of `tree` dropped at load and says so in the log.
    pub fn dropped(&self, tree: &str, n: u64) {
        if n == 0 {
            return;
        }
        tracing::warn!("storage: dropped {n} undecodable entries of {tree} when loading");
        self.dropped_on_load
            .get_or_create(&TreeLabels {
                tree: tree.to_string(),
            })
            .inc_by(n);
    }
}

const META_TREE: &str = "pylon_meta";
const EPOCH_KEY: &[u8] = b"flush_epoch";

/// The outcome of the flushes up to `seq`.
#[derive(Debug, Clone)]
struct Done {
    seq: u64,
    generation: u64,
    result: Result<(), Error>,
}

struct Open {
    db: sled::Db,
    trees: HashMap<String, sled::Tree>,
    meta: sled::Tree,
}

struct State {
    /// Flush tickets handed out; a flush covers every ticket issued before it started.
    requested: u64,
    /// Write operations since start, and how many the last good flush covered.
    writes: u64,
    flushed_writes: u64,
    last_flush: Instant,
    flushing_since: Option<Instant>,
    stall_reported: bool,
    /// The error that broke the database, until a reopen works.
    failed: Option<String>,
    /// Since the first failure, until a flush works again.
    unhealthy: bool,
    next_retry: Instant,
    generation: u64,
    epoch: u64,
    closing: bool,
    stopped: bool,
}

struct Inner {
    path: PathBuf,
    epoch_file: PathBuf,
    config: Config,
    open: RwLock<Option<Open>>,
    state: Mutex<State>,
    wake: Condvar,
    done: watch::Sender<Done>,
    health: watch::Sender<Health>,
    /// True once the owner thread stopped and released the database.
    closed: watch::Sender<bool>,
    hooks: Mutex<Vec<ReopenHook>>,
    metrics: Arc<Metrics>,
}

/// The node's database. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

/// How long opening waits for another holder of the database's file lock to let go: a
/// node of this process stopping (its last handles drop just after its close), or the
/// previous process of a restart still exiting.
const LOCK_WAIT: Duration = Duration::from_secs(5);

fn open_db(path: &Path) -> Result<sled::Db, String> {
    // sled reports the lock held as an I/O error of its own wording (kind `Other`).
    let held = |e: &sled::Error| e.to_string().contains("could not acquire lock");
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match sled::Config::new().path(path).flush_every_ms(None).open() {
            Ok(db) => return Ok(db),
            Err(e) if held(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Err(e) if held(&e) => {
                return Err(format!(
                    "{e} (another process holds the database; waited {LOCK_WAIT:?})"
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn read_epoch(meta: &sled::Tree) -> u64 {
    meta.get(EPOCH_KEY)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn read_epoch_file(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Sets the database's size and its file system's size and free space (for the
/// storage-near-full alert); a file system that cannot be read leaves those as they were.
fn measure(metrics: &Metrics, path: &Path) {
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    metrics.size_bytes.set(gauge(dir_size(path)));
    if let Ok(fs) = nix::sys::statvfs::statvfs(path) {
        // The field types vary by platform (u32 or u64); none is wider than u64.
        #[allow(clippy::useless_conversion)]
        let block = u64::from(fs.fragment_size());
        #[allow(clippy::useless_conversion)]
        let blocks = |n| block.saturating_mul(u64::from(n));
        metrics
            .volume_available_bytes
            .set(gauge(blocks(fs.blocks_available())));
        metrics.volume_size_bytes.set(gauge(blocks(fs.blocks())));
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Storage {
    /// Opens (or creates) the database at `path` and starts its flush owner. Reports
    /// writes lost since the last run (see the module docs).
    pub fn open(path: &Path, config: Config, metrics: Arc<Metrics>) -> Result<Storage, Error> {
        let db = open_db(path).map_err(|reason| Error::Open {
            path: path.display().to_string(),
            reason,
        })?;
        let meta = db.open_tree(META_TREE).map_err(|e| Error::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut file_name = path.as_os_str().to_owned();
        file_name.push(".epoch");
        let epoch_file = PathBuf::from(file_name);
        let held = read_epoch(&meta);
        let completed = read_epoch_file(&epoch_file);
        if held < completed {
            let lost = completed - held;
            tracing::error!(
                "storage: the database at {} lost writes it had acknowledged: it holds flush \
                 {held} of the {completed} completed before it was closed (a corrupted or \
                 truncated log); what was written after flush {held} is gone",
                path.display()
            );
            metrics.lost_flushes.inc_by(lost);
        }
        let epoch = held.max(completed);
        let (done, _) = watch::channel(Done {
            seq: 0,
            generation: 0,
            result: Ok(()),
        });
        let (health, _) = watch::channel(Health::Ok);
        let (closed, _) = watch::channel(false);
        metrics.healthy.set(1);
        measure(&metrics, path);
        let now = Instant::now();
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            epoch_file,
            config,
            open: RwLock::new(Some(Open {
                db,
                trees: HashMap::new(),
                meta,
            })),
            state: Mutex::new(State {
                requested: 0,
                writes: 0,
                flushed_writes: 0,
                last_flush: now,
                flushing_since: None,
                stall_reported: false,
                failed: None,
                unhealthy: false,
                next_retry: now,
                generation: 0,
                epoch,
                closing: false,
                stopped: false,
            }),
            wake: Condvar::new(),
            done,
            health,
            closed,
            hooks: Mutex::new(Vec::new()),
            metrics,
        });
        let owner = inner.clone();
        std::thread::Builder::new()
            .name("pylon-storage".into())
            .spawn(move || {
                let watched = owner.clone();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| owner.run())).is_err() {
                    // Nobody flushes any more: say so for good (readiness fails).
                    watched.fail("the storage thread panicked".into());
                }
            })
            .map_err(|e| Error::Open {
                path: path.display().to_string(),
                reason: format!("starting the storage thread: {e}"),
            })?;
        let watched = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("pylon-storage-watchdog".into())
            .spawn(move || watchdog(watched))
            .map_err(|e| Error::Open {
                path: path.display().to_string(),
                reason: format!("starting the storage watchdog: {e}"),
            })?;
        Ok(Storage { inner })
    }

    /// A named tree as a [`Store`].
    pub fn tree(&self, name: &str) -> Result<Arc<dyn Store>, Error> {
        self.inner.with_tree(name, |_| Ok(()))?;
        Ok(Arc::new(SledTree {
            storage: self.clone(),
            name: name.to_string(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn health(&self) -> Health {
        self.inner.health.borrow().clone()
    }

    /// Health changes, for readiness reporting.
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// Registers a hook run after every reopen (see [`ReopenHook`]).
    pub fn on_reopen(&self, hook: ReopenHook) {
        lock(&self.inner.hooks).push(hook);
    }

    /// Makes every earlier write durable. Concurrent calls share flushes; the wait is
    /// bounded by `stall_timeout`.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut done = self.inner.done.subscribe();
        let (ticket, generation) = {
            let mut s = lock(&self.inner.state);
            if s.stopped {
                return Err(Error::Closed);
            }
            s.requested += 1;
            (s.requested, s.generation)
        };
        self.inner.wake.notify_all();
        let stall = self.inner.config.stall_timeout;
        let waited = tokio::time::timeout(stall, async {
            done.wait_for(|d| d.seq >= ticket).await.map(|d| d.clone())
        })
        .await;
        match waited {
            Ok(Ok(d)) if d.generation != generation && d.result.is_ok() => Err(Error::Reopened),
            Ok(Ok(d)) => d.result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Stalled(stall)),
        }
    }

    /// Flushes one last time, stops the flush owner and releases the database (another
    /// `open` of the same path works once this returns `Ok`). Waits at most `deadline`.
    pub async fn close(&self, deadline: Duration) -> Result<(), Error> {
        let started = Instant::now();
        let mut closed = self.inner.closed.subscribe();
        let result = match tokio::time::timeout(deadline, self.flush()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Stalled(deadline)),
        };
        lock(&self.inner.state).closing = true;
        self.inner.wake.notify_all();
        let left = deadline.saturating_sub(started.elapsed());
        let stopped = tokio::time::timeout(left, async {
            let _ = closed.wait_for(|c| *c).await;
        })
        .await;
        match stopped {
            Ok(()) => result,
            Err(_) => result.and(Err(Error::Stalled(deadline))),
        }
    }

    fn note_error(&self, op: &'static str, e: &sled::Error) {
        self.inner
            .metrics
            .write_errors
            .get_or_create(&OpLabels { op })
            .inc();
        self.inner.fail(e.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn with_tree<R>(
        &self,
        name: &str,
        f: impl FnOnce(&sled::Tree) -> Result<R, Error>,
    ) -> Result<R, Error> {
        {
            let open = self.open.read().unwrap_or_else(|e| e.into_inner());
            match open.as_ref() {
                None => return Err(self.unavailable()),
                Some(o) => {
                    if let Some(t) = o.trees.get(name) {
                        return f(t);
                    }
                }
            }
        }
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        let Some(o) = open.as_mut() else {
            return Err(self.unavailable());
        };
        let tree = match o.trees.get(name) {
            Some(t) => t.clone(),
            None => {
                let t =
                    o.db.open_tree(name)
                        .map_err(|e| Error::Failed(e.to_string()))?;
                o.trees.insert(name.to_string(), t.clone());
                t
            }
        };
        drop(open);
        f(&tree)
    }

    fn unavailable(&self) -> Error {
        let s = lock(&self.state);
        match &s.failed {
            Some(e) => Error::Failed(e.clone()),
            None => Error::Closed,
        }
    }

    /// Marks the database failed (sled refuses writes after its first I/O error): the
    /// owner thread reopens it. Logged once per outage, not once per retry.
    fn fail(&self, error: String) {
        let mut s = lock(&self.state);
        if s.failed.is_some() {
            return;
        }
        s.failed = Some(error.clone());
        s.next_retry = Instant::now() + self.config.retry_interval;
        let first = !std::mem::replace(&mut s.unhealthy, true);
        drop(s);
        if first {
            tracing::error!(
                "storage: the database at {} failed: {error}; the node goes on in memory \
                 and writes its state back once the database works again",
                self.path.display()
            );
        } else {
            tracing::debug!("storage: still failing: {error}");
        }
        self.metrics.healthy.set(0);
        self.health.send_replace(Health::Failing { error });
        self.wake.notify_all();
    }

    fn wrote(&self) {
        lock(&self.state).writes += 1;
    }

    /// Answers every waiting flush request with `result`.
    fn answer_all(&self, s: std::sync::MutexGuard<'_, State>, result: Result<(), Error>) {
        let (seq, generation) = (s.requested, s.generation);
        drop(s);
        self.done.send_replace(Done {
            seq,
            generation,
            result,
        });
    }

    /// The flush owner's loop.
    fn run(self: Arc<Self>) {
        loop {
            let mut s = lock(&self.state);
            // Wait for work: a request, unflushed writes past the interval, a retry due.
            loop {
                let now = Instant::now();
                let asked = s.requested > self.done.borrow().seq;
                if s.closing && !asked {
                    s.stopped = true;
                    drop(s);
                    // Release the database so the process (or a new node) can reopen it.
                    *self.open.write().unwrap_or_else(|e| e.into_inner()) = None;
                    self.closed.send_replace(true);
                    return;
                }
                let next = match &s.failed {
                    Some(error) => {
                        if now >= s.next_retry {
                            break;
                        }
                        if asked {
                            // Failed and not due for a retry: answer at once.
                            let error = Error::Failed(error.clone());
                            self.answer_all(s, Err(error));
                            s = lock(&self.state);
                            continue;
                        }
                        s.next_retry
                    }
                    None => {
                        let due = s.last_flush + self.config.flush_interval;
                        let dirty = s.writes > s.flushed_writes;
                        if asked || (dirty && now >= due) {
                            break;
                        }
                        if dirty {
                            due
                        } else {
                            now + self.config.flush_interval
                        }
                    }
                };
                let wait = next
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                s = self
                    .wake
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if s.failed.is_some() {
                s.next_retry = Instant::now() + self.config.retry_interval;
                drop(s);
                if let Err(e) = self.reopen() {
                    tracing::debug!("storage: reopening failed: {e}");
                    let mut s = lock(&self.state);
                    s.failed = Some(e.clone());
                    self.answer_all(s, Err(Error::Failed(e)));
                    continue;
                }
                s = lock(&self.state);
            }
            let target = s.requested;
            let writes = s.writes;
            s.epoch += 1;
            let epoch = s.epoch;
            let generation = s.generation;
            let started = Instant::now();
            s.flushing_since = Some(started);
            drop(s);

            let result = self.flush_once(epoch);

            let elapsed = started.elapsed();
            self.metrics.flushes.inc();
            self.metrics.flush_seconds.observe(elapsed.as_secs_f64());
            let mut s = lock(&self.state);
            s.flushing_since = None;
            s.last_flush = Instant::now();
            let was_stalled = std::mem::take(&mut s.stall_reported);
            let result = match result {
                Ok(()) if s.failed.is_none() => {
                    s.flushed_writes = writes;
                    let recovered = std::mem::take(&mut s.unhealthy);
                    drop(s);
                    if was_stalled {
                        tracing::warn!(
                            "storage: the stuck flush finished after {:.1} s",
                            elapsed.as_secs_f64()
                        );
                    }
                    if recovered {
                        tracing::info!("storage: recovered; the node's state is durable again");
                    }
                    // Completed epochs go to the file only once durable.
                    let mut tmp = self.epoch_file.as_os_str().to_owned();
                    tmp.push(".tmp");
                    if std::fs::write(&tmp, epoch.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, &self.epoch_file);
                    }
                    self.metrics.healthy.set(1);
                    self.health.send_if_modified(|h| {
                        let changed = !h.is_ok();
                        *h = Health::Ok;
                        changed
                    });
                    measure(&self.metrics, &self.path);
                    Ok(())
                }
                // A write failed while the flush ran: what it covered is not all there.
                Ok(()) => Err(Error::Failed(s.failed.clone().unwrap_or_default())),
                Err(e) => {
                    drop(s);
                    self.metrics.flush_errors.inc();
                    measure(&self.metrics, &self.path);
                    self.fail(e.clone());
                    Err(Error::Failed(e))
                }
            };
            self.done.send_replace(Done {
                seq: target,
                generation,
                result,
            });
        }
    }

    fn flush_once(&self, epoch: u64) -> Result<(), String> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        let Some(o) = open.as_ref() else {
            return Err("the database is not open".into());
        };
        o.meta
            .insert(EPOCH_KEY, &epoch.to_be_bytes())
            .map_err(|e| e.to_string())?;
        o.db.flush().map(|_| ()).map_err(|e| e.to_string())
    }

    /// Drops the failed database, opens it again, lets the owners write their state
    /// back. The flush that follows decides whether it worked.
    fn reopen(&self) -> Result<(), String> {
        {
            let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
            let names: Vec<String> = open
                .as_ref()
                .map(|o| o.trees.keys().cloned().collect())
                .unwrap_or_default();
            // Dropping releases sled's file lock (a failed sled skips its final flush).
            *open = None;
            let db = open_db(&self.path)?;
            let meta = db.open_tree(META_TREE).map_err(|e| e.to_string())?;
            let mut trees = HashMap::new();
            for name in names {
                let t = db.open_tree(&name).map_err(|e| e.to_string())?;
                trees.insert(name, t);
            }
            *open = Some(Open { db, trees, meta });
        }
        self.metrics.reopens.inc();
        {
            let mut s = lock(&self.state);
            s.failed = None;
            s.generation += 1;
        }
        // Once per retry while the disk is still full: the outage and the recovery are
        // each logged once, elsewhere.
        tracing::debug!(
            "storage: the database at {} is open again; writing the node's state back",
            self.path.display()
        );
        for hook in lock(&self.hooks).iter() {
            hook();
        }
        Ok(())
    }
}

/// Watches the running flush; one past `stall_timeout` is reported once.
fn watchdog(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let period = (inner.config.stall_timeout / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        {
            let mut s = lock(&inner.state);
            if s.stopped {
                return;
            }
            if let Some(since) = s.flushing_since {
                let running = since.elapsed();
                if running >= inner.config.stall_timeout && !s.stall_reported {
                    s.stall_reported = true;
                    drop(s);
                    tracing::error!(
                        "storage: a flush of {} has been running for {:.0} s; the node is \
                         not ready until it finishes",
                        inner.path.display(),
                        running.as_secs_f64()
                    );
                    inner.metrics.flush_stalls.inc();
                    inner.metrics.healthy.set(0);
                    inner
                        .health
                        .send_replace(Health::Stalled { since: running });
                }
            }
        }
        drop(inner);
        std::thread::sleep(period);
    }
}

/// One tree of the node's database as a [`Store`]. Operations on a failed database return
/// an error (and start recovery); flushes go through the owner.
struct SledTree {
    storage: Storage,
    name: String,
}

impl SledTree {
    fn op<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&sled::Tree) -> sled::Result<R>,
    ) -> Result<R, peerstore::Error> {
        let r = self.storage.inner.with_tree(&self.name, |t| {
            f(t).map_err(|e| {
                self.storage.note_error(op, &e);
                Error::Failed(e.to_string())
            })
        });
        if r.is_ok() && op != "read" {
            self.storage.inner.wrote();
        }
        r.map_err(Into::into)
    }
}

#[async_trait::async_trait]
impl Store for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, peerstore::Error> {
        self.op("read", |t| t.get(key).map(|v| v.map(|v| v.to_vec())))
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), peerstore::Error> {
        self.op("write", |t| t.insert(key, value).map(|_| ()))
    }
    fn delete(&self, key: &[u8]) -> Result<(), peerstore::Error> {
        self.op("delete", |t| t.remove(key).map(|_| ()))
    }
    fn scan(&self) -> Result<Entries, peerstore::Error> {
        self.op("read", |t| {
            t.iter()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, peerstore::Error> {
        self.op("read", |t| {
            t.scan_prefix(prefix)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>, peerstore::Error> {
        self.op("read", |t| {
            t.iter().keys().map(|r| r.map(|k| k.to_vec())).collect()
        })
    }
    async fn flush(&self) -> Result<(), peerstore::Error> {
        self.storage.flush().await.map_err(Into::into)
    }
    fn on_reopen(&self, hook: ReopenHook) {
        self.storage.on_reopen(hook);
    }
}
