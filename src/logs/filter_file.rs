//! The filter file: each stored block's filter record (see [`super::filter`]), in a redb
//! file of its own beside the store (`logs.redb` -> `logs.filters.redb`), mode 0600.
//!
//! Why a file of its own: filter records are small rows, and in the store itself redb
//! placed the small pages of every later commit among them, all through the file, so a
//! stretch of damaged disk took the whole store instead of a few blocks. The store's layout
//! is now the same with filters as without them.
//!
//! The file is advisory. A search consults a block's record where the file has one and
//! reads the block otherwise, so a missing, stale, unreadable or damaged file only costs
//! reads, never a wrong answer:
//!
//! - the file names the store it belongs to (the store's random `store_id`, kept in its
//!   `meta` table): a file of another store (one moved aside and started over) is deleted
//!   and built again;
//! - each instance's records count only if the file has the instance's start time, as
//!   the store has it (an instance id the file knows from an older copy of the store does
//!   not bring that copy's filters along);
//! - each record carries a checksum of its key and bytes (redb does not check pages on
//!   read): a record that does not match is ignored;
//! - a record whose block is gone (retention) is ignored; records of removed instances
//!   and trimmed blocks are removed by the builder later;
//! - redb's panics on a damaged file are caught, like the store's own (see `damage.rs`).
//!
//! Tables (integers little endian inside records):
//!
//! ```text
//! meta:      &str -> u64              format (1), store_id
//! filters:   (instance id, first seq) -> filter record (filter.rs) + u64 checksum
//! instances: instance id -> (started µs, covered seq, trimmed seq)
//! ```
//!
//! `covered`: every block of the instance starting before it has a record or never will
//! (it could not be read). `trimmed`: records of blocks before it were removed.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};

use super::model::InstanceMeta;
use super::schema::{self, INSTANCES};
use super::writer::{panic_message, quietly};

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const FILTERS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("filters");
pub(super) const COVERED: TableDefinition<u64, (i64, u64, u64)> = TableDefinition::new("instances");

const FORMAT: u64 = 1;
const FORMAT_KEY: &str = "format";
const STORE_KEY: &str = "store_id";
/// The filter file's page cache. A search reads every record of the instances it asks
/// about; with the records in memory that is a walk of a few microseconds per hundred
/// blocks, from disk a read per page. Records take about 5% of the stored blocks, so this
/// holds those of a 640 MB store (the cache grows only as pages are read).
const CACHE_BYTES: usize = 32 << 20;

/// The filter file of the store at `store`: `logs.redb` -> `logs.filters.redb`.
pub fn path_for(store: &Path) -> PathBuf {
    let name = store
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    let stem = name.strip_suffix(".redb").unwrap_or(&name);
    store.with_file_name(format!("{stem}.filters.redb"))
}

/// A 64-bit hash of a record's key and bytes: four independent lanes of FNV's prime
/// (with the high half folded in after each word) over 32 bytes at a time, so the
/// multiplications do not wait on each other, then folded together. Enough to tell a
/// record from damage, and cheap beside a search that checks thousands of records (a
/// single chain of multiplications was a third of a rare literal's search).
fn checksum(id: u64, first: u64, record: &[u8]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    fn mix(h: &mut u64, w: u64) {
        *h = (*h ^ w).wrapping_mul(PRIME);
        *h ^= *h >> 32;
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let mut lanes: [u64; 4] = [
        0xcbf2_9ce4_8422_2325 ^ id,
        0x9e37_79b9_7f4a_7c15 ^ first,
        0x6a09_e667_f3bc_c908,
        0xbb67_ae85_84ca_a73b,
    ];
    let mut blocks = record.chunks_exact(32);
    for b in &mut blocks {
        for (k, lane) in lanes.iter_mut().enumerate() {
            mix(lane, word(&b[k * 8..k * 8 + 8]));
        }
    }
    let mut h = lanes[0];
    for lane in &lanes[1..] {
        mix(&mut h, *lane);
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        mix(&mut h, word(w));
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    mix(&mut h, u64::from_le_bytes(last));
    h ^ record.len() as u64
}

/// A record as the file keeps it: the record, then its checksum.
pub(super) fn seal(id: u64, first: u64, mut record: Vec<u8>) -> Vec<u8> {
    let sum = checksum(id, first, &record);
    record.extend_from_slice(&sum.to_le_bytes());
    record
}

/// The record of a value read from the file, `None` when it does not match its checksum.
pub(super) fn unseal(id: u64, first: u64, value: &[u8]) -> Option<&[u8]> {
    let (record, sum) = value.split_at_checked(value.len().checked_sub(8)?)?;
    let sum = u64::from_le_bytes(sum.try_into().ok()?);
    (checksum(id, first, record) == sum).then_some(record)
}

/// Why the filter file could not be used (the builder starts it over or backs off).
#[derive(Debug)]
pub(super) struct FileTrouble {
    pub what: String,
    /// The file's contents are at fault (damaged, another store's, another format): it
    /// is deleted. Otherwise (a full disk, an I/O error, held elsewhere) it is kept, and
    /// tried again later.
    pub damaged: bool,
}

impl FileTrouble {
    pub fn io(what: impl std::fmt::Display) -> FileTrouble {
        FileTrouble {
            what: what.to_string(),
            damaged: false,
        }
    }
    fn damaged(what: impl std::fmt::Display) -> FileTrouble {
        FileTrouble {
            what: what.to_string(),
            damaged: true,
        }
    }
}

/// redb errors on the filter file: I/O errors are the disk's (but a file cut short or
/// with bad contents is the file's), anything else the file's.
pub(super) fn trouble(e: impl Into<redb::Error>) -> FileTrouble {
    match e.into() {
        redb::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            FileTrouble::damaged(e)
        }
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
            FileTrouble::io(e)
        }
        e => FileTrouble::damaged(e),
    }
}

