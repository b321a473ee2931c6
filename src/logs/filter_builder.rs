//! The filter builder: one background thread that gives every stored block its filter
//! record in the filter file (`filter_file.rs`), off the capture and commit path.
//!
//! It runs at the lowest CPU priority (`SCHED_IDLE`, or nice 19 where that is refused),
//! and only once the writer has committed no block for [`StoreOptions::filter_idle`] and
//! nothing waits to be written, so an ingest burst never shares its cores with it. Each
//! pass takes the store's database fresh (the writer drops and reopens it after an I/O
//! error), reads committed blocks that have no record yet in one short read transaction,
//! decompresses them and builds their records here, then writes them in one commit of the
//! filter file, many at a time. Blocks stored before filters existed (older stores) get
//! theirs the same way.
//!
//! Nothing on the filter file reaches the store or capture: a failure to write it (a full
//! disk) makes the builder back off and try later, and a damaged file, or one of another
//! store, is deleted and built again. It writes nothing while the store itself fails to
//! write, nor when the disk is nearly full. Records of instances removed by retention,
//! and of blocks trimmed from the front of an instance, are removed in later passes
//! (instance ids are never given twice: `schema::NEXT_INSTANCE_KEY`).
//!
//! [`StoreOptions::filter_idle`]: super::StoreOptions::filter_idle

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use super::block::{self, BlockView};
use super::filter_file::{self, COVERED, Covered, FILTERS, FileTrouble, Wake, guarded, trouble};
use super::model::InstanceMeta;
use super::schema::{self, BLOCKS, INSTANCES};
use super::writer::no_panic;
use super::{Db, Shared, Store, StoreError};

/// Stored (compressed) bytes read per batch: one commit of the filter file.
const BATCH_BYTES: usize = 8 << 20;
/// The builder does not write while the disk has less room than this.
const DISK_RESERVE: u64 = 256 << 20;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A pass that finds nothing to do is repeated at least this often even without new
/// blocks: it notices a filter file deleted or replaced, and instances removed.
const RECHECK: Duration = Duration::from_secs(5);

/// Start the builder thread of a writable store.
pub(super) fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    let weak = Arc::downgrade(shared);
    let wake = shared.filters.wake.clone();
    let idle = shared.opts.filter_idle;
    let handle = std::thread::Builder::new()
        .name("bpm-store-filters".into())
        .spawn(move || run(weak, &wake, idle))?;
    *shared
        .filters
        .builder
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(handle);
    Ok(())
}

/// Lower this thread's CPU priority as far as it goes: `SCHED_IDLE` runs it only when a
/// core has nothing else to do; nice 19 is the fallback.
#[allow(unsafe_code)]
fn lowest_priority() {
    use nix::libc;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system calls on the calling thread (pid 0 / its own tid) with a
    // valid, initialized argument; no memory is shared with the kernel beyond the call.
    let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    if !idle {
        let tid = nix::unistd::gettid().as_raw() as libc::id_t;
        // SAFETY: as above.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
    }
}

/// What stopped a pass.
enum Trouble {
    /// The filter file (see [`FileTrouble`]).
    File(FileTrouble),
    /// The store cannot be read now (being reopened, an I/O error), or must not be
    /// added to (failing writes, a nearly full disk).
    Store(String),
}

impl From<FileTrouble> for Trouble {
    fn from(t: FileTrouble) -> Trouble {
        Trouble::File(t)
    }
}

