//! The log store: every line, build and lifecycle event, in one redb file, with a hot ring
//! cache of each live instance's newest lines on top.
//!
//! - [`block`]: line framing and the block encoding (lines are stored in blocks, not rows).
//! - `live`: the append path of live instances and their ring cache.
//! - `writer`: the one thread that writes redb, commits in groups, and applies retention.
//! - `schema`: tables, encodings, migrations.
//! - [`filter`]: each stored block's filter (trigrams, line count, time range), which lets
//!   a search skip blocks; `filter_file` keeps them in an advisory file of their own,
//!   `filter_builder` builds them in the background; `scan` reads the blocks a search
//!   needs on a small pool.
//! - [`model`]: instances and events.
//!
//! Reads combine the ring and the store so that they answer exactly as the store alone
//! would once everything is durable.
//!
//! Faults are contained: a write that fails (a full disk) is kept in memory and retried
//! after reopening the database, and [`Store::health`] says so; an unreadable file is moved
//! aside under a fresh name, never overwritten. Every read here is blocking (redb I/O): async code
//! calls them through `tokio::task::spawn_blocking`.

pub mod block;
mod damage;
pub mod filter;
mod filter_builder;
mod filter_file;
mod live;
pub mod model;
mod open;
mod pool;
mod read;
mod scan;
mod schema;
mod writer;

pub use filter_file::path_for as filter_file_path;
use open::reopen;
pub use read::{Follower, History, HistoryEvent};
pub use scan::{BlockStats, Verdict};

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Duration;

use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable};

pub use block::{BlockView, Line, Stream};
pub use live::{EndPending, InstanceWriter};
pub use model::{
    Actor, Event, EventKind, ExitStatus, InstanceKind, InstanceMeta, SpawnInfo, now_us,
};
pub use schema::SCHEMA_VERSION;

use live::Live;
use schema::{EVENTS, INSTANCES, META, PROCESS_EVENTS, PROCESS_INSTANCES, PROCESSES};
use writer::{Msg, Writer, no_panic};

/// Retention limits of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Run instances kept per process (BPM's default: 10).
    pub keep_instances: u32,
    /// Build instances kept per process.
    pub keep_builds: u32,
    /// Bytes of stored lines per process, over all its instances.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            keep_instances: 10,
            keep_builds: 10,
            max_bytes: 256 << 20,
        }
    }
}

/// Tuning of the store. The defaults are documented in ARCHITECTURE.md.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Default per-process limits (a process's own come through [`Store::set_limits`]).
    pub limits: Limits,
    /// Cap on the whole store's line bytes.
    pub store_max_bytes: u64,
    /// The ring keeps at least this many bytes of each live instance's newest lines...
    pub ring_max_bytes: usize,
    /// ...and at most this many lines (whichever bound is hit first).
    pub ring_max_lines: usize,
    /// Bytes queued for the writer (not yet in its group) beyond which capture stops
    /// reading a child's pipes until the writer catches up (the child then blocks on its
    /// writes, as it would on a slow file). Twice this is the hard cap, past which blocks
    /// are dropped from the store (only appends that do not wait for room get there: a
    /// stalled or failing store). Memory for lines in flight is bounded by the hard cap
    /// plus `group_max_bytes` plus the rings.
    pub queue_max_bytes: usize,
    /// A group commits once it holds this many (uncompressed) bytes, without waiting for
    /// the interval.
    pub group_max_bytes: usize,
    /// A group commits at most this long after its first write.
    pub commit_interval: Duration,
    /// How long capture waits for room while the writer makes no progress at all (a disk
    /// that stopped answering without failing) before it reads on and lets lines drop
    /// from the store. A slow disk that makes progress is waited for, however slow.
    pub stall_limit: Duration,
    /// Quiet instances' unsealed lines are sealed this often.
    pub seal_interval: Duration,
    /// Lines longer than this are split into continuation lines.
    pub max_line: usize,
    /// redb's page cache.
    pub cache_bytes: usize,
    /// Keep a filter for each stored block in an advisory file beside the store
    /// (`logs.filters.redb`, see `filter_file.rs` and `migrations/0005-filter-file.md`),
    /// which lets searches skip blocks. A background thread builds them at the lowest
    /// priority once the writer is quiet; the store's own file is the same either way,
    /// and a block without a filter is read.
    pub block_filters: bool,
    /// The filter builder starts once the writer has committed no block for this long
    /// (and nothing waits to be written), so an ingest burst never shares its cores.
    pub filter_idle: Duration,
    /// After a failed write the writer reopens the store and retries after this long,
    /// doubling up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Unit tests only: the writer sleeps this long before each commit, a disk slower
    /// than any capture (see `slow_writer_tests`).
    #[cfg(test)]
    pub(crate) commit_delay: Duration,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            limits: Limits::default(),
            store_max_bytes: 2 << 30,
            ring_max_bytes: 1 << 20,
            ring_max_lines: 20_000,
            queue_max_bytes: 16 << 20,
            group_max_bytes: 16 << 20,
            commit_interval: Duration::from_millis(100),
            stall_limit: Duration::from_secs(60),
            seal_interval: Duration::from_millis(50),
            max_line: block::DEFAULT_MAX_LINE,
            cache_bytes: 16 << 20,
            block_filters: true,
            filter_idle: Duration::from_millis(250),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            #[cfg(test)]
            commit_delay: Duration::ZERO,
        }
    }
}

