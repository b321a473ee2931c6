//! The single writer: one thread owns redb's write side and commits in groups.
//!
//! Messages arrive in order over one channel (so an instance's end is applied after its
//! last block). A group is committed at most [`super::StoreOptions::commit_interval`] after
//! its first message, sooner when it grows large, and at once for a flush or an instance's
//! end, so the last lines before a crash are durable before anyone reacts to the crash.
//! Retention runs here too, between groups: it never blocks capture, which only queues.
//!
//! The writer never stops on a failure. A group that cannot be written (a full disk, an
//! I/O error) stays in memory, within the queue budget, and the writer reopens the database
//! with backoff and replays the group into it; storing resumes by itself once the disk
//! takes writes again. Beyond the budget the oldest blocks are given up and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::block::{self, Block, BlockView};
use super::model::{Event, EventKind, ExitStatus, InstanceKind, InstanceMeta, now_us};
use super::schema::{
    self, BLOCKS, EVENTS, INSTANCE_NUMBERS, INSTANCES, META, PROCESS_EVENTS, PROCESS_INSTANCES,
    PROCESS_NUMBERS, PROCESSES,
};
use super::{Limits, Shared, StoreError, StoreOptions};

mod heal;
mod retention;

type Done = oneshot::Sender<Result<(), StoreError>>;

pub(crate) enum Msg {
    Block(Arc<Block>),
    Start(Box<InstanceMeta>),
    End {
        id: u64,
        exit: ExitStatus,
        ended_us: i64,
        next_seq: u64,
        dropped: u64,
        done: Done,
    },
    Event {
        process: Option<String>,
        instance: Option<u64>,
        kind: EventKind,
        ts_us: i64,
    },
    PutProcess {
        name: String,
        spec: Vec<u8>,
    },
    RemoveProcess {
        name: String,
    },
    /// Remove every instance of a process that is not live, with its lines; `done` once
    /// that is durable.
    RemoveLogs {
        process: String,
        done: Done,
    },
    Limits {
        process: String,
        limits: Limits,
    },
    Flush(Done),
}

/// One change to the store, as the open group keeps it: applied to the write transaction
/// as it comes, and kept until the group commits so that it can be replayed into a new
/// transaction after a failure. Every op is idempotent.
enum Op {
    Block {
        block: Arc<Block>,
        stored: Vec<u8>,
    },
    Start {
        process: String,
        kind: u8,
        id: u64,
        number: u64,
    },
    Event {
        id: u64,
        process: Option<String>,
        bytes: Vec<u8>,
    },
    PutProcess {
        name: String,
        spec: Vec<u8>,
    },
    RemoveProcess {
        name: String,
    },
    /// Remove an instance; `blocks: false` leaves its (damaged) blocks in place.
    RemoveInstance {
        id: u64,
        process: String,
        kind: u8,
        blocks: bool,
    },
    /// Remove an instance's blocks before `below`.
    TrimBlocks {
        id: u64,
        below: u64,
    },
    PutMeta {
        id: u64,
        bytes: Vec<u8>,
    },
    TrimEvents {
        below: u64,
    },
}