/// Run `f` on the filter file, a redb panic (a damaged page) being a damaged file.
pub(super) fn guarded<T>(f: impl FnOnce() -> Result<T, FileTrouble>) -> Result<T, FileTrouble> {
    quietly(f).unwrap_or_else(|p| {
        Err(FileTrouble::damaged(format!(
            "redb failed on it: {}",
            panic_message(&p)
        )))
    })
}

/// The filter file's state, shared by the store, its searches and the builder thread.
pub(crate) struct FilterState {
    pub(super) path: PathBuf,
    /// The store's id (`store_id` in its meta table); 0 for a store without filters.
    pub(super) store_id: u64,
    pub(super) enabled: bool,
    /// The open file, `None` until the builder opened it and while it starts it over.
    db: RwLock<Option<Arc<Database>>>,
    /// A search could not read the file: the builder checks it (and starts it over).
    pub(super) suspect: AtomicBool,
    /// The open file's (device, inode): a file replaced or deleted under the store is
    /// opened again (or made again).
    identity: Mutex<Option<(u64, u64)>>,
    /// When the writer last committed blocks, in ms since `epoch`.
    last_write_ms: AtomicU64,
    epoch: Instant,
    /// The builder's stop flag and progress count. Shared with the builder thread apart
    /// from the store, so that it waits without keeping the store alive.
    pub(super) wake: Arc<Wake>,
    pub(super) builder: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Stop and progress signals between the store and its filter builder.
#[derive(Default)]
pub(super) struct Wake {
    signal: Mutex<Signal>,
    /// Wakes the builder (to stop) and those waiting for it to catch up.
    cv: Condvar,
}

#[derive(Default)]
struct Signal {
    stop: bool,
    batches: u64,
}

impl Wake {
    /// Wait up to `timeout` for a stop (true) or any wake-up.
    pub(super) fn wait_stop(&self, timeout: Duration) -> bool {
        let s = self.signal.lock().unwrap_or_else(|p| p.into_inner());
        if s.stop {
            return true;
        }
        let (s, _) = self
            .cv
            .wait_timeout(s, timeout)
            .unwrap_or_else(|p| p.into_inner());
        s.stop
    }

    pub(super) fn stopping(&self) -> bool {
        self.signal.lock().unwrap_or_else(|p| p.into_inner()).stop
    }

    fn set_stop(&self) {
        let mut s = self.signal.lock().unwrap_or_else(|p| p.into_inner());
        s.stop = true;
        self.cv.notify_all();
    }
}

impl Drop for FilterState {
    /// The store is gone (dropped without a close): the builder ends at its next wake-up.
    fn drop(&mut self) {
        self.wake.set_stop();
    }
}

impl FilterState {
    pub(super) fn new(store: &Path, store_id: u64, enabled: bool) -> FilterState {
        FilterState {
            path: path_for(store),
            store_id,
            enabled,
            db: RwLock::new(None),
            suspect: AtomicBool::new(false),
            identity: Mutex::new(None),
            last_write_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: Arc::new(Wake::default()),
            builder: Mutex::new(None),
        }
    }