/// What can go wrong in the store. Every message names the problem and the way out.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the log store {path} is in use by another bpm daemon; ask that daemon (`bpm status`) or stop it first"
    )]
    Locked { path: PathBuf },
    #[error(
        "the log store {path} was written by a newer bpm (schema version {found}; this bpm reads up to {supported}); upgrade bpm, or use another --data-dir"
    )]
    TooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error(
        "the log store {path} needs a newer file format than this bpm's redb ({detail}); upgrade bpm"
    )]
    Format { path: PathBuf, detail: String },
    #[error("the log store is corrupt: {0}")]
    Corrupt(String),
    #[error("the log store is closed; restart the daemon")]
    WriterGone,
    #[error("the log store cannot be read right now ({0}); it is being reopened, try again")]
    Unavailable(String),
    #[error("the log store could not read or write its file: {0}")]
    Disk(String),
    #[error("could not write the log store: {0} (is the disk full?); the lines stay in memory")]
    WriteFailed(String),
    #[error("the log store is open read-only (no daemon holds it); start the daemon to change it")]
    ReadOnly,
    #[error("no {} instances of `{process}`; {}", kind.noun(), known_list(known))]
    NoInstances {
        process: String,
        kind: InstanceKind,
        known: Vec<String>,
    },
    #[error("instance {index} is out of range for `{process}`: it has {count} {} instance{} (use -1..-{count}, or 0..{})", kind.noun(), if *count == 1 { "" } else { "s" }, count.saturating_sub(1))]
    IndexOutOfRange {
        process: String,
        kind: InstanceKind,
        index: i64,
        count: usize,
    },
    #[error("no instance #{0} in the log store (retention may have removed it)")]
    NoSuchInstance(u64),
    #[error("`{process}` has no {} #{number}: {}", kind.noun(), if kept.is_empty() { "none is kept".to_owned() } else { format!("kept are #{} (older ones were removed by retention; -1 is the newest)", kept) })]
    NoSuchNumber {
        process: String,
        kind: InstanceKind,
        number: u64,
        /// The numbers kept, as `3..7` or `5`.
        kept: String,
    },
    #[error("log store error: {0}")]
    Db(String),
    #[error("log store I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "the store has no processes yet".to_owned()
    } else {
        format!("known processes: {}", known.join(", "))
    }
}

impl StoreError {
    /// The file could not be read or written (a full disk, an I/O error): trying again
    /// later, after reopening, may work.
    pub fn is_disk(&self) -> bool {
        matches!(self, StoreError::Disk(_) | StoreError::Io { .. })
    }
}