fn apply_op(txn: &WriteTransaction, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Block { block, stored } => {
            let key = (block.instance, block.first_seq);
            txn.open_table(BLOCKS)?.insert(key, stored.as_slice())?;
        }
        Op::Start {
            process,
            kind,
            id,
            number,
        } => {
            txn.open_table(PROCESS_INSTANCES)?
                .insert((process.as_str(), *kind, *id), ())?;
            txn.open_table(INSTANCE_NUMBERS)?.insert(*id, *number)?;
            let mut last = txn.open_table(PROCESS_NUMBERS)?;
            let before = last
                .get((process.as_str(), *kind))?
                .map_or(0, |v| v.value());
            if *number > before {
                last.insert((process.as_str(), *kind), *number)?;
            }
            // Ids are never given twice, also once retention removed the newest instance
            // (the filter file and clients name instances by id).
            let mut meta = txn.open_table(META)?;
            let next = meta
                .get(schema::NEXT_INSTANCE_KEY)?
                .map_or(0, |v| v.value());
            if *id >= next {
                meta.insert(schema::NEXT_INSTANCE_KEY, *id + 1)?;
            }
        }
        Op::Event { id, process, bytes } => {
            txn.open_table(EVENTS)?.insert(*id, bytes.as_slice())?;
            if let Some(p) = process {
                txn.open_table(PROCESS_EVENTS)?
                    .insert((p.as_str(), *id), ())?;
            }
        }
        Op::PutProcess { name, spec } => {
            txn.open_table(PROCESSES)?
                .insert(name.as_str(), spec.as_slice())?;
        }
        Op::RemoveProcess { name } => {
            txn.open_table(PROCESSES)?.remove(name.as_str())?;
        }
        Op::RemoveInstance {
            id,
            process,
            kind,
            blocks,
        } => {
            txn.open_table(INSTANCES)?.remove(*id)?;
            if *blocks {
                txn.open_table(BLOCKS)?
                    .retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false)?;
            }
            txn.open_table(PROCESS_INSTANCES)?
                .remove((process.as_str(), *kind, *id))?;
            txn.open_table(INSTANCE_NUMBERS)?.remove(*id)?;
        }
        Op::TrimBlocks { id, below } => {
            txn.open_table(BLOCKS)?
                .retain_in((*id, 0)..(*id, *below), |_, _| false)?;
        }
        Op::PutMeta { id, bytes } => {
            txn.open_table(INSTANCES)?.insert(*id, bytes.as_slice())?;
        }
        Op::TrimEvents { below } => {
            let mut removed = Vec::new();
            txn.open_table(EVENTS)?.retain_in(..*below, |k, v| {
                if let Ok(ev) = schema::decode::<Event>("event", v)
                    && let Some(p) = ev.process
                {
                    removed.push((p, k));
                }
                false
            })?;
            let mut idx = txn.open_table(PROCESS_EVENTS)?;
            for (p, k) in removed {
                idx.remove((p.as_str(), k))?;
            }
        }
    }
    Ok(())
}

/// What the writer remembers of each retained instance, for retention.
#[derive(Clone)]
struct Retained {
    process: String,
    kind: InstanceKind,
    bytes: u64,
    live: bool,
}

/// The store cannot be written; the writer retries with backoff.
struct Failing {
    since: Instant,
    since_us: i64,
    error: String,
    next_try: Instant,
    backoff: Duration,
    attempts: u64,
    /// Lines given up during this failure.
    dropped: u64,
    /// Lines given up per instance, not yet recorded as `LinesDropped` events.
    dropped_by_instance: BTreeMap<u64, u64>,
    /// Errors since the last log line, and when that was.
    unlogged: u64,
    logged_at: Instant,
}

/// Errors are logged at once the first time, then summed up at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Writer {
    /// `None` after a failure, until it is reopened.
    db: Option<Arc<Database>>,
    /// Weak, so that dropping every store handle closes the channel and ends the thread.
    shared: Weak<Shared>,
    opts: StoreOptions,
    txn: Option<WriteTransaction>,
    /// The open group: every change since the last commit, in order.
    group: Vec<Op>,
    group_started: Instant,
    /// Uncompressed bytes and lines of the blocks in the open group.
    group_bytes: usize,
    group_lines: u64,
    waiters: Vec<Done>,
    /// Processes whose logs go at the next retention pass (`Msg::RemoveLogs`), and who
    /// waits for it.
    remove_logs: Vec<(String, Done)>,
    /// Instances whose end is in the open group: leave the live map at commit.
    ended: Vec<u64>,
    /// Metadata of live instances (and of ended ones until their end commits).
    metas: HashMap<u64, InstanceMeta>,
    dirty: HashSet<u64>,
    retained: BTreeMap<u64, Retained>,
    limits: HashMap<String, Limits>,
    next_event: u64,
    retention_due: bool,
    failing: Option<Failing>,
    /// Instances whose blocks could not be walked: retention removes them without touching
    /// their blocks, and never trims them.
    damaged: HashSet<u64>,
    /// The instance retention is working on (blamed if retention fails).
    retaining: Option<u64>,
    /// Failures healed since the store was opened.
    recoveries: u64,
}

/// What the writer starts from, read when the store is opened.
pub(crate) struct Loaded {
    retained: BTreeMap<u64, Retained>,
    next_event: u64,
}