/// The builder's loop. It waits on `wake` without holding the store, so a store dropped
/// without a close is not kept open by it.
fn run(weak: Weak<Shared>, wake: &Wake, idle: Duration) {
    lowest_priority();
    let mut backoff = Duration::ZERO;
    let mut hurry = false;
    // The writer's mark when a pass last found nothing to do, and when that was.
    let mut caught_up: Option<(u64, Instant)> = None;
    loop {
        if hurry {
            hurry = false;
            if wake.stopping() {
                return;
            }
        } else if wake.wait_stop(backoff.max(idle / 4)) {
            return;
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let state = &shared.filters;
        // Only once the writer is quiet: nothing queued, no block committed for a while.
        if shared.queued_bytes.load(Ordering::Acquire) > 0 || state.since_write() < idle {
            continue;
        }
        // Nothing new since the last pass found nothing to do: look again only now and then.
        if let Some((mark, at)) = caught_up
            && mark == state.write_mark()
            && at.elapsed() < RECHECK
            && !state.suspect.load(Ordering::Relaxed)
        {
            continue;
        }
        match pass(&shared) {
            Ok(more) => {
                backoff = Duration::ZERO;
                state.note_progress();
                if more {
                    caught_up = None;
                    hurry = true;
                    continue;
                }
                caught_up = Some((state.write_mark(), Instant::now()));
                backoff = idle;
            }
            Err(Trouble::Store(why)) => {
                tracing::debug!("filter builder waits: {why}");
                caught_up = None;
                backoff = (idle * 4).max(BACKOFF_MIN);
            }
            Err(Trouble::File(t)) => {
                tracing::warn!(
                    "the filter file {} could not be written ({}); searches read every block meanwhile, trying again later",
                    state.path.display(),
                    t.what
                );
                if t.damaged {
                    let _ = state.remove();
                } else {
                    // redb refuses every later transaction after an I/O error.
                    state.set_db(None);
                }
                caught_up = None;
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
            }
        }
    }
}

/// One instance as the store has it, and what the file covers of it.
struct Todo {
    id: u64,
    started_us: i64,
    /// Blocks starting before this have a record (or never will).
    covered: u64,
    trimmed: u64,
    first_seq: u64,
    next_seq: u64,
}

/// A block read for building, or the end of an instance's range.
struct Read {
    id: u64,
    first: u64,
    stored: Vec<u8>,
}

/// One pass: clean up, then build one batch. Returns whether more may be left to build.
fn pass(shared: &Shared) -> Result<bool, Trouble> {
    if !shared.writable() {
        return Err(Trouble::Store("the store fails to write".into()));
    }
    let state = &shared.filters;
    if state.suspect.swap(false, Ordering::Relaxed) {
        // A search could not read the file: see whether it opens and reads as a whole.
        state.set_db(None);
    }
    let file = state.open()?;
    if let Some(free) = free_bytes(&state.path)
        && free < DISK_RESERVE
    {
        return Err(Trouble::Store(format!(
            "the disk has {free} bytes free; filters wait for room"
        )));
    }
    let db = match shared.db() {
        Ok(Db::Rw(db)) => db,
        Ok(Db::Ro(_)) => return Err(Trouble::Store("the store is read-only".into())),
        Err(e) => return Err(Trouble::Store(e.to_string())),
    };
    let known = {
        let txn = guarded(|| file.begin_read().map_err(trouble))?;
        filter_file::covered(&txn)?
    };
    let (todos, gone, reads, done) = read_batch(&db, &known)?;
    let built: Vec<(u64, u64, Vec<u8>)> = reads
        .into_iter()
        .filter_map(|r| {
            if state.stopping() {
                return None;
            }
            build(&r).map(|rec| (r.id, r.first, filter_file::seal(r.id, r.first, rec)))
        })
        .collect();
    if state.stopping() {
        return Ok(false);
    }
    write(&file, &todos, &gone, &built, &done)?;
    // Every pass moves each instance it reached forward, so this ends.
    Ok(todos
        .iter()
        .any(|t| done.get(&t.id).copied().unwrap_or(t.covered) < t.next_seq))
}

/// The record of a stored block, `None` when it does not decode (it is then read by
/// every search, as a block without a record is).
fn build(r: &Read) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let raw = block::stored_raw(r.first, &r.stored, &mut buf).ok()?;
    let view = BlockView::parse(r.first, raw).ok()?;
    Some(super::filter::build(&view, r.stored.len()))
}

type Batch = (Vec<Todo>, Vec<u64>, Vec<Read>, HashMap<u64, u64>);

/// In one read transaction of the store: its instances beside what the file covers
/// (`known`), the instances the file has and the store does not (`gone`), and up to
/// [`BATCH_BYTES`] of blocks without records, with how far each instance is covered then
/// (`done`).
fn read_batch(db: &Database, known: &[(u64, Covered)]) -> Result<Batch, Trouble> {
    let known: HashMap<u64, Covered> = known.iter().copied().collect();
    let store_err = |e: StoreError| Trouble::Store(e.to_string());
    let txn = db.begin_read().map_err(|e| store_err(e.into()))?;
    let metas = no_panic(|| instances(&txn)).map_err(store_err)?;
    let mut todos = Vec::new();
    for m in &metas {
        let (covered, trimmed) = match known.get(&m.id) {
            Some(&(started, covered, trimmed)) if started == m.started_us => (covered, trimmed),
            // Unknown to the file, or an instance of the same id from another copy of the
            // store: from its first block.
            _ => (0, 0),
        };
        todos.push(Todo {
            id: m.id,
            started_us: m.started_us,
            covered,
            trimmed,
            first_seq: m.first_seq,
            next_seq: m.next_seq,
        });
    }
    let live: std::collections::HashSet<(u64, i64)> =
        metas.iter().map(|m| (m.id, m.started_us)).collect();
    let gone: Vec<u64> = known
        .iter()
        .filter(|(id, (started, ..))| !live.contains(&(**id, *started)))
        .map(|(id, _)| *id)
        .collect();
    let mut reads = Vec::new();
    let mut done = HashMap::new();
    let mut bytes = 0;
    for t in todos.iter().filter(|t| t.covered < t.next_seq) {
        if bytes >= BATCH_BYTES {
            break;
        }
        let got = no_panic(|| {
            let blocks = txn.open_table(BLOCKS)?;
            let mut to = t.next_seq;
            for row in blocks.range((t.id, t.covered)..(t.id, t.next_seq))? {
                let (k, v) = row?;
                let first = k.value().1;
                if bytes >= BATCH_BYTES {
                    // Every block before this one is in the batch.
                    to = first;
                    break;
                }
                bytes += v.value().len();
                reads.push(Read {
                    id: t.id,
                    first,
                    stored: v.value().to_vec(),
                });
            }
            Ok(to)
        });
        match got {
            Ok(to) => {
                done.insert(t.id, to);
            }
            Err(e) if e.is_disk() => return Err(store_err(e)),
            // Damaged pages: the rest of this instance has no records (it is read by
            // every search); the blocks read so far get theirs.
            Err(_) => {
                done.insert(t.id, t.next_seq);
            }
        }
    }
    Ok((todos, gone, reads, done))
}