    /// The writer committed blocks.
    pub(crate) fn note_write(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_write_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the writer last committed blocks.
    pub(super) fn since_write(&self) -> Duration {
        let last = self.last_write_ms.load(Ordering::Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// The open file, for reading.
    pub(super) fn db(&self) -> Option<Arc<Database>> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_db(&self, db: Option<Arc<Database>>) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = db;
    }

    /// A read transaction on the file, `None` when there is no usable file (a search then
    /// reads every block).
    pub(super) fn snapshot(&self) -> Option<ReadTransaction> {
        let db = self.db()?;
        match guarded(|| db.begin_read().map_err(trouble)) {
            Ok(txn) => Some(txn),
            Err(_) => {
                self.suspect.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.wake.stopping()
    }

    /// The writer's last block commit, as a mark that changes with each.
    pub(super) fn write_mark(&self) -> u64 {
        self.last_write_ms.load(Ordering::Relaxed)
    }

    /// The builder wrote a batch (or found nothing to do): wake those waiting on it.
    pub(super) fn note_progress(&self) {
        let mut s = self.wake.signal.lock().unwrap_or_else(|p| p.into_inner());
        s.batches += 1;
        self.wake.cv.notify_all();
    }

    /// Wait up to `timeout` for the builder's next batch; false once it is stopping.
    pub(super) fn wait_progress(&self, timeout: Duration) -> bool {
        let s = self.wake.signal.lock().unwrap_or_else(|p| p.into_inner());
        let seen = s.batches;
        let (s, _) = self
            .wake
            .cv
            .wait_timeout_while(s, timeout, |s| s.batches == seen && !s.stop)
            .unwrap_or_else(|p| p.into_inner());
        !s.stop
    }

    /// Stop the builder and let go of the file (the store is closing).
    pub(super) fn stop(&self) {
        self.wake.set_stop();
        let handle = self
            .builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
        self.set_db(None);
    }

    /// The (device, inode) of the file at the path now.
    fn file_identity(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::symlink_metadata(&self.path).ok()?;
        Some((m.dev(), m.ino()))
    }

    /// Open the file, or start it over when it is not this store's or cannot be read.
    /// A file opened before is kept unless it was replaced or deleted meanwhile.
    pub(super) fn open(&self) -> Result<Arc<Database>, FileTrouble> {
        if let Some(db) = self.db() {
            let opened = *self.identity.lock().unwrap_or_else(|p| p.into_inner());
            if opened.is_some() && opened == self.file_identity() {
                return Ok(db);
            }
            self.set_db(None);
        }
        let db = match self.open_existing() {
            Ok(Some(db)) => db,
            Ok(None) => self.create()?,
            Err(t) if t.damaged => {
                tracing::info!(
                    "the filter file {} is of no use ({}); building it again",
                    self.path.display(),
                    t.what
                );
                self.remove()?;
                self.create()?
            }
            Err(t) => return Err(t),
        };
        let db = Arc::new(db);
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = self.file_identity();
        self.set_db(Some(db.clone()));
        Ok(db)
    }

    /// The existing file, if it is this store's. `None` when there is none.
    fn open_existing(&self) -> Result<Option<Database>, FileTrouble> {
        if std::fs::symlink_metadata(&self.path).is_err() {
            return Ok(None);
        }
        let db = guarded(|| {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .open(&self.path)
                .map_err(|e| match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => {
                        FileTrouble::io("it is held open elsewhere")
                    }
                    redb::DatabaseError::Storage(redb::StorageError::Io(e))
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                        ) =>
                    {
                        FileTrouble::io(e)
                    }
                    e => FileTrouble::damaged(e),
                })
        })?;
        let ids = guarded(|| {
            let txn = db.begin_read().map_err(trouble)?;
            let meta = txn.open_table(META).map_err(trouble)?;
            let get = |k| -> Result<Option<u64>, FileTrouble> {
                Ok(meta.get(k).map_err(trouble)?.map(|v| v.value()))
            };
            Ok((get(FORMAT_KEY)?, get(STORE_KEY)?))
        })?;
        match ids {
            (Some(FORMAT), Some(id)) if id == self.store_id => {
                verify(&db)?;
                Ok(Some(db))
            }
            (Some(FORMAT), Some(_)) => Err(FileTrouble::damaged("it belongs to another store")),
            _ => Err(FileTrouble::damaged("it is of an unknown format")),
        }
    }

    /// A new, empty file for this store, mode 0600 (it holds traces of the lines).
    fn create(&self) -> Result<Database, FileTrouble> {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|_| {
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
            })
            .map_err(FileTrouble::io)?;
        let db = guarded(|| {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&self.path)
                .map_err(trouble)
        })?;
        guarded(|| {
            let txn = db.begin_write().map_err(trouble)?;
            {
                let mut meta = txn.open_table(META).map_err(trouble)?;
                meta.insert(FORMAT_KEY, FORMAT).map_err(trouble)?;
                meta.insert(STORE_KEY, self.store_id).map_err(trouble)?;
                txn.open_table(FILTERS).map_err(trouble)?;
                txn.open_table(COVERED).map_err(trouble)?;
            }
            txn.commit().map_err(trouble)
        })?;
        Ok(db)
    }

