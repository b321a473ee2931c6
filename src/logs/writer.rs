//! The single writer: one thread owns redb's write side and commits in groups.
//!
//! Messages arrive in order over one channel (so an instance's end is applied after its
//! last block). A group is committed at most [`super::StoreOptions::commit_interval`] after
//! its first message, sooner when it grows large, and at once for a flush or an instance's
//! end, so the last lines before a crash are durable before anyone reacts to the crash.
//! Retention runs here too, between groups: it never blocks capture, which only queues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Instant;

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::block::{Block, BlockView};
use super::model::{Event, EventKind, ExitStatus, InstanceKind, InstanceMeta, now_us};
use super::schema::{
    self, BLOCKS, EVENTS, INSTANCES, PROCESS_EVENTS, PROCESS_INSTANCES, PROCESSES,
};
use super::{Limits, Shared, StoreError, StoreOptions};

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
    Limits {
        process: String,
        limits: Limits,
    },
    Flush(Done),
}

/// What the writer remembers of each retained instance, for retention.
struct Retained {
    process: String,
    kind: InstanceKind,
    bytes: u64,
    live: bool,
}

pub(crate) struct Writer {
    db: Arc<Database>,
    /// Weak, so that dropping every store handle closes the channel and ends the thread.
    shared: Weak<Shared>,
    opts: StoreOptions,
    txn: Option<WriteTransaction>,
    txn_started: Instant,
    txn_bytes: usize,
    /// Blocks in the open group, marked committed once it commits.
    blocks: Vec<Arc<Block>>,
    waiters: Vec<Done>,
    /// Instances whose end is in the open group: leave the live map at commit.
    ended: Vec<u64>,
    /// Metadata of live instances (and of ended ones until their end commits).
    metas: HashMap<u64, InstanceMeta>,
    dirty: HashSet<u64>,
    retained: BTreeMap<u64, Retained>,
    limits: HashMap<String, Limits>,
    next_event: u64,
    retention_due: bool,
}

/// Events beyond this many are removed, oldest first.
const MAX_EVENTS: u64 = 100_000;

impl Writer {
    pub(crate) fn new(db: Arc<Database>, shared: Arc<Shared>) -> Result<Writer, StoreError> {
        let mut retained = BTreeMap::new();
        let next_event;
        {
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
            next_event = e.last()?.map_or(1, |(k, _)| k.value() + 1);
        }
        Ok(Writer {
            db,
            opts: shared.opts.clone(),
            shared: Arc::downgrade(&shared),
            txn: None,
            txn_started: Instant::now(),
            txn_bytes: 0,
            blocks: Vec::new(),
            waiters: Vec::new(),
            ended: Vec::new(),
            metas: HashMap::new(),
            dirty: HashSet::new(),
            retained,
            limits: HashMap::new(),
            next_event,
            retention_due: true,
        })
    }

    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        let interval = self.opts.commit_interval;
        loop {
            let wait = if self.txn.is_some() {
                interval.saturating_sub(self.txn_started.elapsed())
            } else {
                // Idle: wake up now and then to seal the open blocks of quiet instances.
                self.opts.seal_interval
            };
            match rx.recv_timeout(wait) {
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
            if self.txn.is_some()
                && (self.txn_started.elapsed() >= interval
                    || self.txn_bytes >= self.opts.group_max_bytes)
            {
                self.commit();
            }
            if self.retention_due && self.txn.is_none() {
                self.retention_due = false;
                if let Err(e) = self.retain() {
                    tracing::error!("log retention failed: {e}");
                }
            }
        }
    }

    fn txn(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.txn.is_none() {
            let mut txn = self.db.begin_write()?;
            // Saves the allocator state with each commit so that reopening after a crash
            // does not walk the whole file (reopen must stay fast as the store grows).
            txn.set_quick_repair(true);
            self.txn = Some(txn);
            self.txn_started = Instant::now();
        }
        Ok(self.txn.as_ref().expect("just opened"))
    }

    /// Seal the open blocks of live instances, so quiet output still becomes durable.
    fn seal_live(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for live in shared.lives() {
            let mut st = live.lock();
            live.seal(&mut st, &shared);
        }
    }