fn instances(txn: &ReadTransaction) -> Result<Vec<InstanceMeta>, StoreError> {
    let t = txn.open_table(INSTANCES)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        out.push(schema::decode("instance", row?.1.value())?);
    }
    Ok(out)
}

/// One commit of the filter file: the records built, how far each instance is covered,
/// and the records of removed instances and trimmed blocks removed.
fn write(
    file: &Database,
    todos: &[Todo],
    gone: &[u64],
    built: &[(u64, u64, Vec<u8>)],
    done: &HashMap<u64, u64>,
) -> Result<(), FileTrouble> {
    let trims: Vec<&Todo> = todos.iter().filter(|t| t.first_seq > t.trimmed).collect();
    if built.is_empty() && gone.is_empty() && done.is_empty() && trims.is_empty() {
        return Ok(());
    }
    guarded(|| {
        let txn = file.begin_write().map_err(trouble)?;
        {
            let mut filters = txn.open_table(FILTERS).map_err(trouble)?;
            let mut covered = txn.open_table(COVERED).map_err(trouble)?;
            for &id in gone {
                filters
                    .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                    .map_err(trouble)?;
                covered.remove(id).map_err(trouble)?;
            }
            for t in todos {
                let to = done.get(&t.id).copied();
                if to.is_none() && t.first_seq <= t.trimmed {
                    continue;
                }
                if t.first_seq > t.trimmed {
                    filters
                        .retain_in((t.id, 0)..(t.id, t.first_seq), |_, _| false)
                        .map_err(trouble)?;
                }
                let value = (
                    t.started_us,
                    to.unwrap_or(t.covered),
                    t.first_seq.max(t.trimmed),
                );
                covered.insert(t.id, value).map_err(trouble)?;
            }
            for (id, first, rec) in built {
                filters
                    .insert((*id, *first), rec.as_slice())
                    .map_err(trouble)?;
            }
        }
        txn.commit().map_err(trouble)
    })
}

/// Free bytes on the file system of `path`, when it can be told.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let dir = path.parent()?;
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

impl Store {
    /// Lines of stored blocks that have no filter record yet and will get one: 0 once the
    /// builder caught up (and always with filters off, or read-only). Reads the instance
    /// table of the store and of the filter file: for tests and benches.
    pub fn filters_pending(&self) -> Result<u64, StoreError> {
        let state = &self.shared.filters;
        if !state.enabled {
            return Ok(0);
        }
        let known: HashMap<u64, Covered> = match state.snapshot() {
            Some(file) => filter_file::covered(&file)
                .map(|v| v.into_iter().collect())
                .unwrap_or_default(),
            None => HashMap::new(),
        };
        no_panic(|| {
            let txn = self.shared.db()?.begin_read()?;
            let mut pending = 0;
            for m in instances(&txn)? {
                let covered = match known.get(&m.id) {
                    Some(&(started, covered, _)) if started == m.started_us => covered,
                    _ => 0,
                };
                pending += m.next_seq.saturating_sub(covered.max(m.first_seq));
            }
            Ok(pending)
        })
    }

    /// Wait until [`Self::filters_pending`] is 0, at most `timeout`. False when it is not
    /// by then (or the store is closing).
    pub fn wait_for_filters(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if matches!(self.filters_pending(), Ok(0)) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.shared.filters.wait_progress(left) {
                return false;
            }
        }
    }
}
