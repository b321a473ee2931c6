//! The store's read side: processes, instances, lines (ring first, then redb), events,
//! and following an instance as it grows. Every read is blocking.

use super::*;

/// An instance as the snapshot `metas` has it, with what its live state (if any) knows
/// already: counters that trail by up to a commit interval, an end not yet durable.
/// The instance numbers table; `None` in a store of schema 2 opened read-only (not
/// migrated yet: its instances are numbered by their order, see `instances`).
type Numbers = Option<redb::ReadOnlyTable<u64, u64>>;

/// A process's history as a status report shows it.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Its runs and builds still retained.
    pub runs: usize,
    pub builds: usize,
    /// The newest run.
    pub last_run: Option<InstanceMeta>,
    /// The newest events, oldest first.
    pub events: Vec<HistoryEvent>,
}

/// An event, and the run or build it is about as the process numbers them (run #3),
/// where the event names one still retained.
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub event: Event,
    pub instance: Option<(InstanceKind, u64)>,
}

fn numbers_of(txn: &redb::ReadTransaction) -> Result<Numbers, StoreError> {
    match txn.open_table(schema::INSTANCE_NUMBERS) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn meta_of(
    metas: &redb::ReadOnlyTable<u64, &[u8]>,
    numbers: &Numbers,
    id: u64,
    live: Option<&Arc<live::Live>>,
) -> Result<InstanceMeta, StoreError> {
    let mut meta: InstanceMeta = match (metas.get(id)?, live) {
        (Some(v), _) => schema::decode("instance", v.value())?,
        (None, Some(live)) => live.meta.clone(),
        (None, None) => return Err(StoreError::NoSuchInstance(id)),
    };
    meta.number = match (live, numbers) {
        (Some(live), _) => live.meta.number,
        (None, Some(t)) => t.get(id)?.map_or(0, |v| v.value()),
        (None, None) => 0,
    };
    if let Some(live) = live {
        meta.next_seq = meta.next_seq.max(*live.seq_tx.borrow());
        if let Some((exit, ended_us)) = live.lock().exit.clone() {
            meta.exit = Some(exit);
            meta.ended_us = Some(ended_us);
        }
    }
    Ok(meta)
}

impl Store {
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
        // The live instances first, then the snapshot: an instance whose end is committed
        // (and which leaves the live set) in between is then in the snapshot, and one that
        // is not committed yet is described from the live state taken here. The other
        // order loses an instance that ends during the call.
        let lives: Vec<_> = self
            .shared
            .lives()
            .into_iter()
            .filter(|l| l.meta.process == process && l.meta.kind == kind)
            .collect();
        let txn = self.shared.db()?.begin_read()?;
        let idx = txn.open_table(PROCESS_INSTANCES)?;
        let metas = txn.open_table(INSTANCES)?;
        let numbers = numbers_of(&txn)?;
        let mut out = Vec::new();
        for row in idx.range((process, kind.code(), 0u64)..=(process, kind.code(), u64::MAX))? {
            let id = row?.0.value().2;
            out.push(self.meta_in(&metas, &numbers, id)?);
        }
        // An instance that has just begun is live before its start is committed.
        let known: BTreeSet<u64> = out.iter().map(|m| m.id).collect();
        for live in lives {
            if !known.contains(&live.id) {
                out.push(meta_of(&metas, &numbers, live.id, Some(&live))?);
            }
        }
        out.sort_by_key(|m| m.id);
        if numbers.is_none() {
            // Not migrated yet (read-only): by order, as the migration will number them.
            for (i, m) in out.iter_mut().enumerate() {
                m.number = i as u64 + 1;
            }
        }
        Ok(out)
    }

    fn meta_in(
        &self,
        metas: &redb::ReadOnlyTable<u64, &[u8]>,
        numbers: &Numbers,
        id: u64,
    ) -> Result<InstanceMeta, StoreError> {
        let live = self.shared.live(id);
        let read = meta_of(metas, numbers, id, live.as_ref());
        match (&read, live) {
            // Not live now, and this read's snapshot has it unfinished or not at all: it
            // left the live map after the snapshot was taken, once its end was committed
            // (a process that exits at once begins and ends in one commit). A newer
            // snapshot has its end; without it a follower reported the exit as unknown.
            (Err(StoreError::NoSuchInstance(_)), None) => self.meta_now(id),
            (Ok(m), None) if m.exit.is_none() => self.meta_now(id),
            _ => read,
        }
    }

    /// One instance's record from a snapshot taken now (see `meta_in`).
    fn meta_now(&self, id: u64) -> Result<InstanceMeta, StoreError> {
        let live = self.shared.live(id);
        let txn = self.shared.db()?.begin_read()?;
        let metas = txn.open_table(INSTANCES)?;
        let numbers = numbers_of(&txn)?;
        meta_of(&metas, &numbers, id, live.as_ref())
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
        let numbers = numbers_of(&txn)?;
        self.meta_in(&metas, &numbers, id)
    }

    /// What status reports show of each process's history (see [`History`]), all read in
    /// one transaction: a report of twenty processes costs one snapshot, not sixty.
    pub fn histories(&self, processes: &[&str], events: usize) -> Result<Vec<History>, StoreError> {
        // redb may panic on damaged pages: see `damage.rs`.
        no_panic(|| self.histories_unguarded(processes, events))
    }

    fn histories_unguarded(
        &self,
        processes: &[&str],
        events: usize,
    ) -> Result<Vec<History>, StoreError> {
        // Live instances first, then the snapshot, as in `instances`.
        let lives = self.shared.lives();
        let txn = self.shared.db()?.begin_read()?;
        let idx = txn.open_table(PROCESS_INSTANCES)?;
        let metas = txn.open_table(INSTANCES)?;
        let numbers = numbers_of(&txn)?;
        let event_idx = txn.open_table(PROCESS_EVENTS)?;
        let event_rows = txn.open_table(EVENTS)?;
        let mut out = Vec::with_capacity(processes.len());
        for &process in processes {
            let count = |kind: InstanceKind| -> Result<(usize, Option<u64>), StoreError> {
                let range = (process, kind.code(), 0u64)..=(process, kind.code(), u64::MAX);
                let mut n = idx.range(range.clone())?.count();
                let mut last = idx
                    .range(range)?
                    .next_back()
                    .transpose()?
                    .map(|r| r.0.value().2);
                // An instance that has just begun is live before its start is committed.
                for l in lives
                    .iter()
                    .filter(|l| l.meta.process == process && l.meta.kind == kind)
                {
                    if idx.get((process, kind.code(), l.id))?.is_none() {
                        n += 1;
                        last = last.max(Some(l.id));
                    }
                }
                Ok((n, last))
            };
            let (runs, last_run) = count(InstanceKind::Run)?;
            let (builds, _) = count(InstanceKind::Build)?;
            let mut last_run = last_run
                .map(|id| self.meta_in(&metas, &numbers, id))
                .transpose()?;
            if numbers.is_none()
                && let Some(m) = &mut last_run
            {
                // Not migrated yet (read-only): numbered by order, as in `instances`.
                m.number = runs as u64;
            }
            let mut recent = Vec::new();
            for row in event_idx
                .range((process, 0u64)..=(process, u64::MAX))?
                .rev()
                .take(events)
            {
                if let Some(v) = event_rows.get(row?.0.value().1)? {
                    let event: Event = schema::decode("event", v.value())?;
                    // Numbered as `instances` numbers them: not migrated yet, none.
                    let instance = match (event.instance, &numbers) {
                        (Some(id), Some(_)) => match self.meta_in(&metas, &numbers, id) {
                            Ok(m) => Some((m.kind, m.number)),
                            Err(StoreError::NoSuchInstance(_)) => None,
                            Err(e) => return Err(e),
                        },
                        _ => None,
                    };
                    recent.push(HistoryEvent { event, instance });
                }
            }
            recent.reverse();
            out.push(History {
                runs,
                last_run,
                builds,
                events: recent,
            });
        }
        Ok(out)
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

    /// Resolve a number: `#3` the process's third run (or build), for as long as
    /// retention keeps it.
    pub fn resolve_number(
        &self,
        process: &str,
        kind: InstanceKind,
        number: u64,
    ) -> Result<InstanceMeta, StoreError> {
        let list = self.instances(process, kind)?;
        if list.is_empty() {
            return Err(StoreError::NoInstances {
                process: process.to_owned(),
                kind,
                known: self.process_names()?,
            });
        }
        let kept = match (list.first(), list.last()) {
            (Some(a), Some(b)) if a.number == b.number => a.number.to_string(),
            (Some(a), Some(b)) => format!("{}..#{}", a.number, b.number),
            _ => String::new(),
        };
        list.into_iter()
            .find(|m| m.number == number)
            .ok_or(StoreError::NoSuchNumber {
                process: process.to_owned(),
                kind,
                number,
                kept,
            })
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
            Window::From { from, max } => (from, u64::MAX, max),
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
                    // Not `Seqs { from, to: from + max }`: lines the store never got leave
                    // gaps, and an empty window is not the end.
                    let window = Window::From { from, max };
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
