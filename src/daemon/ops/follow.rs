//! The follow stream: an instance's backlog, its live lines, its end, and then the next
//! instance, for as long as the client reads.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{OpError, Ops};
use crate::logs::{ExitStatus, InstanceKind, InstanceMeta, Store, Stream};
use crate::protocol::{FollowQuery, FollowRecord, LogLine};
use crate::search;
use crate::supervisor::process::ProcessHandle;

/// Follow streams open at once; one more is refused (503) until one ends. A stream ends
/// when its client goes away: a quiet one is noticed by its heartbeat failing to write.
pub const MAX_FOLLOWERS: usize = 64;

impl Ops {
    /// A process's output as it comes: its instance's backlog, live lines, its end, and
    /// the next instance (a restart or a later start), for as long as the stream is polled or until the daemon shuts down. Errors
    /// (unknown process, bad regex, instance out of range) come before the stream.
    pub async fn follow(
        &self,
        process: &str,
        req: FollowQuery,
    ) -> Result<impl futures_util::Stream<Item = Vec<FollowRecord>> + Send + 'static, OpError> {
        req.validate().map_err(OpError::BadRequest)?;
        // A process only the store knows is followed to the end of its last instance.
        let (name, handle) = self.find_or_stored(process).await?;
        let permit = self.inner.followers.clone().try_acquire_owned().map_err(|_| {
            OpError::Busy(format!(
                "{MAX_FOLLOWERS} follow streams are open, the most the daemon serves at once; end one (a `bpm logs -f`, `bpm run` or `bpm tui` left open) and try again"
            ))
        })?;
        let re = match &req.pattern {
            Some(p) if !p.is_empty() => Some(search::compile(p, req.case_insensitive)?),
            _ => None,
        };
        let kind = if req.build {
            InstanceKind::Build
        } else {
            InstanceKind::Run
        };
        let store = self.inner.store.clone();
        let meta = {
            let (store, name, req) = (store.clone(), name.clone(), req.clone());
            tokio::task::spawn_blocking(move || match (req.instance, req.number) {
                (Some(id), _) => store.instance(id),
                (None, Some(n)) => store.resolve_number(&name, kind, n),
                (None, None) => store.resolve(&name, kind, req.index.unwrap_or(-1)),
            })
            .await
            .map_err(|e| OpError::BadRequest(e.to_string()))??
        };
        let from = match req.tail {
            Some(n) => meta.next_seq.saturating_sub(n).max(meta.first_seq),
            None => meta.first_seq,
        };
        let f = Follow {
            _permit: permit,
            closing: self.inner.closing.clone(),
            handle,
            follower: store.follow(meta.id, from),
            store,
            name,
            kind,
            stream: req.stream.only(),
            re,
            current: meta.id,
            phase: Phase::Lines,
        };
        let first = f.instance_record(&meta, false);
        Ok(futures_util::stream::unfold(
            (f, Some(first)),
            |(mut f, first)| async move {
                // The instance at once, not with its first line (it may be quiet).
                if let Some(first) = first {
                    return Some((vec![first], (f, None)));
                }
                let mut out = Vec::new();
                if f.next(&mut out).await || !out.is_empty() {
                    Some((out, (f, None)))
                } else {
                    None
                }
            },
        ))
    }
}

/// Where a follow stream is.
enum Phase {
    /// Sending the current instance's lines.
    Lines,
    /// The instance ended; waiting for the supervisor to say what comes next.
    Ended,
    /// The end was reported; waiting for the process to run again.
    Waiting,
    Done,
}

/// The state of one follow stream (see [`Ops::follow`]).
struct Follow {
    store: Store,
    /// `None` for a process only the store knows (no supervisor): the stream ends with
    /// its instance.
    handle: Option<ProcessHandle>,
    name: String,
    kind: InstanceKind,
    stream: Option<Stream>,
    re: Option<regex::bytes::Regex>,
    current: u64,
    follower: crate::logs::Follower,
    phase: Phase,
    closing: CancellationToken,
    /// Its place among the [`MAX_FOLLOWERS`], given back when the stream is dropped.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// How often a follow stream looks at the supervisor's status right after an instance
/// ended (a restart's new instance comes within milliseconds)...
const FOLLOW_POLL: Duration = Duration::from_millis(20);
/// ...and while it waits for an exited or stopped process to run again.
const FOLLOW_IDLE_POLL: Duration = Duration::from_millis(100);

impl Follow {
    fn instance_record(&self, meta: &InstanceMeta, switch: bool) -> FollowRecord {
        FollowRecord::instance(meta, switch)
    }

    /// Append the next records to `out`, waiting until there are some. False once the
    /// stream is over.
    async fn next(&mut self, out: &mut Vec<FollowRecord>) -> bool {
        loop {
            match self.phase {
                Phase::Done => return false,
                Phase::Lines => match self.follower.next_batch(4096).await {
                    Ok(Some(lines)) => {
                        for l in lines {
                            if self.stream.is_some_and(|s| s != l.stream) {
                                continue;
                            }
                            if let Some(re) = &self.re
                                && !search::line_matches(re, &l.bytes)
                            {
                                continue;
                            }
                            out.push(FollowRecord::Line(LogLine::new(l, self.re.is_some())));
                        }
                        if !out.is_empty() {
                            return true;
                        }
                    }
                    Ok(None) => self.phase = Phase::Ended,
                    Err(e) => {
                        tracing::warn!(process = %self.name, error = %e, "follow stopped");
                        self.phase = Phase::Done;
                    }
                },
                Phase::Ended | Phase::Waiting => {
                    let Some(handle) = &self.handle else {
                        if matches!(self.phase, Phase::Ended) {
                            out.push(self.exit_record(false).await);
                        }
                        self.phase = Phase::Done;
                        return true;
                    };
                    let status = handle.status_now();
                    let newer = status.instance.filter(|&i| i > self.current);
                    let newer = match self.kind {
                        InstanceKind::Run => newer,
                        // Builds are not in the status: a build stream ends with its build.
                        InstanceKind::Build => None,
                    };
                    if let Some(next) = newer {
                        if matches!(self.phase, Phase::Ended) {
                            out.push(self.exit_record(true).await);
                        }
                        let store = self.store.clone();
                        let meta = tokio::task::spawn_blocking(move || store.instance(next)).await;
                        let Ok(Ok(meta)) = meta else {
                            self.phase = Phase::Done;
                            return true;
                        };
                        out.push(self.instance_record(&meta, true));
                        self.current = next;
                        self.follower = self.store.follow(next, meta.first_seq);
                        self.phase = Phase::Lines;
                        return true;
                    }
                    let settled = !status.state.is_running() || self.kind == InstanceKind::Build;
                    if matches!(self.phase, Phase::Ended) && settled {
                        out.push(self.exit_record(false).await);
                        self.phase = if self.kind == InstanceKind::Build {
                            Phase::Done
                        } else {
                            Phase::Waiting
                        };
                        return true;
                    }
                    if self.closing.is_cancelled() {
                        self.phase = Phase::Done;
                        return !out.is_empty();
                    }
                    let poll = if matches!(self.phase, Phase::Waiting) {
                        FOLLOW_IDLE_POLL
                    } else {
                        FOLLOW_POLL
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = self.closing.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn exit_record(&self, restarted: bool) -> FollowRecord {
        let store = self.store.clone();
        let id = self.current;
        let exit = tokio::task::spawn_blocking(move || store.instance(id))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|m| m.exit);
        FollowRecord::Exit {
            instance: id,
            status: exit.unwrap_or(ExitStatus::Unknown),
            restarted,
        }
    }
}
