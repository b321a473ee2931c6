//! The log store: every line, build and lifecycle event, in one redb file, with a hot ring
//! cache of each live instance's newest lines on top.
//!
//! - [`block`]: line framing and the block encoding (lines are stored in blocks, not rows).
//! - `live`: the append path of live instances and their ring cache.
//! - `writer`: the one thread that writes redb, commits in groups, and applies retention.
//! - `schema`: tables, encodings, migrations.
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
mod live;
pub mod model;
mod schema;
mod writer;

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
    /// Live instances by id. A std lock: it is held only to clone an `Arc`.
    live: RwLock<HashMap<u64, Arc<Live>>>,
    writer: Mutex<Option<std::thread::JoinHandle<Option<Arc<Database>>>>>,
    /// Written by the writer on failures and recoveries only (never per line).
    pub(crate) health: Mutex<StoreHealth>,
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
    /// Open (or create) the store at `path` for writing, with its writer thread.
    ///
    /// A file that is not a readable redb store is moved aside under a name no other file
    /// has, never overwritten, and a new store is started; [`Opened::moved_aside`] names
    /// both paths. A new store is made under a temporary name in the same directory and
    /// renamed into place only once complete, so a failure half way (a full disk) never
    /// leaves a half-made store behind.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Opened, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut moved_aside = None;
        let mut notes = Vec::new();
        let mut rounds = 0;
        let (db, start) = loop {
            rounds += 1;
            if rounds > 5 {
                return Err(StoreError::Corrupt(format!(
                    "{}: could not open nor create the log store",
                    path.display()
                )));
            }
            if std::fs::symlink_metadata(path).is_err() {
                match create_new(path, &opts)? {
                    Some(db) => match no_panic(|| start_db(&db, path)) {
                        Ok(start) => break (db, start),
                        Err(e) => return Err(e),
                    },
                    // Somebody else (another daemon) created it meanwhile: open theirs.
                    None => continue,
                }
            }
            refuse_too_new(path)?;
            let why = match open_rw(path, &opts) {
                Ok(db) => match no_panic(|| start_db(&db, path)) {
                    Ok(start) => break (db, start),
                    // The file opens but its own tables cannot be read.
                    Err(StoreError::Corrupt(why)) if moved_aside.is_none() => why,
                    Err(e) => return Err(e),
                },
                Err(OpenFailure::Unreadable(why)) if moved_aside.is_none() => why,
                Err(f) => return Err(f.into_error(path)),
            };
            let aside = move_aside(path)?;
            let note = format!(
                "the log store {} could not be opened ({why}); moved it aside to {} and started a new one",
                path.display(),
                aside.display()
            );
            tracing::error!("{note}");
            notes.push(note);
            moved_aside = Some((path.to_owned(), aside));
        };
        let Start {
            unclean,
            interrupted,
            next_instance,
            loaded,
        } = start;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            db: RwLock::new(DbState::Open(Db::Rw(db.clone()))),
            path: path.to_owned(),
            opts,
            tx: Mutex::new(Some(tx)),
            queued_bytes: AtomicUsize::new(0),
            room_cv: (Mutex::new(()), std::sync::Condvar::new()),
            room_notify: tokio::sync::Notify::new(),
            dropped_lines: AtomicU64::new(0),
            next_instance: AtomicU64::new(next_instance),
            live: RwLock::new(HashMap::new()),
            writer: Mutex::new(None),
            health: Mutex::new(StoreHealth {
                writable: true,
                ..StoreHealth::default()
            }),
        });
        let writer = Writer::new(db, shared.clone(), loaded);
        let io_err = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        // Two stages, in order: one thread compresses blocks while the other writes and
        // waits on fsync, so compression and the disk overlap instead of adding up.
        let (tx_w, rx_w) = mpsc::channel();
        let compressor = std::thread::Builder::new()
            .name("bpm-store-compress".into())
            .spawn(move || {
                for msg in rx {
                    if let Msg::Block(b) = &msg {
                        b.compress();
                    }
                    if tx_w.send(msg).is_err() {
                        return;
                    }
                }
            })
            .map_err(io_err)?;
        let handle = std::thread::Builder::new()
            .name("bpm-store-writer".into())
            .spawn(move || {
                let db = writer.run(rx_w);
                let _ = compressor.join();
                db
            })
            .map_err(io_err)?;
        *shared.writer.lock().unwrap() = Some(handle);
        Ok(Opened {
            store: Store { shared },
            moved_aside,
            notes,
            unclean,
            interrupted,
        })
    }

    /// Open the store read-only, for reading without a daemon (post-crash investigation).
    /// Fails with [`StoreError::Locked`] while a daemon holds it.
    ///
    /// A store left open by a daemon that died (kill -9, power loss) cannot be read as it
    /// is: redb must first recover it, which only a writable open does. That recovery is
    /// done here (the same one the next daemon's open would do), and nothing else: bpm's
    /// own record of the unclean shutdown and of the interrupted instances is left for the
    /// next daemon, which still stops the orphans and records the recovery.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let locked = || StoreError::Locked {
            path: path.to_owned(),
        };
        // redb may panic on a damaged file rather than return an error.
        let open_ro = || {
            writer::quietly(|| ReadOnlyDatabase::open(path)).unwrap_or_else(|p| {
                Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                    writer::panic_message(&p),
                )))
            })
        };
        let db = match open_ro() {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(locked()),
            Err(redb::DatabaseError::RepairAborted) => {
                match open_rw(path, &StoreOptions::default()) {
                    Ok(db) => drop(db),
                    Err(OpenFailure::Locked) => return Err(locked()),
                    Err(f) => return Err(f.into_error(path)),
                }
                match open_ro() {
                    Ok(db) => db,
                    Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(locked()),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let version = no_panic(|| schema::stored_version(&db))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Store {
            shared: Arc::new(Shared {
                db: RwLock::new(DbState::Open(Db::Ro(Arc::new(db)))),
                path: path.to_owned(),
                opts: StoreOptions::default(),
                tx: Mutex::new(None),
                queued_bytes: AtomicUsize::new(0),
                room_cv: (Mutex::new(()), std::sync::Condvar::new()),
                room_notify: tokio::sync::Notify::new(),
                dropped_lines: AtomicU64::new(0),
                next_instance: AtomicU64::new(0),
                live: RwLock::new(HashMap::new()),
                writer: Mutex::new(None),
                health: Mutex::new(StoreHealth::default()),
            }),
        })
    }

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
        // reopened it since).
        drop(taken);
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
        };
        let live = Arc::new(Live::new(meta.clone(), self.shared.opts.max_line));
        self.shared
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live.clone());
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

    /// Persisted process specs, by name.
    pub fn processes(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // redb may panic on damaged pages: see `damage.rs`.
        no_panic(|| self.processes_unguarded())
    }

    fn processes_unguarded(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.shared.db()?.begin_read()?;
        let t = txn.open_table(PROCESSES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every process name the store knows: persisted specs and processes with instances.
    pub fn process_names(&self) -> Result<Vec<String>, StoreError> {
        // redb may panic on damaged pages: see `damage.rs`.
        no_panic(|| self.process_names_unguarded())
    }

    fn process_names_unguarded(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.shared.db()?.begin_read()?;
        let mut names = BTreeSet::new();
        for row in txn.open_table(PROCESSES)?.iter()? {
            names.insert(row?.0.value().to_owned());
        }
        let idx = txn.open_table(PROCESS_INSTANCES)?;
        let mut cursor: Option<String> = None;
        // Skip from one name to the next instead of walking every instance.
        loop {
            let next = match &cursor {
                None => idx.first()?.map(|(k, _)| k.value().0.to_owned()),
                Some(c) => {
                    let mut after = c.clone();
                    after.push('\u{10FFFF}');
                    idx.range((after.as_str(), 0u8, 0u64)..)?
                        .next()
                        .transpose()?
                        .map(|(k, _)| k.value().0.to_owned())
                }
            };
            match next {
                Some(n) => {
                    names.insert(n.clone());
                    cursor = Some(n);
                }
                None => break,
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The retained instances of a process, oldest first.
    pub fn instances(
        &self,
        process: &str,
        kind: InstanceKind,
    ) -> Result<Vec<InstanceMeta>, StoreError> {
        // redb may panic on damaged pages: see `damage.rs`.
        no_panic(|| self.instances_unguarded(process, kind))
    }

    fn instances_unguarded(
        &self,
        process: &str,
        kind: InstanceKind,
    ) -> Result<Vec<InstanceMeta>, StoreError> {
        let txn = self.shared.db()?.begin_read()?;
        let idx = txn.open_table(PROCESS_INSTANCES)?;
        let metas = txn.open_table(INSTANCES)?;
        let mut out = Vec::new();
        for row in idx.range((process, kind.code(), 0u64)..=(process, kind.code(), u64::MAX))? {
            let id = row?.0.value().2;
            out.push(self.meta_in(&metas, id)?);
        }
        // An instance that has just begun is live before its start is committed.
        let known: BTreeSet<u64> = out.iter().map(|m| m.id).collect();
        for live in self.shared.lives() {
            if live.meta.process == process && live.meta.kind == kind && !known.contains(&live.id) {
                out.push(self.meta_in(&metas, live.id)?);
            }
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    fn meta_in(
        &self,
        metas: &redb::ReadOnlyTable<u64, &[u8]>,
        id: u64,
    ) -> Result<InstanceMeta, StoreError> {
        let live = self.shared.live(id);
        let mut meta: InstanceMeta = match (metas.get(id)?, &live) {
            (Some(v), _) => schema::decode("instance", v.value())?,
            (None, Some(live)) => live.meta.clone(),
            (None, None) => return Err(StoreError::NoSuchInstance(id)),
        };
        if let Some(live) = live {
            // The stored counters trail the live ones by up to a commit interval.
            meta.next_seq = meta.next_seq.max(*live.seq_tx.borrow());
            // An end queued but not yet durable is known already.
            if let Some((exit, ended_us)) = live.lock().exit.clone() {
                meta.exit = Some(exit);
                meta.ended_us = Some(ended_us);
            }
        }
        Ok(meta)
    }

    /// One instance by its stable number. An instance that has just begun may not be
    /// committed yet; it is then described from its live state.
    pub fn instance(&self, id: u64) -> Result<InstanceMeta, StoreError> {
        // redb may panic on damaged pages: see `damage.rs`.
        no_panic(|| self.instance_unguarded(id))
    }

    fn instance_unguarded(&self, id: u64) -> Result<InstanceMeta, StoreError> {
        let txn = self.shared.db()?.begin_read()?;
        let metas = txn.open_table(INSTANCES)?;
        self.meta_in(&metas, id)
    }

    /// Resolve an index: -1 the newest, -2 the one before; 0 the oldest retained, 1 the next.
    pub fn resolve(
        &self,
        process: &str,
        kind: InstanceKind,
        index: i64,
    ) -> Result<InstanceMeta, StoreError> {
        let mut list = self.instances(process, kind)?;
        if list.is_empty() {
            return Err(StoreError::NoInstances {
                process: process.to_owned(),
                kind,
                known: self.process_names()?,
            });
        }
        let n = list.len() as i64;
        let i = if index < 0 { n + index } else { index };
        if i < 0 || i >= n {
            return Err(StoreError::IndexOutOfRange {
                process: process.to_owned(),
                kind,
                index,
                count: list.len(),
            });
        }
        Ok(list.swap_remove(i as usize))
    }

    /// How many of an instance's retained lines pass `filter`. Without a filter this is
    /// read from the instance's counters; with one, every block is scanned.
    pub fn count(&self, meta: &InstanceMeta, filter: &Filter) -> Result<u64, StoreError> {
        if *filter == Filter::default() {
            return Ok(meta.next_seq - meta.first_seq);
        }
        let mut n = 0;
        self.scan_blocks(meta.id, meta.first_seq, &mut |view| {
            n += view.metas().filter(|m| filter.accepts(m)).count() as u64;
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    /// Visit an instance's blocks in order, starting with the one holding `from_seq`:
    /// older blocks from redb, the newest from the ring (never touching the disk for them).
    ///
    /// A stored block that cannot be read (damaged on disk) is skipped instead of failing
    /// the whole instance; returns how many lines were skipped that way.
    pub fn scan_blocks(
        &self,
        id: u64,
        from_seq: u64,
        f: &mut dyn FnMut(BlockView<'_>) -> ControlFlow<()>,
    ) -> Result<u64, StoreError> {
        let ring = self.shared.live(id).map(|l| l.snapshot());
        let ring_start = ring.as_ref().map_or(u64::MAX, |r| r.start_seq);
        let mut unreadable = 0;
        if from_seq < ring_start {
            let txn = self.shared.db()?.begin_read()?;
            let (flow, skipped) = damage::scan(&txn, id, from_seq, ring_start, f)?;
            unreadable = skipped;
            if flow.is_break() {
                return Ok(unreadable);
            }
        }
        if let Some(ring) = &ring {
            for view in ring.views() {
                if view.end_seq() <= from_seq {
                    continue;
                }
                if f(view).is_break() {
                    return Ok(unreadable);
                }
            }
        }
        Ok(unreadable)
    }

    /// Visit an instance's blocks newest first. Damaged blocks are skipped, as in
    /// [`Self::scan_blocks`]; returns how many lines were skipped.
    pub fn scan_blocks_rev(
        &self,
        id: u64,
        f: &mut dyn FnMut(BlockView<'_>) -> ControlFlow<()>,
    ) -> Result<u64, StoreError> {
        let ring = self.shared.live(id).map(|l| l.snapshot());
        let ring_start = ring.as_ref().map_or(u64::MAX, |r| r.start_seq);
        if let Some(ring) = &ring {
            for view in ring.views().rev() {
                if f(view).is_break() {
                    return Ok(0);
                }
            }
        }
        let txn = self.shared.db()?.begin_read()?;
        let (_, unreadable) = damage::scan_rev(&txn, id, ring_start, f)?;
        Ok(unreadable)
    }

    /// Read lines of one instance, oldest first. Lines of damaged blocks are left out; see
    /// [`Self::read_report`] for how many.
    pub fn read(&self, id: u64, window: Window, filter: &Filter) -> Result<Vec<Line>, StoreError> {
        self.read_report(id, window, filter).map(|r| r.lines)
    }

    /// [`Self::read`], with the count of lines that could not be read.
    pub fn read_report(
        &self,
        id: u64,
        window: Window,
        filter: &Filter,
    ) -> Result<ReadResult, StoreError> {
        let mut out = Vec::new();
        let (from, to, limit) = match window {
            Window::Tail(n) => return self.read_tail(id, n, filter),
            Window::Head(n) => (0, u64::MAX, n),
            Window::Seqs { from, to } => (from, to, usize::MAX),
        };
        if limit == 0 || from >= to {
            return Ok(ReadResult::default());
        }
        let unreadable_lines = self.scan_blocks(id, from, &mut |view| {
            for (i, m) in view.metas().enumerate() {
                let seq = view.first_seq + i as u64;
                if seq >= to {
                    return ControlFlow::Break(());
                }
                if seq >= from && filter.accepts(&m) {
                    out.push(view.line(i as u32, &m, id));
                    if out.len() >= limit {
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        })?;
        Ok(ReadResult {
            lines: out,
            unreadable_lines,
        })
    }

    fn read_tail(&self, id: u64, n: usize, filter: &Filter) -> Result<ReadResult, StoreError> {
        let mut out = Vec::new();
        if n == 0 {
            return Ok(ReadResult::default());
        }
        let unreadable_lines = self.scan_blocks_rev(id, &mut |view| {
            let metas: Vec<_> = view.metas().collect();
            for (i, m) in metas.iter().enumerate().rev() {
                if filter.accepts(m) {
                    out.push(view.line(i as u32, m, id));
                    if out.len() >= n {
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        })?;
        out.reverse();
        Ok(ReadResult {
            lines: out,
            unreadable_lines,
        })
    }

    /// A process's most recent events (all events when `process` is None), oldest first.
    pub fn events(&self, process: Option<&str>, limit: usize) -> Result<Vec<Event>, StoreError> {
        // redb may panic on damaged pages: see `damage.rs`.
        no_panic(|| self.events_unguarded(process, limit))
    }

    fn events_unguarded(
        &self,
        process: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let txn = self.shared.db()?.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        match process {
            Some(p) => {
                let idx = txn.open_table(PROCESS_EVENTS)?;
                for row in idx.range((p, 0u64)..=(p, u64::MAX))?.rev().take(limit) {
                    let id = row?.0.value().1;
                    if let Some(v) = events.get(id)? {
                        out.push(schema::decode("event", v.value())?);
                    }
                }
            }
            None => {
                for row in events.iter()?.rev().take(limit) {
                    out.push(schema::decode("event", row?.1.value())?);
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Follow an instance from `from_seq`: history first, then live lines as they come,
    /// with no gap and no duplicate between the two.
    pub fn follow(&self, id: u64, from_seq: u64) -> Follower {
        Follower {
            store: self.clone(),
            id,
            next: from_seq,
        }
    }
}

/// A subscription to one instance's lines. See [`Store::follow`].
pub struct Follower {
    store: Store,
    id: u64,
    next: u64,
}

impl Follower {
    /// The sequence number of the next line this follower will return.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next lines (at most `max`), waiting for new ones while the instance is live.
    /// `Ok(None)` once the instance has ended and every line was returned: as soon as its
    /// end is queued (the last lines come from the ring), not once it is durable.
    pub async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<Line>>, StoreError> {
        loop {
            let live = self.store.shared.live(self.id);
            // Subscribe before reading: a line appended after the read wakes us up.
            let mut rx = live.as_ref().map(|l| l.seq_tx.subscribe());
            // Ended before the read: the read sees every line there will ever be.
            let ended = live.as_ref().is_some_and(|l| l.lock().ended);
            let from = self.next;
            let lines = match live.as_ref().and_then(|l| l.read_from(from, max)) {
                Some(lines) => lines,
                None => {
                    let store = self.store.clone();
                    let id = self.id;
                    let window = Window::Seqs {
                        from,
                        to: from.saturating_add(max as u64),
                    };
                    tokio::task::spawn_blocking(move || store.read(id, window, &Filter::default()))
                        .await
                        .map_err(|e| StoreError::Db(e.to_string()))??
                }
            };
            if let Some(last) = lines.last() {
                self.next = last.seq + 1;
                return Ok(Some(lines));
            }
            // Nothing stored from `from` up to the ring (lines dropped from the store):
            // go on with the ring.
            if let Some(start) = live.as_ref().map(|l| l.start_seq())
                && start > from
            {
                self.next = start.min(from.saturating_add(max as u64));
                continue;
            }
            if ended {
                return Ok(None);
            }
            match &mut rx {
                // Not live: everything it will ever have is in the store, and was read.
                None => return Ok(None),
                // Wakes on a new line, and when the ended instance leaves the live set.
                Some(rx) => {
                    let _ = rx.changed().await;
                }
            }
        }
    }
}

enum OpenFailure {
    Locked,
    Unreadable(String),
    Other(StoreError),
}

impl OpenFailure {
    fn into_error(self, path: &Path) -> StoreError {
        match self {
            OpenFailure::Locked => StoreError::Locked {
                path: path.to_owned(),
            },
            OpenFailure::Unreadable(why) => {
                StoreError::Corrupt(format!("{}: {why}", path.display()))
            }
            OpenFailure::Other(e) => e,
        }
    }
}

fn open_rw(path: &Path, opts: &StoreOptions) -> Result<Database, OpenFailure> {
    open_db(path, opts, true)
}

fn open_db(path: &Path, opts: &StoreOptions, create: bool) -> Result<Database, OpenFailure> {
    let mut builder = Database::builder();
    builder.set_cache_size(opts.cache_bytes);
    // redb may panic on some malformed files rather than return an error: treat that as
    // an unreadable file too, so the daemon moves it aside instead of crash-looping.
    let result = writer::quietly(|| {
        if create {
            builder.create(path)
        } else {
            builder.open(path)
        }
    });
    match result {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenFailure::Locked),
        Ok(Err(redb::DatabaseError::UpgradeRequired(v))) => {
            Err(OpenFailure::Other(StoreError::Format {
                path: path.to_owned(),
                detail: format!("file format version {v}"),
            }))
        }
        // A file cut short (inside its header: "failed to fill whole buffer") or with bad
        // contents is unreadable; anything else (permissions, a failing disk) is not the
        // file's fault and is reported as it is.
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Err(OpenFailure::Other(StoreError::Io {
                path: path.to_owned(),
                source: e,
            }))
        }
        Ok(Err(e)) => Err(OpenFailure::Unreadable(e.to_string())),
        Err(p) => Err(OpenFailure::Unreadable(format!(
            "redb could not read it: {}",
            writer::panic_message(&p)
        ))),
    }
}

/// Reopen the store after a failure (the writer's way back). Never creates the file.
pub(crate) fn reopen(path: &Path, opts: &StoreOptions) -> Result<Database, StoreError> {
    open_db(path, opts, false).map_err(|f| match f {
        OpenFailure::Locked => StoreError::Disk(format!(
            "{} is still held (a read in progress); retrying",
            path.display()
        )),
        OpenFailure::Unreadable(why) => {
            StoreError::Disk(format!("{} cannot be reopened: {why}", path.display()))
        }
        OpenFailure::Other(StoreError::Io { source, .. }) => {
            StoreError::Disk(format!("{}: {source}", path.display()))
        }
        OpenFailure::Other(e) => e,
    })
}

/// What opening found in the store.
struct Start {
    unclean: bool,
    interrupted: Vec<InstanceMeta>,
    next_instance: u64,
    loaded: writer::Loaded,
}

/// Bring an opened store to the current schema, mark it open, and read what the store
/// handle and the writer start from.
fn start_db(db: &Database, path: &Path) -> Result<Start, StoreError> {
    schema::migrate(db, path)?;
    let (unclean, interrupted) = mark_open(db)?;
    let next_instance = {
        let txn = db.begin_read()?;
        let t = txn.open_table(INSTANCES)?;
        t.last()?.map_or(1, |(k, _)| k.value() + 1)
    };
    Ok(Start {
        unclean,
        interrupted,
        next_instance,
        loaded: writer::Loaded::read(db)?,
    })
}

/// Create a new store at `path`: made complete under a temporary name in the same
/// directory, then renamed into place (never over an existing file). `None` when a file
/// appeared at `path` meanwhile.
fn create_new(path: &Path, opts: &StoreOptions) -> Result<Option<Database>, StoreError> {
    let name = file_name(path);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let tmp = path.with_file_name(format!(".{name}.new-{}-{nanos}", std::process::id()));
    let made = (|| {
        let db = open_rw(&tmp, opts).map_err(|f| f.into_error(&tmp))?;
        no_panic(|| schema::migrate(&db, path))?;
        match rename_noreplace(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(Some(db))
    })();
    if !matches!(made, Ok(Some(_))) {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// Rename `from` to `to` unless `to` exists (then `AlreadyExists`), atomically where the
/// file system allows it.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(std::io::ErrorKind::AlreadyExists.into()),
        // A file system without RENAME_NOREPLACE: a hard link never replaces either.
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(std::io::Error::from(e)),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned())
}

/// Move an unreadable store aside, to a name that no file has (the evidence of an earlier
/// failure is never overwritten, even by two starts within the same second).
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = file_name(path);
    for n in 0u32.. {
        let aside = if n == 0 {
            path.with_file_name(format!("{name}.corrupt-{stamp}"))
        } else {
            path.with_file_name(format!("{name}.corrupt-{stamp}.{n}"))
        };
        match rename_noreplace(path, &aside) {
            Ok(()) => return Ok(aside),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    unreachable!("some name is free")
}

/// Refuse a store written by a newer bpm before opening it for writing, which may already
/// change the file. Anything else that goes wrong here is left to the normal open to report.
fn refuse_too_new(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    let found = writer::quietly(|| {
        let db = ReadOnlyDatabase::open(path).ok()?;
        schema::stored_version(&db).ok()
    });
    match found {
        Ok(Some(found)) if found > SCHEMA_VERSION => Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Mark the store open (not cleanly closed) and end the instances the previous daemon left
/// live. Returns whether the previous close was unclean, and those instances.
fn mark_open(db: &Database) -> Result<(bool, Vec<InstanceMeta>), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    let unclean;
    let mut interrupted = Vec::new();
    {
        let mut meta = txn.open_table(META)?;
        let clean = meta.get(CLEAN_KEY)?.map(|v| v.value());
        // A new store has no flag: nothing was left behind.
        unclean = clean == Some(0);
        meta.insert(CLEAN_KEY, 0)?;
        let mut t = txn.open_table(INSTANCES)?;
        let mut live = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            let m: InstanceMeta = schema::decode("instance", v.value())?;
            if m.ended_us.is_none() {
                live.push(m);
            }
        }
        let now = now_us();
        for mut m in live {
            m.ended_us = Some(now);
            m.exit = Some(ExitStatus::Unknown);
            t.insert(m.id, schema::encode(&m).as_slice())?;
            interrupted.push(m);
        }
    }
    txn.commit()?;
    Ok((unclean, interrupted))
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