impl Loaded {
    pub(crate) fn read(db: &Database) -> Result<Loaded, StoreError> {
        let mut retained = BTreeMap::new();
        let txn = db.begin_read()?;
        let t = txn.open_table(INSTANCES)?;
        for row in t.iter()? {
            let (k, v) = row?;
            let m: InstanceMeta = schema::decode("instance", v.value())?;
            retained.insert(
                k.value(),
                Retained {
                    process: m.process,
                    kind: m.kind,
                    bytes: m.stored_bytes,
                    live: false,
                },
            );
        }
        let e = txn.open_table(EVENTS)?;
        let next_event = e.last()?.map_or(1, |(k, _)| k.value() + 1);
        Ok(Loaded {
            retained,
            next_event,
        })
    }
}

/// Events beyond this many are removed, oldest first.
const MAX_EVENTS: u64 = 100_000;

/// Run `f`, turning a panic into an error. redb may panic rather than return an error on
/// some damaged pages (and a bug anywhere below must not end the writer), so the writer and
/// the readers call redb through this: the transaction that panicked is dropped, and the
/// writer reopens the database before its next write.
///
/// Such a panic is expected, and turned into an error that says what happened: the panic
/// hook does not print it (a damaged store would otherwise fill stderr with backtraces).
pub(crate) fn no_panic<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match quietly(f) {
        Ok(r) => r,
        Err(panic) => Err(StoreError::Corrupt(format!(
            "the log store library failed on damaged data ({})",
            panic_message(&panic)
        ))),
    }
}

/// `catch_unwind`, without the panic hook's report (the caller reports the panic).
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

