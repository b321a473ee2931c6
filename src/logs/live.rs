//! Live instances: the capture side's append path and the hot ring cache.
//!
//! Each live instance owns a [`Live`]: its two framers (stdout, stderr), the block being
//! filled, and the ring of its newest sealed blocks. The capture task appends under a
//! std `Mutex` (never held across an `.await`, and only for the copy of one read), so an
//! append never waits for the disk: sealed blocks go to the writer over an unbounded
//! channel. Capture waits for room between reads ([`InstanceWriter::wait_for_room`]), so a
//! slow disk slows the child down instead of losing lines; the queue's hard cap (twice
//! [`super::StoreOptions::queue_max_bytes`]) only bounds memory against callers that do not
//! wait (a stalled writer, a failing store): past it a block is dropped from the store
//! (never from the ring) and counted.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::block::{Block, BlockBuilder, BlockView, Framer, Line, Stream};
use super::model::{EventKind, ExitStatus, InstanceMeta, now_us};
use super::writer::Msg;
use super::{Shared, StoreError};

/// What a reader sees of the ring: the sealed blocks it holds and a copy of the unsealed
/// lines, all at or after `start_seq`.
pub(crate) struct RingSnapshot {
    pub start_seq: u64,
    pub blocks: Vec<Arc<Block>>,
    pub open: Option<(u64, Vec<u8>)>,
}

impl RingSnapshot {
    pub fn views(&self) -> impl DoubleEndedIterator<Item = BlockView<'_>> {
        self.blocks.iter().map(|b| b.view()).chain(
            self.open
                .iter()
                .map(|(first, bytes)| BlockView::parse(*first, bytes).expect("well formed")),
        )
    }
}

pub(crate) struct LiveState {
    framers: [Framer; 2],
    builder: BlockBuilder,
    ring: VecDeque<Arc<Block>>,
    ring_bytes: usize,
    ring_lines: usize,
    /// Lines that were dropped from the store and not yet reported as an event.
    pending_dropped: u64,
    /// The streams ended: nothing more is appended.
    pub(crate) ended: bool,
    /// The exit and end time, known from the moment the end is queued (before it is
    /// durable), so that readers see the exit at once.
    pub(crate) exit: Option<(ExitStatus, i64)>,
}

pub struct Live {
    pub(crate) id: u64,
    pub(crate) process: String,
    /// The instance as it began: describes it until its start is committed.
    pub(crate) meta: InstanceMeta,
    pub(crate) state: Mutex<LiveState>,
    /// The next sequence number, published after every append so followers wake up.
    pub(crate) seq_tx: watch::Sender<u64>,
}

