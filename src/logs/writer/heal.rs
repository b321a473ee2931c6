//! The writer after a failure: reopening the database with backoff, replaying the group it
//! kept, and giving up (and counting) what no longer fits in memory.

use super::*;

impl Writer {
    /// A write failed (a full disk, an I/O error, damaged data, a panic). redb refuses every
    /// later transaction after an I/O error until the database is reopened, so the writer
    /// drops it and reopens it with backoff; the open group stays in memory (within the
    /// queue budget) and is replayed into the new database. Everyone waiting hears why.
    pub(super) fn fail(&mut self, e: StoreError) {
        let error = e.to_string();
        if let Some(txn) = self.txn.take() {
            // Aborting a transaction that a panic left half done may panic too.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || {
                let _ = txn.abort();
            }));
        }
        self.db = None;
        let shared = self.shared.upgrade();
        if let Some(shared) = &shared {
            shared.set_reopening(&error);
        }
        // The instances' metadata is written again with the group that succeeds.
        self.dirty.extend(self.metas.keys().copied());
        let now = Instant::now();
        match &mut self.failing {
            None => {
                tracing::error!(
                    "could not write the log store {}: {error}; its lines are kept in memory (up to {} bytes) and writing is retried",
                    shared
                        .as_ref()
                        .map(|s| s.path.display().to_string())
                        .unwrap_or_default(),
                    self.opts.queue_max_bytes
                );
                self.failing = Some(Failing {
                    since: now,
                    since_us: now_us(),
                    error: error.clone(),
                    next_try: now + self.opts.retry_min,
                    backoff: self.opts.retry_min,
                    attempts: 0,
                    dropped: 0,
                    dropped_by_instance: BTreeMap::new(),
                    unlogged: 0,
                    logged_at: now,
                });
                let lines_pending = self.group_lines;
                // Stored with the group once the store heals, at the time of the failure.
                self.event_only(
                    None,
                    None,
                    EventKind::StoreFailed {
                        error: error.clone(),
                        lines_pending,
                    },
                    now_us(),
                );
            }
            Some(f) => {
                f.backoff = (f.backoff * 2).min(self.opts.retry_max);
                f.next_try = now + f.backoff;
                f.unlogged += 1;
                f.error = error.clone();
                if now.duration_since(f.logged_at) >= LOG_EVERY {
                    tracing::error!(
                        "the log store still cannot be written after {:.0}s ({} more failures; last: {error}); {} lines waiting in memory, {} given up",
                        f.since.elapsed().as_secs_f64(),
                        f.unlogged,
                        self.group_lines,
                        f.dropped
                    );
                    f.unlogged = 0;
                    f.logged_at = now;
                }
            }
        }
        self.enforce_budget();
        self.answer_failed(&error);
        self.publish_health(Some(error));
    }

    /// While failing, keep at most the queue budget of lines in memory: beyond it the
    /// oldest blocks are given up, and counted.
    pub(super) fn enforce_budget(&mut self) {
        while self.group_bytes > self.opts.queue_max_bytes {
            let Some(pos) = self
                .group
                .iter()
                .position(|op| matches!(op, Op::Block { .. }))
            else {
                break;
            };
            let Op::Block { block, stored, .. } = self.group.remove(pos) else {
                unreachable!("found above");
            };
            self.give_up_block(&block, stored.len() as u64);
        }
    }

    pub(super) fn give_up_block(&mut self, block: &Block, stored: u64) {
        block.mark_dropped();
        let lines = u64::from(block.view().count);
        self.group_bytes -= block.bytes.len();
        self.group_lines -= lines;
        if let Some(m) = self.metas.get_mut(&block.instance) {
            m.dropped_lines += lines;
            m.stored_bytes = m.stored_bytes.saturating_sub(stored);
            self.dirty.insert(block.instance);
        }
        if let Some(r) = self.retained.get_mut(&block.instance) {
            r.bytes = r.bytes.saturating_sub(stored);
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.dropped_lines.fetch_add(lines, Ordering::Relaxed);
        }
        if let Some(f) = &mut self.failing {
            f.dropped += lines;
            *f.dropped_by_instance.entry(block.instance).or_default() += lines;
        }
    }

    /// Try to heal: reopen the database, replay the open group into it, and commit.
    pub(super) fn recover(&mut self) {
        let Some(f) = &mut self.failing else {
            return;
        };
        f.attempts += 1;
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if self.db.is_none() {
            match crate::logs::reopen(&shared.path, &self.opts) {
                Ok(db) => {
                    let db = Arc::new(db);
                    shared.set_open(db.clone());
                    self.db = Some(db);
                }
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
        }
        // The lines given up so far, per instance: recorded with the healed group.
        let dropped =
            std::mem::take(&mut self.failing.as_mut().expect("failing").dropped_by_instance);
        for (id, count) in dropped {
            let process = self.metas.get(&id).map(|m| m.process.clone());
            self.event_only(
                process,
                Some(id),
                EventKind::LinesDropped { count },
                now_us(),
            );
        }
        if let Err(e) = self.replay() {
            self.fail(e);
            return;
        }
        match self.commit_inner() {
            Ok(()) => {
                let f = self.failing.take().expect("failing");
                self.recoveries += 1;
                let lines = self.group_lines;
                self.committed();
                tracing::warn!(
                    "the log store is written again after failing for {:.1}s ({} attempts): {lines} waiting lines stored, {} given up",
                    f.since.elapsed().as_secs_f64(),
                    f.attempts,
                    f.dropped
                );
                self.event_only(
                    None,
                    None,
                    EventKind::StoreRecovered {
                        failed_for_ms: f.since.elapsed().as_millis() as u64,
                        lines_dropped: f.dropped,
                        attempts: f.attempts,
                    },
                    now_us(),
                );
                self.retention_due = true;
                self.publish_health(None);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Apply the whole open group to a new transaction. An op that fails for another reason
    /// than the disk (damaged data, a panic) would fail forever: it is left out.
    pub(super) fn replay(&mut self) -> Result<(), StoreError> {
        'again: loop {
            let mut i = 0;
            while i < self.group.len() {
                let r = no_panic(|| {
                    self.txn()?;
                    apply_op(self.txn.as_ref().expect("opened"), &self.group[i])
                });
                match r {
                    Ok(()) => i += 1,
                    Err(e) if e.is_disk() => return Err(e),
                    Err(e) => {
                        if let Some(txn) = self.txn.take() {
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || {
                                let _ = txn.abort();
                            }));
                        }
                        let op = self.group.remove(i);
                        tracing::error!("left out of the log store: {e}");
                        match op {
                            Op::Block { block, stored, .. } => {
                                self.give_up_block(&block, stored.len() as u64)
                            }
                            Op::RemoveInstance { id, .. } | Op::TrimBlocks { id, .. } => {
                                self.damaged.insert(id);
                                self.retention_due = true;
                            }
                            _ => {}
                        }
                        continue 'again;
                    }
                }
            }
            return Ok(());
        }
    }

    /// The inbox closed while the store still fails: what is left can never be stored.
    pub(super) fn give_up(&mut self) {
        let blocks: Vec<_> = self
            .group
            .drain(..)
            .filter_map(|op| match op {
                Op::Block { block, stored, .. } => Some((block, stored.len() as u64)),
                _ => None,
            })
            .collect();
        for (b, stored) in blocks {
            self.give_up_block(&b, stored);
        }
        let (error, dropped) = self
            .failing
            .as_ref()
            .map(|f| (f.error.clone(), f.dropped))
            .unwrap_or_default();
        tracing::error!(
            "the log store was closed while it could not be written ({error}): {dropped} lines were not stored"
        );
        self.answer_failed(&error);
        let shared = self.shared.upgrade();
        for id in self.ended.drain(..) {
            if let Some(shared) = &shared {
                shared.remove_live(id);
            }
        }
    }

    pub(super) fn publish_health(&self, error: Option<String>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut h = shared.health.lock().unwrap_or_else(|p| p.into_inner());
        h.writable = self.failing.is_none();
        h.failing_since_us = self.failing.as_ref().map(|f| f.since_us);
        h.retries = self.failing.as_ref().map_or(0, |f| f.attempts);
        h.lines_not_stored = if self.failing.is_some() {
            self.group_lines
        } else {
            0
        };
        h.recoveries = self.recoveries;
        if let Some(e) = error {
            h.last_error = Some(e);
            h.last_error_us = Some(now_us());
        }
        drop(h);
        // Capture waiting for room reads on while the store fails (the writer counts
        // what it gives up), and waits again once it heals.
        shared.signal_room();
    }
}