fn classify(e: redb::Error) -> StoreError {
    let msg = e.to_string();
    match e {
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            StoreError::Disk(msg)
        }
        redb::Error::Corrupted(_) => StoreError::Corrupt(msg),
        _ => StoreError::Db(msg),
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                classify(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<block::CorruptBlock> for StoreError {
    fn from(e: block::CorruptBlock) -> StoreError {
        StoreError::Corrupt(e.to_string())
    }
}

#[derive(Clone)]
enum Db {
    Rw(Arc<Database>),
    Ro(Arc<ReadOnlyDatabase>),
}

impl Db {
    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(match self {
            Db::Rw(db) => db.begin_read()?,
            Db::Ro(db) => db.begin_read()?,
        })
    }
}

/// The database as readers see it.
enum DbState {
    Open(Db),
    /// The writer dropped the database after a failure and is reopening it (why).
    Reopening(String),
    /// Closed: dropping the last handle released the file lock.
    Closed,
}

/// How the store is doing, for status reports. See [`Store::health`].
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct StoreHealth {
    /// Writes reach the disk. False while the writer retries after a failure (a full disk,
    /// an I/O error), and for a read-only store.
    pub writable: bool,
    /// The last write error, if any since the store was opened (kept after it healed).
    pub last_error: Option<String>,
    /// When that error happened, microseconds since the Unix epoch.
    pub last_error_us: Option<i64>,
    /// Since when writes fail (None while writable).
    pub failing_since_us: Option<i64>,
    /// Lines kept in memory because the store could not take them yet; they are stored
    /// once it heals.
    pub lines_not_stored: u64,
    /// Lines given up since the store was opened (the writer fell behind, or the store
    /// failed for longer than the memory budget covers). Also counted per instance.
    pub lines_dropped: u64,
    /// Reopen attempts during the current failure.
    pub retries: u64,
    /// Failures healed since the store was opened.
    pub recoveries: u64,
}

/// State shared by the store handle, the instance writers and the writer thread.
pub(crate) struct Shared {
    db: RwLock<DbState>,
    path: PathBuf,
    pub(crate) opts: StoreOptions,
    /// The writer's inbox; `None` once closed, or for a read-only store.
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    /// Bytes of blocks queued for the writer and not yet in its open group.
    pub(crate) queued_bytes: AtomicUsize,
    /// Signalled by the writer whenever queued bytes were committed, for capture waiting
    /// for room (std for blocking callers, tokio for async ones).
    pub(crate) room_cv: (Mutex<()>, std::sync::Condvar),
    pub(crate) room_notify: tokio::sync::Notify,
    /// Lines that never reached the store since it was opened.
    pub(crate) dropped_lines: AtomicU64,
    next_instance: AtomicU64,
    /// The last number given to each (process, kind code)'s instances (see
    /// [`InstanceMeta::number`]). A std lock: held only to take the next number.
    numbers: Mutex<HashMap<(String, u8), u64>>,
    /// Live instances by id. A std lock: it is held only to clone an `Arc`.
    live: RwLock<HashMap<u64, Arc<Live>>>,
    writer: Mutex<Option<std::thread::JoinHandle<Option<Arc<Database>>>>>,
    /// Written by the writer on failures and recoveries only (never per line).
    pub(crate) health: Mutex<StoreHealth>,
    /// Counts the changes a reader of instance records and events could see: every
    /// commit, and every instance entering or leaving the live map. Bumped after the
    /// change, so a reader that loads it before its transaction sees at least that
    /// generation (see [`Store::generation`]).
    pub(crate) generation: AtomicU64,
    /// The filter file and its builder.
    pub(crate) filters: filter_file::FilterState,
}

impl Shared {
    /// The writer can take at least another couple of blocks.
    pub(crate) fn has_room(&self) -> bool {
        self.queued_bytes.load(Ordering::Acquire) + 2 * block::BLOCK_TARGET_BYTES
            <= self.opts.queue_max_bytes
    }
    /// Queued bytes beyond which a new block is dropped from the store. Capture waits for
    /// room below `queue_max_bytes` before each read, so it only gets here when the store
    /// is failing or stalled; the margin covers concurrent appenders that found room at
    /// once, and the rest of the pipes read at an exit.
    pub(crate) fn queue_hard_cap(&self) -> usize {
        self.opts.queue_max_bytes.saturating_mul(2)
    }
    /// Writes reach the disk (see [`StoreHealth::writable`]).
    pub(crate) fn writable(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writable
    }
    pub(crate) fn signal_room(&self) {
        let _guard = self.room_cv.0.lock().unwrap_or_else(|p| p.into_inner());
        self.room_cv.1.notify_all();
        self.room_notify.notify_waiters();
    }
    fn db(&self) -> Result<Db, StoreError> {
        match &*self.db.read().unwrap_or_else(|p| p.into_inner()) {
            DbState::Open(db) => Ok(db.clone()),
            DbState::Reopening(why) => Err(StoreError::Unavailable(why.clone())),
            DbState::Closed => Err(StoreError::WriterGone),
        }
    }
    /// The writer dropped the database after a failure (readers must let go of it too,
    /// for it to be reopened).
    pub(crate) fn set_reopening(&self, why: &str) {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !matches!(*db, DbState::Closed) {
            *db = DbState::Reopening(why.to_owned());
        }
    }
    /// The writer reopened the database.
    pub(crate) fn set_open(&self, new: Arc<Database>) {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !matches!(*db, DbState::Closed) {
            *db = DbState::Open(Db::Rw(new));
        }
    }
    /// Hand a message to the writer. False when the store is closed, in which case a
    /// block's lines can never become durable.
    pub(crate) fn send(&self, msg: Msg) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => match tx.send(msg) {
                Ok(()) => true,
                Err(mpsc::SendError(msg)) => {
                    self.undeliverable(msg);
                    false
                }
            },
            None => {
                drop(tx);
                self.undeliverable(msg);
                false
            }
        }
    }
    fn undeliverable(&self, msg: Msg) {
        if let Msg::Block(block) = msg {
            block.mark_dropped();
            self.queued_bytes
                .fetch_sub(block.bytes.len(), Ordering::AcqRel);
        }
    }
    pub(crate) fn lives(&self) -> Vec<Arc<Live>> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.values().cloned().collect()
    }
    fn live(&self, id: u64) -> Option<Arc<Live>> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.get(&id).cloned()
    }
    pub(crate) fn remove_live(&self, id: u64) {
        let removed = {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            live.remove(&id)
        };
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(l) = removed {
            // Wake followers: the instance is over and all of it is in the store now.
            l.seq_tx.send_modify(|_| {});
        }
    }
}