impl Live {
    pub(crate) fn new(meta: InstanceMeta, max_line: usize) -> Live {
        Live {
            id: meta.id,
            process: meta.process.clone(),
            meta,
            state: Mutex::new(LiveState {
                framers: [Framer::new(max_line), Framer::new(max_line)],
                builder: BlockBuilder::new(0),
                ring: VecDeque::new(),
                ring_bytes: 0,
                ring_lines: 0,
                pending_dropped: 0,
                ended: false,
                exit: None,
            }),
            seq_tx: watch::channel(0).0,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        // A panic while appending leaves the buffers consistent enough to keep reading.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frame `bytes` into lines stamped `ts_us`; seal and hand over full blocks.
    pub(crate) fn append(&self, shared: &Shared, stream: Stream, bytes: &[u8], ts_us: i64) {
        let next = {
            let mut st = self.lock();
            let LiveState {
                framers, builder, ..
            } = &mut *st;
            let mut sealed = Vec::new();
            let framer = &mut framers[stream as usize];
            let mut bytes = bytes;
            // Fast path: whole lines go into the block in one copy.
            while framer.is_idle()
                && let Some(last) = memchr::memrchr(b'\n', bytes)
            {
                let n = builder.push_lines(ts_us, stream, &bytes[..=last], framer.max_line());
                if builder.is_full() {
                    sealed.push(builder.seal(self.id));
                }
                if n == 0 {
                    break;
                }
                bytes = &bytes[n..];
            }
            framer.feed(bytes, |line, cont| {
                builder.push(ts_us, stream, cont, line);
                if builder.is_full() {
                    sealed.push(builder.seal(self.id));
                }
            });
            for block in sealed {
                for msg in self.accept(&mut st, shared, block) {
                    shared.send(msg);
                }
            }
            st.builder.first_seq() + u64::from(st.builder.count())
        };
        self.seq_tx.send_replace(next);
    }

    /// The streams ended: keep their final lines without newline, seal what is left, and
    /// remember the exit. Returns the final sequence number.
    pub(crate) fn finish_streams(&self, shared: &Shared, ts_us: i64, exit: ExitStatus) -> u64 {
        let next = {
            let mut st = self.lock();
            let LiveState {
                framers, builder, ..
            } = &mut *st;
            for (i, framer) in framers.iter_mut().enumerate() {
                let stream = if i == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                framer.finish(|line, cont| builder.push(ts_us, stream, cont, line));
            }
            self.seal(&mut st, shared);
            st.ended = true;
            st.exit = Some((exit, ts_us));
            st.builder.first_seq()
        };
        // Wakes followers even without new lines: they see the end.
        self.seq_tx.send_replace(next);
        next
    }

    /// Seal the open block (if any), keep it in the ring, and queue it for the writer.
    pub(crate) fn seal(&self, st: &mut LiveState, shared: &Shared) {
        for msg in self.seal_into(st, shared) {
            shared.send(msg);
        }
    }

    /// [`Self::seal`], but hand back the writer's messages instead of sending them (the
    /// writer itself seals quiet instances and applies the result at once).
    pub(crate) fn seal_into(&self, st: &mut LiveState, shared: &Shared) -> Vec<Msg> {
        if st.builder.is_empty() {
            return Vec::new();
        }
        let block = st.builder.seal(self.id);
        self.accept(st, shared, block)
    }

    /// Keep a freshly sealed block in the ring; return the messages that queue it for the
    /// writer (none when the queue is full: then the block is dropped from the store).
    fn accept(&self, st: &mut LiveState, shared: &Shared, block: Arc<Block>) -> Vec<Msg> {
        let lines = u64::from(block.view().count);
        st.ring_bytes += block.bytes.len();
        st.ring_lines += lines as usize;
        st.ring.push_back(block.clone());
        self.evict(st, shared);

        let len = block.bytes.len();
        let queued = shared.queued_bytes.load(Ordering::Acquire);
        if queued + len > shared.queue_hard_cap() {
            block.mark_dropped();
            st.pending_dropped += lines;
            shared.dropped_lines.fetch_add(lines, Ordering::Relaxed);
            return Vec::new();
        }
        let mut msgs = Vec::with_capacity(2);
        if st.pending_dropped > 0 {
            let count = std::mem::take(&mut st.pending_dropped);
            msgs.push(Msg::Event {
                process: Some(self.process.clone()),
                instance: Some(self.id),
                kind: EventKind::LinesDropped { count },
                ts_us: now_us(),
            });
        }
        shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        msgs.push(Msg::Block(block));
        msgs
    }

    /// Forget the oldest blocks beyond the ring's bounds, but only those that are durable
    /// (or dropped): a block still queued for the writer is the only copy of its lines.
    fn evict(&self, st: &mut LiveState, shared: &Shared) {
        let (max_bytes, max_lines) = (shared.opts.ring_max_bytes, shared.opts.ring_max_lines);
        while st.ring.len() > 1 && (st.ring_bytes > max_bytes || st.ring_lines > max_lines) {
            let front = &st.ring[0];
            if !front.evictable() {
                break;
            }
            st.ring_bytes -= front.bytes.len();
            st.ring_lines -= front.view().count as usize;
            st.ring.pop_front();
        }
    }

    /// Called by the writer after a commit, so the ring can shrink back to its bounds.
    pub(crate) fn after_commit(&self, shared: &Shared) {
        let mut st = self.lock();
        self.evict(&mut st, shared);
    }

    /// The first sequence number the ring holds (or the next one, when it holds none).
    pub(crate) fn start_seq(&self) -> u64 {
        let st = self.lock();
        st.ring
            .front()
            .map_or(st.builder.first_seq(), |b| b.first_seq)
    }

    pub(crate) fn snapshot(&self) -> RingSnapshot {
        let st = self.lock();
        let start_seq = st
            .ring
            .front()
            .map_or(st.builder.first_seq(), |b| b.first_seq);
        RingSnapshot {
            start_seq,
            blocks: st.ring.iter().cloned().collect(),
            open: (!st.builder.is_empty()).then(|| (st.builder.first_seq(), st.builder.snapshot())),
        }
    }

    /// Lines from `from` on, at most `max`, if the ring still holds `from`.
    pub(crate) fn read_from(&self, from: u64, max: usize) -> Option<Vec<Line>> {
        let snap = self.snapshot();
        if from < snap.start_seq {
            return None;
        }
        let mut out = Vec::new();
        for view in snap.views() {
            if view.end_seq() <= from {
                continue;
            }
            for (i, m) in view.metas().enumerate() {
                let seq = view.first_seq + i as u64;
                if seq >= from {
                    out.push(view.line(i as u32, &m, self.id));
                    if out.len() >= max {
                        return Some(out);
                    }
                }
            }
        }
        Some(out)
    }
}

/// The capture side's handle on one live instance. Cheap to clone; stdout and stderr
/// capture tasks each hold one.
#[derive(Clone)]
pub struct InstanceWriter {
    pub(crate) shared: Arc<Shared>,
    pub(crate) live: Arc<Live>,
}

impl InstanceWriter {
    pub fn id(&self) -> u64 {
        self.live.id
    }

    /// Append raw output read from `stream`. Never blocks on the disk.
    pub fn append(&self, stream: Stream, bytes: &[u8]) {
        self.live.append(&self.shared, stream, bytes, now_us());
    }

    /// Append with an explicit timestamp (tests, imports).
    pub fn append_at(&self, stream: Stream, bytes: &[u8], ts_us: i64) {
        self.live.append(&self.shared, stream, bytes, ts_us);
    }

    /// Wait until the writer has room for more lines. Capture calls this between reads: a
    /// child printing faster than the disk writes is slowed down (its writes to the pipe
    /// block) as if it wrote to a file, instead of losing lines, however slow the disk.
    ///
    /// Returns false without waiting (or as soon as it happens) while the store is failing
    /// ([`super::StoreHealth::writable`] false: the writer keeps what it can in memory and
    /// counts what it gives up), and after `stall_limit` without any progress of the writer
    /// (a stalled disk): the caller then reads on, and what goes beyond the queue's hard cap
    /// is dropped from the store (never from the ring) and counted.
    pub async fn wait_for_room(&self, stall_limit: std::time::Duration) -> bool {
        let mut deadline = tokio::time::Instant::now() + stall_limit;
        loop {
            let notified = self.shared.room_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.has_room() {
                return true;
            }
            if !self.shared.writable() {
                return false;
            }
            match tokio::time::timeout_at(deadline, notified).await {
                // The writer took something from the queue, or committed: progress.
                Ok(()) => deadline = tokio::time::Instant::now() + stall_limit,
                Err(_) => return self.shared.has_room(),
            }
        }
    }

    /// [`Self::wait_for_room`] for blocking callers.
    pub fn wait_for_room_blocking(&self, stall_limit: std::time::Duration) -> bool {
        let mut deadline = std::time::Instant::now() + stall_limit;
        let (lock, cv) = &self.shared.room_cv;
        let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.shared.has_room() {
            if !self.shared.writable() {
                return false;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let (g, timeout) = cv
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner());
            guard = g;
            if !timeout.timed_out() {
                deadline = std::time::Instant::now() + stall_limit;
            }
        }
        true
    }

    /// The store's [`super::StoreOptions::stall_limit`], for [`Self::wait_for_room`].
    pub fn stall_limit(&self) -> std::time::Duration {
        self.shared.opts.stall_limit
    }

    /// Lines appended so far (the next sequence number).
    pub fn next_seq(&self) -> u64 {
        *self.live.seq_tx.borrow()
    }

    /// Seal what was appended so far and hand it to the writer, without waiting.
    pub fn seal(&self) {
        let mut st = self.live.lock();
        self.live.seal(&mut st, &self.shared);
    }

    /// End the instance: keep final lines without newline, record the exit, and return
    /// once all of it is durable. Blocking: call from a blocking context.
    pub fn finish(self, exit: ExitStatus) -> Result<(), StoreError> {
        self.end(exit)?.wait_blocking()
    }

    /// [`Self::finish`] for async callers.
    pub async fn finish_async(self, exit: ExitStatus) -> Result<(), StoreError> {
        self.end(exit)?.durable().await
    }

    /// End the instance without waiting for the disk: its final lines and exit are queued
    /// behind everything appended before, and readers see the exit at once (followers get
    /// the end once they have every line, from the ring meanwhile). The returned handle
    /// says when the end is durable.
    pub fn end(self, exit: ExitStatus) -> Result<EndPending, StoreError> {
        let ts = now_us();
        let next_seq = self.live.finish_streams(&self.shared, ts, exit.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let dropped = std::mem::take(&mut self.live.lock().pending_dropped);
        if !self.shared.send(Msg::End {
            id: self.live.id,
            exit,
            ended_us: ts,
            next_seq,
            dropped,
            done: tx,
        }) {
            return Err(StoreError::WriterGone);
        }
        Ok(EndPending { rx })
    }
}

/// An instance's end on its way to the disk. See [`InstanceWriter::end`].
#[must_use = "say what happens if the end cannot be made durable"]
pub struct EndPending {
    rx: tokio::sync::oneshot::Receiver<Result<(), StoreError>>,
}

impl EndPending {
    /// Wait until the end (and every line before it) is durable.
    pub async fn durable(self) -> Result<(), StoreError> {
        self.rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// [`Self::durable`] for blocking callers.
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        self.rx
            .blocking_recv()
            .map_err(|_| StoreError::WriterGone)?
    }
}
