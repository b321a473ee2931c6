//! Retention, between groups: the oldest instances go first within each process's limits
//! and the store-wide cap; a damaged instance is removed without walking its blocks.

use super::*;

impl Writer {
    /// Retention, with its failures contained: a retention pass that fails is undone as a
    /// whole; the instance it was working on is marked damaged when the data (not the
    /// disk) was at fault, so that the next pass removes it without walking its blocks.
    pub(super) fn retention(&mut self) {
        let (removals, trims) = self.plan_retention();
        // Who asked for a process's logs to go is answered once this pass is durable.
        let asked: Vec<_> = self.remove_logs.drain(..).map(|(_, done)| done).collect();
        if removals.is_empty() && trims.is_empty() {
            for done in asked {
                let _ = done.send(Ok(()));
            }
            return;
        }
        self.waiters.extend(asked);
        let before = (
            self.retained.clone(),
            self.metas.clone(),
            self.dirty.clone(),
            self.next_event,
        );
        self.retaining = None;
        match no_panic(|| self.retain(removals, trims)) {
            Ok(()) => self.commit(),
            Err(e) => {
                (self.retained, self.metas, self.dirty, self.next_event) = before;
                self.group.clear();
                if let Some(txn) = self.txn.take() {
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(move || {
                        let _ = txn.abort();
                    }));
                }
                let blamed = self.blame_retention();
                tracing::error!("log retention failed: {e}");
                // After damaged data (an error, or a panic redb contained by poisoning the
                // transaction, which is aborted above) the database goes on; after an I/O
                // error it must be reopened.
                if e.is_disk() {
                    self.fail(e);
                }
                self.retention_due = blamed;
            }
        }
    }

    /// Mark the instance retention was working on as damaged. Whether it was newly marked.
    pub(super) fn blame_retention(&mut self) -> bool {
        match self.retaining.take() {
            Some(id) => self.damaged.insert(id),
            None => false,
        }
    }
    pub(super) fn limits_of(&self, process: &str) -> Limits {
        self.limits
            .get(process)
            .copied()
            .unwrap_or(self.opts.limits)
    }

    /// Plan retention: per process the newest `keep` runs and builds within `max_bytes`,
    /// and the whole store within `store_max_bytes`; the oldest go first. An instance that
    /// alone is over a cap loses its oldest blocks instead. Returns the instances to remove
    /// and those to trim (id, bytes to free, why).
    #[allow(clippy::type_complexity)]
    pub(super) fn plan_retention(&self) -> (Vec<(u64, String)>, Vec<(u64, u64, String)>) {
        let mut removals: Vec<(u64, String)> = Vec::new();
        let mut trims: Vec<(u64, u64, String)> = Vec::new();
        let mut per_proc: BTreeMap<&str, Vec<(u64, InstanceKind, u64, bool)>> = BTreeMap::new();
        for (id, r) in &self.retained {
            per_proc
                .entry(r.process.as_str())
                .or_default()
                .push((*id, r.kind, r.bytes, r.live));
        }
        let mut gone: HashSet<u64> = HashSet::new();
        // Processes removed with their logs: every instance that is not live.
        for (process, _) in &self.remove_logs {
            for x in per_proc.get(process.as_str()).into_iter().flatten() {
                if !x.3 && gone.insert(x.0) {
                    removals.push((x.0, "with its process (`bpm rm --logs`)".to_owned()));
                }
            }
        }
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
                        removals.push((
                            x.0,
                            format!("by retention: more than {keep} {} instances", kind.noun()),
                        ));
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
                    removals.push((
                        x.0,
                        format!("by retention: process over {} bytes", lim.max_bytes),
                    ));
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
                removals.push((*id, format!("by retention: store over {cap} bytes")));
                total -= r.bytes;
            }
        }
        // A damaged instance cannot be trimmed (that walks its blocks); it goes as a whole
        // once it is old enough.
        trims.retain(|t| !self.damaged.contains(&t.0));
        (removals, trims)
    }

    pub(super) fn retain(
        &mut self,
        removals: Vec<(u64, String)>,
        trims: Vec<(u64, u64, String)>,
    ) -> Result<(), StoreError> {
        for (id, why) in removals {
            self.retaining = Some(id);
            self.remove_instance(id, why)?;
        }
        for (id, free, why) in trims {
            self.retaining = Some(id);
            self.trim_instance(id, free, why)?;
        }
        self.retaining = None;
        self.trim_events()
    }

    pub(super) fn remove_instance(&mut self, id: u64, why: String) -> Result<(), StoreError> {
        let Some(r) = self.retained.remove(&id) else {
            return Ok(());
        };
        let damaged = self.damaged.contains(&id);
        let (meta, number): (Option<InstanceMeta>, Option<u64>) = {
            let txn = self.txn()?;
            let t = txn.open_table(INSTANCES)?;
            let v = t.get(id)?;
            let numbers = txn.open_table(INSTANCE_NUMBERS)?;
            let number = numbers.get(id)?.map(|n| n.value());
            let meta = v
                .map(|v| schema::decode("instance", v.value()))
                .transpose()?;
            (meta, number)
        };
        self.push_inner(Op::RemoveInstance {
            id,
            process: r.process.clone(),
            kind: r.kind.code(),
            // A damaged instance's blocks cannot be walked: they are left in place (no later
            // instance reuses its id, so they are never read again).
            blocks: !damaged,
        })?;
        let lines = meta.map_or(0, |m| m.next_seq - m.first_seq);
        // "run #3, by retention: ...": the number people know it by.
        let why = match number {
            Some(n) => format!("{} #{n}, {why}", r.kind.noun()),
            None => why,
        };
        let why = if damaged {
            format!("{why} (its blocks are damaged and were left in place)")
        } else {
            why
        };
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
        );
        Ok(())
    }

    /// Remove an instance's oldest blocks until `free` bytes are gone.
    pub(super) fn trim_instance(
        &mut self,
        id: u64,
        free: u64,
        why: String,
    ) -> Result<(), StoreError> {
        let mut freed = 0u64;
        let mut lines = 0u64;
        let mut new_first = None;
        {
            let mut buf = Vec::new();
            let txn = self.txn()?;
            let t = txn.open_table(BLOCKS)?;
            let mut last = None;
            for row in t.range((id, 0)..=(id, u64::MAX))? {
                let (k, v) = row?;
                let first = k.value().1;
                if freed >= free {
                    new_first = Some(first);
                    break;
                }
                let len = v.value().len() as u64;
                let raw = block::stored_raw(first, v.value(), &mut buf)?;
                let count = u64::from(BlockView::parse(first, raw)?.count);
                freed += len;
                lines += count;
                last = Some((first, len, count));
            }
            // Never remove the newest block: an instance keeps its latest lines.
            if new_first.is_none()
                && let Some((first, len, count)) = last
            {
                new_first = Some(first);
                freed -= len;
                lines -= count;
            }
        }
        let Some(below) = new_first else {
            return Ok(());
        };
        if freed == 0 {
            return Ok(());
        }
        self.push_inner(Op::TrimBlocks { id, below })?;
        let process = if let Some(m) = self.metas.get_mut(&id) {
            m.stored_bytes -= freed;
            m.first_seq = below;
            self.dirty.insert(id);
            Some(m.process.clone())
        } else {
            let meta = {
                let txn = self.txn()?;
                let t = txn.open_table(INSTANCES)?;
                let v = t.get(id)?;
                v.map(|v| schema::decode::<InstanceMeta>("instance", v.value()))
                    .transpose()?
            };
            match meta {
                Some(mut m) => {
                    m.stored_bytes -= freed;
                    m.first_seq = below;
                    self.push_inner(Op::PutMeta {
                        id,
                        bytes: schema::encode(&m),
                    })?;
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
        );
        Ok(())
    }

    pub(super) fn trim_events(&mut self) -> Result<(), StoreError> {
        if self.next_event <= MAX_EVENTS {
            return Ok(());
        }
        let below = self.next_event - MAX_EVENTS;
        self.push_inner(Op::TrimEvents { below })
    }
}