/// A handle on the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// The result of opening a store.
pub struct Opened {
    pub store: Store,
    /// The file could not be opened as a store and was moved aside: (from, to).
    pub moved_aside: Option<(PathBuf, PathBuf)>,
    /// What the open had to do that the user should hear about (e.g. the move aside, with
    /// both paths and the reason), one sentence each.
    pub notes: Vec<String>,
    /// The previous daemon did not close the store (killed, power loss).
    pub unclean: bool,
    /// Instances that were live when the previous daemon died; now marked ended with an
    /// unknown exit. Their pids and start times let the supervisor stop orphans.
    pub interrupted: Vec<InstanceMeta>,
}

/// Which lines of an instance to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last N lines (after the filter).
    Tail(usize),
    /// The first N lines (after the filter).
    Head(usize),
    /// Lines with `from <= seq < to`.
    Seqs { from: u64, to: u64 },
    /// The first `max` lines with `seq >= from`: past a gap of lines that were never
    /// stored, to the next stored ones.
    From { from: u64, max: usize },
}

/// Lines read, and how many could not be (damaged blocks, skipped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadResult {
    pub lines: Vec<Line>,
    /// Lines of the window that were in damaged blocks and are left out. Counted from the
    /// sequence numbers around the damage, so lines dropped before they were stored (next
    /// to the damage) are counted too.
    pub unreadable_lines: u64,
}

/// Which lines count at all: a stream and a time range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub stream: Option<Stream>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

impl Filter {
    #[inline]
    pub fn accepts(&self, m: &block::LineMeta) -> bool {
        self.stream.is_none_or(|s| s == m.stream)
            && self.since_us.is_none_or(|t| m.ts_us >= t)
            && self.until_us.is_none_or(|t| m.ts_us <= t)
    }
}

const CLEAN_KEY: &str = "clean_shutdown";

impl Store {
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether the store takes changes. A store that fails to write takes them still: the
    /// writer keeps them in memory and retries.
    fn writable(&self) -> Result<(), StoreError> {
        match &*self.shared.db.read().unwrap_or_else(|p| p.into_inner()) {
            DbState::Open(Db::Ro(_)) => Err(StoreError::ReadOnly),
            DbState::Open(Db::Rw(_)) | DbState::Reopening(_) => Ok(()),
            DbState::Closed => Err(StoreError::WriterGone),
        }
    }