    /// Apply one message to the open group. Returns whether the group must commit now.
    fn apply(&mut self, msg: Msg) -> bool {
        let r = self.apply_inner(msg);
        match r {
            Ok(urgent) => urgent,
            Err(e) => {
                self.fail_group(e);
                false
            }
        }
    }

    fn apply_inner(&mut self, msg: Msg) -> Result<bool, StoreError> {
        match msg {
            Msg::Block(block) => {
                let len = block.bytes.len();
                let view = block.view();
                let lines = u64::from(view.count);
                self.txn()?
                    .open_table(BLOCKS)?
                    .insert((block.instance, block.first_seq), block.bytes.as_slice())?;
                if let Some(m) = self.metas.get_mut(&block.instance) {
                    m.stored_bytes += len as u64;
                    m.next_seq = m.next_seq.max(block.first_seq + lines);
                    self.dirty.insert(block.instance);
                }
                if let Some(r) = self.retained.get_mut(&block.instance) {
                    r.bytes += len as u64;
                }
                self.txn_bytes += len;
                self.blocks.push(block);
                self.retention_due = true;
                Ok(false)
            }
            Msg::Start(meta) => {
                let txn = self.txn()?;
                txn.open_table(PROCESS_INSTANCES)?
                    .insert((meta.process.as_str(), meta.kind.code(), meta.id), ())?;
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
                self.metas.insert(meta.id, *meta);
                self.retention_due = true;
                Ok(false)
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
                    )?;
                }
                self.ended.push(id);
                Ok(true)
            }
            Msg::Event {
                process,
                instance,
                kind,
                ts_us,
            } => {
                self.event(process, instance, kind, ts_us)?;
                Ok(false)
            }
            Msg::PutProcess { name, spec } => {
                self.txn()?
                    .open_table(PROCESSES)?
                    .insert(name.as_str(), spec.as_slice())?;
                Ok(true)
            }
            Msg::RemoveProcess { name } => {
                self.txn()?.open_table(PROCESSES)?.remove(name.as_str())?;
                Ok(true)
            }
            Msg::Limits { process, limits } => {
                self.limits.insert(process, limits);
                self.retention_due = true;
                Ok(false)
            }
            Msg::Flush(done) => {
                self.waiters.push(done);
                Ok(true)
            }
        }
    }

    fn event(
        &mut self,
        process: Option<String>,
        instance: Option<u64>,
        kind: EventKind,
        ts_us: i64,
    ) -> Result<(), StoreError> {
        if let (EventKind::LinesDropped { count }, Some(id)) = (&kind, instance)
            && let Some(m) = self.metas.get_mut(&id)
        {
            m.dropped_lines += count;
            self.dirty.insert(id);
        }
        let id = self.next_event;
        self.next_event += 1;
        let ev = Event {
            id,
            ts_us,
            process,
            instance,
            kind,
        };
        let txn = self.txn()?;
        txn.open_table(EVENTS)?
            .insert(id, schema::encode(&ev).as_slice())?;
        if let Some(p) = &ev.process {
            txn.open_table(PROCESS_EVENTS)?
                .insert((p.as_str(), id), ())?;
        }
        Ok(())
    }

    /// Commit the open group and answer everyone waiting on it.
    fn commit(&mut self) {
        let result = self.commit_inner();
        let waiters = std::mem::take(&mut self.waiters);
        let shared = self.shared.upgrade();
        match result {
            Ok(()) => {
                for b in self.blocks.drain(..) {
                    b.mark_committed();
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
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => {
                self.waiters = waiters;
                self.fail_group(e);
            }
        }
        let bytes = std::mem::take(&mut self.txn_bytes);
        if let Some(shared) = &shared {
            shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    fn commit_inner(&mut self) -> Result<(), StoreError> {
        if self.txn.is_none() && self.waiters.is_empty() && self.ended.is_empty() {
            return Ok(());
        }
        let dirty: Vec<(u64, Vec<u8>)> = self
            .dirty
            .drain()
            .filter_map(|id| self.metas.get(&id).map(|m| (id, schema::encode(m))))
            .collect();
        let txn = self.txn()?;
        {
            let mut t = txn.open_table(INSTANCES)?;
            for (id, bytes) in &dirty {
                t.insert(*id, bytes.as_slice())?;
            }
        }
        let txn = self.txn.take().expect("opened above");
        txn.commit()?;
        Ok(())
    }

    /// A group could not be written (a full disk, an I/O error): its lines stay in the
    /// ring, are counted as dropped, and everyone waiting hears why. The instances'
    /// metadata stays dirty and is written with the next group that succeeds.
    fn fail_group(&mut self, e: StoreError) {
        tracing::error!("log store write failed: {e}");
        if let Some(txn) = self.txn.take() {
            let _ = txn.abort();
        }
        for b in self.blocks.drain(..) {
            b.mark_dropped();
            let lines = u64::from(b.view().count);
            if let Some(m) = self.metas.get_mut(&b.instance) {
                m.dropped_lines += lines;
                m.stored_bytes = m.stored_bytes.saturating_sub(b.bytes.len() as u64);
            }
            if let Some(r) = self.retained.get_mut(&b.instance) {
                r.bytes = r.bytes.saturating_sub(b.bytes.len() as u64);
            }
            if let Some(shared) = self.shared.upgrade() {
                shared.dropped_lines.fetch_add(lines, Ordering::Relaxed);
            }
        }
        self.dirty.extend(self.metas.keys().copied());
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(StoreError::WriteFailed(e.to_string())));
        }
        // The ended instances were not recorded as ended; try again with the next group.
        let shared = self.shared.upgrade();
        for id in self.ended.drain(..) {
            if let Some(shared) = &shared {
                shared.remove_live(id);
            }
        }
    }

    fn limits_of(&self, process: &str) -> Limits {
        self.limits
            .get(process)
            .copied()
            .unwrap_or(self.opts.limits)
    }

    /// Apply retention: per process the newest `keep` runs and builds within `max_bytes`,
    /// and the whole store within `store_max_bytes`; the oldest go first. An instance that
    /// alone is over a cap loses its oldest blocks instead.
    fn retain(&mut self) -> Result<(), StoreError> {
        let mut removals: Vec<(u64, String)> = Vec::new();
        let mut trims: Vec<(u64, u64, String)> = Vec::new(); // (id, bytes to free, why)
        let mut per_proc: BTreeMap<&str, Vec<(u64, InstanceKind, u64, bool)>> = BTreeMap::new();
        for (id, r) in &self.retained {
            per_proc
                .entry(r.process.as_str())
                .or_default()
                .push((*id, r.kind, r.bytes, r.live));
        }
        let mut gone: HashSet<u64> = HashSet::new();
        for (process, list) in &per_proc {
            let lim = self.limits_of(process);
            for (kind, keep) in [
                (InstanceKind::Run, lim.keep_instances),
                (InstanceKind::Build, lim.keep_builds),
            ] {
                let ids: Vec<_> = list.iter().filter(|x| x.1 == kind).collect();
                let excess = ids.len().saturating_sub(keep.max(1) as usize);
                for x in ids.iter().take(excess) {
                    if !x.3 && gone.insert(x.0) {
                        removals.push((x.0, format!("more than {keep} {} instances", kind.noun())));
                    }
                }
            }
            let mut bytes: u64 = list
                .iter()
                .filter(|x| !gone.contains(&x.0))
                .map(|x| x.2)
                .sum();
            for x in list {
                if bytes <= lim.max_bytes {
                    break;
                }
                if gone.contains(&x.0) {
                    continue;
                }
                if x.3 || list.iter().filter(|y| !gone.contains(&y.0)).count() == 1 {
                    trims.push((
                        x.0,
                        bytes - lim.max_bytes,
                        format!("process over {} bytes", lim.max_bytes),
                    ));
                    bytes = lim.max_bytes;
                } else {
                    gone.insert(x.0);
                    removals.push((x.0, format!("process over {} bytes", lim.max_bytes)));
                    bytes -= x.2;
                }
            }
        }
        let cap = self.opts.store_max_bytes;
        let mut total: u64 = self
            .retained
            .iter()
            .filter(|(id, _)| !gone.contains(id))
            .map(|(_, r)| r.bytes)
            .sum::<u64>()
            .saturating_sub(trims.iter().map(|t| t.1).sum());
        for (id, r) in &self.retained {
            if total <= cap {
                break;
            }
            if gone.contains(id) || trims.iter().any(|t| t.0 == *id) {
                continue;
            }
            if r.live {
                trims.push((*id, total - cap, format!("store over {cap} bytes")));
                total = cap;
            } else {
                gone.insert(*id);
                removals.push((*id, format!("store over {cap} bytes")));
                total -= r.bytes;
            }
        }
        if removals.is_empty() && trims.is_empty() {
            return Ok(());
        }
        for (id, why) in removals {
            self.remove_instance(id, why)?;
        }
        for (id, free, why) in trims {
            self.trim_instance(id, free, why)?;
        }
        self.trim_events()?;
        self.commit();
        Ok(())
    }

    fn remove_instance(&mut self, id: u64, why: String) -> Result<(), StoreError> {
        let Some(r) = self.retained.remove(&id) else {
            return Ok(());
        };
        let txn = self.txn()?;
        let meta: Option<InstanceMeta> = match txn.open_table(INSTANCES)?.remove(id)? {
            Some(v) => Some(schema::decode("instance", v.value())?),
            None => None,
        };
        txn.open_table(BLOCKS)?
            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        txn.open_table(PROCESS_INSTANCES)?
            .remove((r.process.as_str(), r.kind.code(), id))?;
        let lines = meta.map_or(0, |m| m.next_seq - m.first_seq);
        self.event(
            Some(r.process),
            Some(id),
            EventKind::RetentionRemoved {
                instance: id,
                lines,
                bytes: r.bytes,
                why,
            },
            now_us(),
        )
    }

    /// Remove an instance's oldest blocks until `free` bytes are gone.
    fn trim_instance(&mut self, id: u64, free: u64, why: String) -> Result<(), StoreError> {
        let txn = self.txn()?;
        let mut freed = 0u64;
        let mut lines = 0u64;
        let mut new_first = None;
        {
            let mut t = txn.open_table(BLOCKS)?;
            let mut keys = Vec::new();
            for row in t.range((id, 0)..=(id, u64::MAX))? {
                let (k, v) = row?;
                if freed >= free {
                    new_first = Some(k.value().1);
                    break;
                }
                let view = BlockView::parse(k.value().1, v.value())?;
                freed += v.value().len() as u64;
                lines += u64::from(view.count);
                keys.push(k.value());
            }
            // Never remove the newest block: an instance keeps its latest lines.
            if new_first.is_none()
                && let Some(last) = keys.pop()
            {
                new_first = Some(last.1);
                freed -= t.get(last)?.map_or(0, |v| v.value().len() as u64);
                lines -= t
                    .get(last)?
                    .map(|v| BlockView::parse(last.1, v.value()).map(|b| u64::from(b.count)))
                    .transpose()?
                    .unwrap_or(0);
            }
            for k in keys {
                t.remove(k)?;
            }
        }
        if freed == 0 {
            return Ok(());
        }
        let process = if let Some(m) = self.metas.get_mut(&id) {
            m.stored_bytes -= freed;
            if let Some(f) = new_first {
                m.first_seq = f;
            }
            self.dirty.insert(id);
            Some(m.process.clone())
        } else {
            let txn = self.txn()?;
            let mut t = txn.open_table(INSTANCES)?;
            let meta = t
                .get(id)?
                .map(|v| schema::decode::<InstanceMeta>("instance", v.value()));
            match meta.transpose()? {
                Some(mut m) => {
                    m.stored_bytes -= freed;
                    if let Some(f) = new_first {
                        m.first_seq = f;
                    }
                    t.insert(id, schema::encode(&m).as_slice())?;
                    Some(m.process)
                }
                None => None,
            }
        };
        if let Some(r) = self.retained.get_mut(&id) {
            r.bytes -= freed;
        }
        self.event(
            process,
            Some(id),
            EventKind::RetentionRemoved {
                instance: id,
                lines,
                bytes: freed,
                why: format!("{why}: removed the oldest {lines} lines of this instance"),
            },
            now_us(),
        )
    }

    fn trim_events(&mut self) -> Result<(), StoreError> {
        if self.next_event <= MAX_EVENTS {
            return Ok(());
        }
        let below = self.next_event - MAX_EVENTS;
        let txn = self.txn()?;
        let mut removed = Vec::new();
        txn.open_table(EVENTS)?.retain_in(..below, |k, v| {
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
        Ok(())
    }
}