    /// Let go of the file and delete it.
    pub(super) fn remove(&self) -> Result<(), FileTrouble> {
        self.set_db(None);
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FileTrouble::io(e)),
        }
    }
}

/// Read the whole file, checking every record: a file with damage anywhere is built
/// again rather than trusted (redb does not check its pages on read).
fn verify(db: &Database) -> Result<(), FileTrouble> {
    guarded(|| {
        let txn = db.begin_read().map_err(trouble)?;
        for row in txn
            .open_table(FILTERS)
            .map_err(trouble)?
            .iter()
            .map_err(trouble)?
        {
            let (k, v) = row.map_err(trouble)?;
            let (id, first) = k.value();
            if unseal(id, first, v.value()).is_none() {
                return Err(FileTrouble::damaged(format!(
                    "the record of block ({id}, {first}) is damaged"
                )));
            }
        }
        covered(&txn)?;
        Ok(())
    })
}

/// The start time of instance `id` as the store has it (what its records are bound to).
pub(super) fn started_us(store: &ReadTransaction, id: u64) -> Option<i64> {
    let t = store.open_table(INSTANCES).ok()?;
    let v = t.get(id).ok()??;
    let m: InstanceMeta = schema::decode("instance", v.value()).ok()?;
    Some(m.started_us)
}

/// What the file covers of an instance: (started µs, covered seq, trimmed seq).
pub(super) type Covered = (i64, u64, u64);

pub(super) type Records = ReadOnlyTable<(u64, u64), &'static [u8]>;

/// The records table of the file, if its records of instance `id` count: the file knows
/// the instance with the start time `started_us`. Errors and panics mean no records.
pub(super) fn records_of(file: &ReadTransaction, id: u64, started_us: i64) -> Option<Records> {
    guarded(|| {
        let covered = file.open_table(COVERED).map_err(trouble)?;
        let known = covered.get(id).map_err(trouble)?.map(|v| v.value().0);
        if known != Some(started_us) {
            return Ok(None);
        }
        Ok(Some(file.open_table(FILTERS).map_err(trouble)?))
    })
    .ok()
    .flatten()
}

/// `f(first seq, record)` of the next record of `rows`, its checksum checked (`None` for
/// a record that does not match). `Err` when the file cannot be read on (the caller reads
/// the rest of the blocks).
pub(super) fn next_record<T>(
    rows: &mut redb::Range<'static, (u64, u64), &'static [u8]>,
    f: impl FnOnce(u64, Option<&[u8]>) -> T,
) -> Result<Option<T>, FileTrouble> {
    guarded(|| {
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        let (k, v) = row.map_err(trouble)?;
        let (id, first) = k.value();
        Ok(Some(f(first, unseal(id, first, v.value()))))
    })
}

/// Counts and bytes of the records in the file, and the file's size.
pub(super) fn stats(state: &FilterState) -> (u64, u64, u64) {
    let size = std::fs::metadata(&state.path).map_or(0, |m| m.len());
    let Some(file) = state.snapshot() else {
        return (0, 0, size);
    };
    guarded(|| {
        let (mut n, mut bytes) = (0, 0);
        for row in file
            .open_table(FILTERS)
            .map_err(trouble)?
            .iter()
            .map_err(trouble)?
        {
            n += 1;
            bytes += row.map_err(trouble)?.1.value().len() as u64;
        }
        Ok((n, bytes, size))
    })
    .unwrap_or((0, 0, size))
}

/// What the file says it covers of each instance: id -> (started µs, covered, trimmed).
pub(super) fn covered(file: &ReadTransaction) -> Result<Vec<(u64, Covered)>, FileTrouble> {
    guarded(|| {
        let t = file.open_table(COVERED).map_err(trouble)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(trouble)? {
            let (k, v) = row.map_err(trouble)?;
            out.push((k.value(), v.value()));
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_bound_to_its_key_and_bytes() {
        let v = seal(3, 40, vec![1, 2, 3]);
        assert_eq!(unseal(3, 40, &v), Some(&[1u8, 2, 3][..]));
        assert_eq!(unseal(3, 41, &v), None);
        assert_eq!(unseal(4, 40, &v), None);
        let mut bad = v.clone();
        bad[1] ^= 1;
        assert_eq!(unseal(3, 40, &bad), None);
        assert_eq!(unseal(3, 40, &[0; 8]), None);
        assert_eq!(unseal(3, 40, &[0; 3]), None);
    }

    #[test]
    fn the_file_sits_beside_the_store() {
        assert_eq!(
            path_for(Path::new("/d/logs.redb")),
            Path::new("/d/logs.filters.redb")
        );
        assert_eq!(path_for(Path::new("/d/s")), Path::new("/d/s.filters.redb"));
    }
}