    /// A number that changes whenever what [`Store::histories`] reads may have changed
    /// (a commit, an instance beginning or leaving the live map). Load it before a read:
    /// while it stays the same, that read still holds. Cheap (no I/O).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// How the store is doing: whether writes reach the disk, the last error, and the
    /// lines not stored. Cheap (no I/O).
    pub fn health(&self) -> StoreHealth {
        let mut h = self
            .shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        h.lines_dropped = self.shared.dropped_lines.load(Ordering::Relaxed);
        h
    }

    /// Flush everything, stop the writer, and mark the store cleanly closed. Live
    /// instances should be finished first; their unsealed lines are flushed regardless.
    pub fn close(&self) -> Result<(), StoreError> {
        let taken = std::mem::replace(
            &mut *self.shared.db.write().unwrap_or_else(|p| p.into_inner()),
            DbState::Closed,
        );
        match taken {
            DbState::Open(Db::Rw(_)) | DbState::Reopening(_) => {}
            DbState::Open(Db::Ro(_)) | DbState::Closed => return Ok(()),
        }
        // Readers let go of the database; the writer hands back its own (it may have
        // reopened it since). The filter builder stops and lets go of its file.
        drop(taken);
        self.shared.filters.stop();
        // Seal the live instances' open blocks while the writer can still receive them
        // (once its inbox is closed, a sealed block could only be dropped).
        for live in self.shared.lives() {
            let mut st = live.lock();
            live.seal(&mut st, &self.shared);
        }
        let tx = self
            .shared
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(tx);
        let handle = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let db = handle.and_then(|h| h.join().ok().flatten());
        let Some(db) = db else {
            let h = self.health();
            return Err(StoreError::WriteFailed(h.last_error.unwrap_or_else(|| {
                "the writer could not write the last lines".to_owned()
            })));
        };
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        txn.open_table(META)?.insert(CLEAN_KEY, 1)?;
        txn.commit()?;
        Ok(())
    }

    /// Start a new run or build instance and return its append handle.
    pub fn begin_instance(
        &self,
        process: &str,
        kind: InstanceKind,
        spawn: SpawnInfo,
    ) -> Result<InstanceWriter, StoreError> {
        self.writable()?;
        let id = self.shared.next_instance.fetch_add(1, Ordering::AcqRel);
        let number = {
            let mut numbers = self
                .shared
                .numbers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let last = numbers
                .entry((process.to_owned(), kind.code()))
                .or_insert(0);
            *last += 1;
            *last
        };
        let meta = InstanceMeta {
            id,
            process: process.to_owned(),
            kind,
            started_us: now_us(),
            ended_us: None,
            spawn,
            exit: None,
            next_seq: 0,
            first_seq: 0,
            stored_bytes: 0,
            dropped_lines: 0,
            number,
        };
        let live = Arc::new(Live::new(meta.clone(), self.shared.opts.max_line));
        self.shared
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live.clone());
        self.shared.generation.fetch_add(1, Ordering::Release);
        if !self.shared.send(Msg::Start(Box::new(meta))) {
            self.shared.remove_live(id);
            return Err(StoreError::WriterGone);
        }
        Ok(InstanceWriter {
            shared: self.shared.clone(),
            live,
        })
    }

    /// Record a lifecycle event. Queued behind everything appended before it.
    pub fn record(&self, process: Option<&str>, instance: Option<u64>, kind: EventKind) {
        self.shared.send(Msg::Event {
            process: process.map(str::to_owned),
            instance,
            kind,
            ts_us: now_us(),
        });
    }

    /// Persist a process's spec (opaque bytes owned by the supervisor).
    pub fn put_process(&self, name: &str, spec: Vec<u8>) -> Result<(), StoreError> {
        self.writable()?;
        self.shared.send(Msg::PutProcess {
            name: name.to_owned(),
            spec,
        });
        Ok(())
    }

    pub fn remove_process(&self, name: &str) -> Result<(), StoreError> {
        self.writable()?;
        self.shared.send(Msg::RemoveProcess {
            name: name.to_owned(),
        });
        Ok(())
    }

    /// Remove a process's logs: every instance of it that is not live, with its lines.
    /// Returns once that is durable.
    pub async fn remove_logs(&self, process: &str) -> Result<(), StoreError> {
        self.writable()?;
        let (done, rx) = tokio::sync::oneshot::channel();
        if !self.shared.send(Msg::RemoveLogs {
            process: process.to_owned(),
            done,
        }) {
            return Err(StoreError::WriterGone);
        }
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Set a process's retention limits.
    pub fn set_limits(&self, process: &str, limits: Limits) {
        self.shared.send(Msg::Limits {
            process: process.to_owned(),
            limits,
        });
    }

    fn flush_send(
        &self,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        self.writable()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.shared.send(Msg::Flush(tx)) {
            return Err(StoreError::WriterGone);
        }
        Ok(rx)
    }

    /// Return once everything appended or recorded before the call is durable.
    /// Blocking: call from a blocking context.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.flush_send()?
            .blocking_recv()
            .map_err(|_| StoreError::WriterGone)?
    }

    /// [`Self::flush`] for async callers.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.flush_send()?
            .await
            .map_err(|_| StoreError::WriterGone)?
    }

    /// Lines dropped from the store (never from the ring) since it was opened.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped_lines.load(Ordering::Relaxed)
    }

    // ---- reads ----
}