thread_local! {
    /// This thread is inside [`no_panic`]: a panic is caught and reported as an error.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

impl Writer {
    pub(crate) fn new(db: Arc<Database>, shared: Arc<Shared>, loaded: Loaded) -> Writer {
        let Loaded {
            retained,
            next_event,
        } = loaded;
        Writer {
            db: Some(db),
            opts: shared.opts.clone(),
            shared: Arc::downgrade(&shared),
            txn: None,
            group: Vec::new(),
            group_started: Instant::now(),
            group_bytes: 0,
            group_lines: 0,
            waiters: Vec::new(),
            remove_logs: Vec::new(),
            ended: Vec::new(),
            metas: HashMap::new(),
            dirty: HashSet::new(),
            retained,
            limits: HashMap::new(),
            next_event,
            retention_due: true,
            failing: None,
            damaged: HashSet::new(),
            retaining: None,
            recoveries: 0,
        }
    }

    /// The writer's loop. Never ends on a store error (nor on a panic): it keeps the lines
    /// it could not write and reopens the database with backoff. Returns the database once
    /// the inbox closes, for the clean-shutdown mark (`None` if it could not be written).
    pub(crate) fn run(mut self, rx: Receiver<Msg>) -> Option<Arc<Database>> {
        loop {
            let wait = self.wait();
            let got = rx.recv_timeout(wait);
            let disconnected = matches!(got, Err(RecvTimeoutError::Disconnected));
            self.guarded(|w| w.step(got, &rx));
            if disconnected {
                // Last chance for a failed group: one more attempt, at once.
                if self.failing.is_some() {
                    self.guarded(Writer::recover);
                }
                if self.failing.is_some() {
                    self.give_up();
                    return None;
                }
                return self.db.take();
            }
        }
    }

    /// How long to wait for the next message.
    fn wait(&self) -> Duration {
        if let Some(f) = &self.failing {
            return f
                .next_try
                .saturating_duration_since(Instant::now())
                .min(self.opts.seal_interval);
        }
        if self.group_open() {
            self.opts
                .commit_interval
                .saturating_sub(self.group_started.elapsed())
        } else {
            // Idle: wake up now and then to seal the open blocks of quiet instances.
            self.opts.seal_interval
        }
    }

    fn group_open(&self) -> bool {
        self.txn.is_some() || !self.group.is_empty()
    }

    /// Run one step of the loop; a panic in it is a failure like any other.
    fn guarded(&mut self, f: impl FnOnce(&mut Writer)) {
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| f(self))) {
            let e = StoreError::Corrupt(format!(
                "the log store writer failed ({})",
                panic_message(&panic)
            ));
            self.blame_retention();
            self.fail(e);
        }
    }

    fn step(&mut self, got: Result<Msg, RecvTimeoutError>, rx: &Receiver<Msg>) {
        match got {
            Ok(msg) => {
                let flush = matches!(msg, Msg::Flush(_));
                if self.apply(msg) {
                    if flush {
                        // Everything appended before the flush was asked for: seal
                        // the open blocks and take them into this group.
                        self.seal_live();
                        for msg in rx.try_iter().take(100_000) {
                            self.apply(msg);
                        }
                    }
                    self.commit();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                self.seal_live();
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.seal_live();
                self.commit();
                return;
            }
        }
        if let Some(f) = &self.failing {
            if Instant::now() >= f.next_try {
                self.recover();
            }
        } else if self.group_open()
            && (self.group_started.elapsed() >= self.opts.commit_interval
                || self.group_bytes >= self.opts.group_max_bytes)
        {
            self.commit();
        }
        if self.retention_due && !self.group_open() && self.failing.is_none() {
            self.retention_due = false;
            self.retention();
        }
    }

    fn txn(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.txn.is_none() {
            let db = self.db.as_ref().ok_or_else(|| {
                StoreError::Unavailable("the log store is being reopened".to_owned())
            })?;
            let mut txn = db.begin_write()?;
            // Saves the allocator state with each commit so that reopening after a crash
            // does not walk the whole file (reopen must stay fast as the store grows).
            txn.set_quick_repair(true);
            if self.group.is_empty() {
                self.group_started = Instant::now();
            }
            self.txn = Some(txn);
        }
        Ok(self.txn.as_ref().expect("just opened"))
    }

    /// Add an op to the open group, and to the write transaction unless the store is failing.
    fn push(&mut self, op: Op) {
        if let Err(e) = self.push_inner(op) {
            self.fail(e);
        }
        if self.failing.is_some() {
            self.enforce_budget();
        }
    }

    /// [`Self::push`], but a failure is returned instead of handled. The op is in the group
    /// either way.
    fn push_inner(&mut self, op: Op) -> Result<(), StoreError> {
        if !self.group_open() {
            self.group_started = Instant::now();
        }
        if let Op::Block { block, .. } = &op {
            self.group_bytes += block.bytes.len();
            self.group_lines += u64::from(block.view().count);
        }
        let r = if self.failing.is_none() {
            self.txn().and_then(|txn| apply_op(txn, &op))
        } else {
            Ok(())
        };
        self.group.push(op);
        r
    }

    /// Seal the open blocks of live instances, so quiet output still becomes durable.
    fn seal_live(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for live in shared.lives() {
            let msgs = live.seal_into(&mut live.lock(), &shared);
            for msg in msgs {
                self.apply(msg);
            }
        }
    }

    /// Apply one message to the open group. Returns whether the group must commit now.
    fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Block(block) => {
                let stored = block.take_stored();
                let len = stored.len() as u64;
                let lines = u64::from(block.view().count);
                if let Some(m) = self.metas.get_mut(&block.instance) {
                    m.stored_bytes += len;
                    m.next_seq = m.next_seq.max(block.first_seq + lines);
                    self.dirty.insert(block.instance);
                }
                if let Some(r) = self.retained.get_mut(&block.instance) {
                    r.bytes += len;
                }
                // Out of the queue and into the group: room for capture to go on.
                if let Some(shared) = self.shared.upgrade() {
                    shared
                        .queued_bytes
                        .fetch_sub(block.bytes.len(), Ordering::AcqRel);
                    shared.signal_room();
                }
                self.retention_due = true;
                self.push(Op::Block { block, stored });
                false
            }
            Msg::Start(meta) => {
                self.retained.insert(
                    meta.id,
                    Retained {
                        process: meta.process.clone(),
                        kind: meta.kind,
                        bytes: 0,
                        live: true,
                    },
                );
                self.dirty.insert(meta.id);
                let op = Op::Start {
                    process: meta.process.clone(),
                    kind: meta.kind.code(),
                    id: meta.id,
                    number: meta.number,
                };
                self.metas.insert(meta.id, *meta);
                self.retention_due = true;
                self.push(op);
                false
            }
            Msg::End {
                id,
                exit,
                ended_us,
                next_seq,
                dropped,
                done,
            } => {
                self.waiters.push(done);
                if let Some(m) = self.metas.get_mut(&id) {
                    m.ended_us = Some(ended_us);
                    m.exit = Some(exit);
                    m.next_seq = m.next_seq.max(next_seq);
                    self.dirty.insert(id);
                }
                if let Some(r) = self.retained.get_mut(&id) {
                    r.live = false;
                }
                if dropped > 0 {
                    let process = self.metas.get(&id).map(|m| m.process.clone());
                    self.event(
                        process,
                        Some(id),
                        EventKind::LinesDropped { count: dropped },
                        ended_us,
                    );
                }
                self.ended.push(id);
                true
            }
            Msg::Event {
                process,
                instance,
                kind,
                ts_us,
            } => {
                self.event(process, instance, kind, ts_us);
                false
            }
            Msg::PutProcess { name, spec } => {
                self.push(Op::PutProcess { name, spec });
                true
            }
            Msg::RemoveProcess { name } => {
                self.push(Op::RemoveProcess { name });
                true
            }
            Msg::RemoveLogs { process, done } => {
                self.remove_logs.push((process, done));
                self.retention_due = true;
                false
            }
            Msg::Limits { process, limits } => {
                self.limits.insert(process, limits);
                self.retention_due = true;
                false
            }
            Msg::Flush(done) => {
                self.waiters.push(done);
                true
            }
        }
    }

    fn event(
        &mut self,
        process: Option<String>,
        instance: Option<u64>,
        kind: EventKind,
        ts_us: i64,
    ) {
        if let (EventKind::LinesDropped { count }, Some(id)) = (&kind, instance)
            && let Some(m) = self.metas.get_mut(&id)
        {
            m.dropped_lines += count;
            self.dirty.insert(id);
        }
        self.event_only(process, instance, kind, ts_us);
    }

    /// Record an event without touching the instances' counters.
    fn event_only(
        &mut self,
        process: Option<String>,
        instance: Option<u64>,
        kind: EventKind,
        ts_us: i64,
    ) {
        let id = self.next_event;
        self.next_event += 1;
        let ev = Event {
            id,
            ts_us,
            process,
            instance,
            kind,
        };
        let bytes = schema::encode(&ev);
        self.push(Op::Event {
            id,
            process: ev.process,
            bytes,
        });
    }

    /// Commit the open group and answer everyone waiting on it.
    fn commit(&mut self) {
        if let Some(f) = &self.failing {
            // The group stays in memory and is retried; those waiting hear it now.
            let e = f.error.clone();
            self.answer_failed(&e);
            return;
        }
        match self.commit_inner() {
            Ok(()) => self.committed(),
            Err(e) => self.fail(e),
        }
    }

    fn commit_inner(&mut self) -> Result<(), StoreError> {
        if !self.group_open() && self.waiters.is_empty() && self.ended.is_empty() {
            return Ok(());
        }
        let dirty: Vec<(u64, Vec<u8>)> = self
            .dirty
            .iter()
            .filter_map(|id| self.metas.get(id).map(|m| (*id, schema::encode(m))))
            .collect();
        let txn = self.txn()?;
        {
            let mut t = txn.open_table(INSTANCES)?;
            for (id, bytes) in &dirty {
                t.insert(*id, bytes.as_slice())?;
            }
        }
        let txn = self.txn.take().expect("opened above");
        #[cfg(test)]
        std::thread::sleep(self.opts.commit_delay);
        txn.commit()?;
        self.dirty.clear();
        Ok(())
    }

    /// The open group is durable: tell the ring, the live map and the waiters.
    fn committed(&mut self) {
        let mut blocks = false;
        for op in self.group.drain(..) {
            if let Op::Block { block, .. } = op {
                block.mark_committed();
                blocks = true;
            }
        }
        self.group_bytes = 0;
        self.group_lines = 0;
        let shared = self.shared.upgrade();
        if let Some(shared) = &shared {
            shared.generation.fetch_add(1, Ordering::Release);
        }
        if blocks && let Some(shared) = &shared {
            // The filter builder waits for the writer to be quiet (see `filter_builder`).
            shared.filters.note_write();
        }
        for id in self.ended.drain(..) {
            self.metas.remove(&id);
            if let Some(shared) = &shared {
                shared.remove_live(id);
            }
        }
        if let Some(shared) = &shared {
            for live in shared.lives() {
                live.after_commit(shared);
            }
        }
        for w in self.waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
    }

    fn answer_failed(&mut self, error: &str) {
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(StoreError::WriteFailed(error.to_owned())));
        }
    }
}