/// A writer slower than capture, simulated by [`StoreOptions::commit_delay`]: capture waits
/// for room instead of dropping, nothing is lost, and an instance's end is seen at once.
/// (`tests/integration/slow_disk.rs` does the same on a really throttled disk, where the
/// machine allows it.)
#[cfg(test)]
mod slow_writer_tests {
    use super::*;
    use std::time::Instant;

    const LINES: u64 = 100_000;

    fn flood() -> Vec<u8> {
        let mut text = Vec::with_capacity(LINES as usize * 100);
        for i in 0..LINES {
            text.extend_from_slice(format!("{i:>8} {}\n", "x".repeat(90)).as_bytes());
        }
        text
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_writer_slows_capture_down_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            // 10 MB through a 1 MiB queue and 1 MiB groups, 300 ms per commit: far more
            // than a second of waiting in all, each wait longer than a commit.
            queue_max_bytes: 1 << 20,
            group_max_bytes: 1 << 20,
            commit_delay: Duration::from_millis(300),
            stall_limit: Duration::from_secs(30),
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("s.redb"), opts).unwrap().store;
        let w = store
            .begin_instance("slow", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        let id = w.id();
        let text = flood();
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        for chunk in text.chunks(64 * 1024) {
            // What capture does between reads.
            w.append(Stream::Stdout, chunk);
            let t = Instant::now();
            assert!(w.wait_for_room(Duration::from_secs(30)).await, "room");
            waited += t.elapsed();
        }
        assert!(
            waited > Duration::from_secs(1),
            "capture waited {waited:?}: the writer was not slower than capture"
        );
        assert_eq!(store.dropped_lines(), 0);

        // The end: known at once, durable later (behind a commit of at least 300 ms).
        let mut follower = store.follow(id, LINES - 1000);
        let pending = w.end(ExitStatus::Code(3)).unwrap();
        let t = Instant::now();
        let meta = store.instance(id).unwrap();
        assert_eq!(meta.exit, Some(ExitStatus::Code(3)));
        assert_eq!(meta.next_seq, LINES);
        let mut followed = 0;
        while let Some(lines) = follower.next_batch(4096).await.unwrap() {
            followed += lines.len() as u64;
        }
        assert_eq!(followed, 1000);
        let seen = t.elapsed();
        assert!(
            store.shared.live(id).is_some(),
            "the follower saw the end only once it was durable ({seen:?})"
        );
        pending.durable().await.unwrap();
        let durable = t.elapsed();
        eprintln!(
            "slow writer: ingest {:?} (capture waited {waited:?}); end seen by a follower after {seen:?}, durable after {durable:?}",
            started.elapsed()
        );
        let meta = store.instance(id).unwrap();
        assert_eq!((meta.next_seq, meta.dropped_lines), (LINES, 0));
        assert_eq!(meta.exit, Some(ExitStatus::Code(3)));
        let last = store.read(id, Window::Tail(1), &Filter::default()).unwrap();
        assert!(last[0].text().starts_with(&format!("{:>8}", LINES - 1)));
        store.close().unwrap();
    }
}
