//! Carrying out the app's commands: each is a task calling the daemon (or reading the
//! store) whose answer comes back to the event loop as a [`Msg`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::app::{self, App, Cmd, Msg};
use super::source::Source;
use crate::client::{ClientError, FollowStream};
use crate::protocol::{FollowQuery, FollowRecord, LogQuery, LogResult, StartRequest};

/// Carries out commands: each call is a task whose answer comes back as a [`Msg`].
pub(super) struct Exec {
    source: Source,
    tx: UnboundedSender<Msg>,
    follow: Option<tokio::task::JoinHandle<()>>,
    /// The filter's search and its follow stream of matches.
    filter: Option<tokio::task::JoinHandle<()>>,
    /// A status read under way (the next periodic one is skipped).
    status_busy: Arc<AtomicBool>,
}

impl Exec {
    pub(super) fn new(source: Source, tx: UnboundedSender<Msg>) -> Exec {
        Exec {
            source,
            tx,
            follow: None,
            filter: None,
            status_busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Close the store if it has been idle (see [`Source::close_idle`]).
    pub(super) fn close_idle(&self) {
        self.source.close_idle();
    }

    pub(super) fn stop_follow(&mut self) {
        if let Some(h) = self.follow.take() {
            h.abort();
        }
    }

    pub(super) fn stop_filter(&mut self) {
        if let Some(h) = self.filter.take() {
            h.abort();
        }
    }

    pub(super) fn run(&mut self, cmd: Cmd, app: &App) {
        let tx = self.tx.clone();
        let src = self.source.clone();
        let online = app.conn.online();
        let send = move |m: Msg| {
            let _ = tx.send(m);
        };
        match cmd {
            Cmd::Status => {
                use std::sync::atomic::Ordering;
                if self.status_busy.swap(true, Ordering::AcqRel) {
                    return;
                }
                let busy = self.status_busy.clone();
                let was = app.conn.clone();
                tokio::spawn(async move {
                    for m in src.status(&was).await {
                        send(m);
                    }
                    busy.store(false, Ordering::Release);
                });
            }
            Cmd::Unfollow => self.stop_follow(),
            Cmd::Follow {
                name,
                build,
                tail,
                epoch,
            } => {
                self.stop_follow();
                self.follow = Some(tokio::spawn(async move {
                    let q = FollowQuery {
                        build,
                        tail: Some(tail),
                        ..Default::default()
                    };
                    match src.client.follow(&name, &q).await {
                        Ok(stream) => {
                            let mut stream = Gathered::new(stream);
                            while let Some(records) = stream.next().await {
                                send(Msg::Follow { epoch, records });
                            }
                            send(Msg::FollowEnded { epoch });
                        }
                        // No run yet (a process that never started, or one whose
                        // first run the store has not recorded yet): nothing to follow
                        // until the status shows a run (the app follows again then).
                        Err(ClientError::Api {
                            status: 400 | 404, ..
                        }) => send(Msg::FollowEnded { epoch }),
                        Err(e) => {
                            send(Msg::Error(e.to_string()));
                            send(Msg::FollowEnded { epoch });
                        }
                    }
                }));
            }
            Cmd::Instances { name, epoch } => {
                tokio::spawn(async move {
                    let list = |build| LogQuery {
                        all_instances: true,
                        build,
                        tail: Some(0),
                        ..Default::default()
                    };
                    let runs = src.logs(online, &name, list(false)).await;
                    let builds = src.logs(online, &name, list(true)).await;
                    send(Msg::Instances {
                        epoch,
                        runs: runs.map(|r| r.instances).unwrap_or_default(),
                        builds: builds.map(|r| r.instances).unwrap_or_default(),
                    });
                });
            }
            Cmd::Tail {
                name,
                build,
                instance,
                tail,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = LogQuery {
                        instance: Some(instance),
                        build,
                        tail: Some(tail),
                        ..Default::default()
                    };
                    match src.logs(online, &name, q).await {
                        Ok(r) => send(Msg::Lines {
                            epoch,
                            range: None,
                            lines: r.lines,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                });
            }
            Cmd::Range {
                name,
                build,
                instance,
                from,
                to,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = LogQuery {
                        instance: Some(instance),
                        build,
                        from_seq: Some(from),
                        to_seq: Some(to),
                        all: true,
                        ..Default::default()
                    };
                    match src.logs(online, &name, q).await {
                        Ok(r) => send(Msg::Lines {
                            epoch,
                            range: Some((from, to)),
                            lines: r.lines,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                });
            }
            Cmd::Find {
                name,
                build,
                instance,
                pattern,
                from,
                forward,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = |from_seq, to_seq| LogQuery {
                        pattern: Some(pattern.clone()),
                        instance: Some(instance),
                        build,
                        from_seq,
                        to_seq,
                        head: forward.then_some(1),
                        tail: (!forward).then_some(1),
                        ..Default::default()
                    };
                    let (first, wrap) = if forward {
                        (q(Some(from), None), q(None, Some(from)))
                    } else {
                        (q(None, Some(from)), q(Some(from), None))
                    };
                    let seq = |r: Result<LogResult, String>| {
                        r.map(|r| r.lines.iter().find(|l| l.matched).map(|l| l.seq))
                    };
                    let found = match seq(src.logs(online, &name, first).await) {
                        Ok(Some(s)) => Ok((Some(s), false)),
                        Ok(None) => seq(src.logs(online, &name, wrap).await).map(|s| (s, true)),
                        Err(e) => Err(e),
                    };
                    match found {
                        Ok((seq, wrapped)) => send(Msg::Found {
                            epoch,
                            seq,
                            wrapped,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                });
            }
            Cmd::Count {
                name,
                build,
                instance,
                pattern,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = LogQuery {
                        pattern: Some(pattern),
                        instance: Some(instance),
                        build,
                        tail: Some(0),
                        ..Default::default()
                    };
                    if let Ok(r) = src.logs(online, &name, q).await {
                        send(Msg::Counted {
                            epoch,
                            matched: r.matched,
                        });
                    }
                });
            }
            Cmd::Filter {
                name,
                build,
                instance,
                pattern,
                live,
                epoch,
                generation,
            } => {
                self.stop_filter();
                self.filter = Some(tokio::spawn(async move {
                    // The stream of new matches is opened first, from the instance's
                    // end as it is then; the search after it reads to that end and
                    // maybe beyond, so no match falls between the two (the app drops
                    // the ones both bring).
                    let mut stream = None;
                    if live {
                        let q = FollowQuery {
                            instance: Some(instance),
                            build,
                            tail: Some(0),
                            pattern: Some(pattern.clone()),
                            ..Default::default()
                        };
                        stream = src.client.follow(&name, &q).await.ok();
                    }
                    let q = LogQuery {
                        pattern: Some(pattern),
                        instance: Some(instance),
                        build,
                        tail: Some(app::FILTER_LINES),
                        ..Default::default()
                    };
                    match src.logs(online, &name, q).await {
                        Ok(r) => send(Msg::Filtered {
                            epoch,
                            generation,
                            lines: r.lines,
                            matched: r.matched,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                    let Some(stream) = stream else {
                        send(Msg::FilterEnded { epoch, generation });
                        return;
                    };
                    let mut stream = Gathered::new(stream);
                    while let Some(records) = stream.next().await {
                        send(Msg::FilterFollow {
                            epoch,
                            generation,
                            records,
                        });
                    }
                    send(Msg::FilterEnded { epoch, generation });
                }));
            }
            Cmd::Unfilter => self.stop_filter(),
            Cmd::Restart(name) => {
                tokio::spawn(async move {
                    send(started(src.client.restart(&name).await, "restarted"));
                });
            }
            Cmd::Start(name) => {
                tokio::spawn(async move {
                    let req = StartRequest {
                        name: Some(name),
                        ..Default::default()
                    };
                    send(started(src.client.start(&req).await, "started"));
                });
            }
            Cmd::Stop(name) => {
                tokio::spawn(async move {
                    send(match src.client.stop(&name, false).await {
                        Ok(s) => Msg::Done {
                            text: format!("stopped {}", s.name),
                            error: false,
                        },
                        Err(e) => Msg::Done {
                            text: e.to_string(),
                            error: true,
                        },
                    });
                });
            }
        }
    }
}

/// A busy follow stream's records are gathered this long (under a third of a frame)
/// and sent as one message: one wake-up of the event loop instead of one for each write
/// of a process printing thousands of lines a second.
const FOLLOW_EVERY: Duration = Duration::from_millis(10);
/// For this long after a follow stream opens its records go out as they come: the
/// backlog makes the first frame, which should not wait.
const FOLLOW_SETTLE: Duration = Duration::from_millis(100);

/// A follow stream read in gathered batches.
struct Gathered {
    stream: FollowStream,
    opened: Instant,
    /// When the last batch with lines went out.
    last: Option<Instant>,
}

impl Gathered {
    fn new(stream: FollowStream) -> Gathered {
        Gathered {
            stream,
            opened: Instant::now(),
            last: None,
        }
    }

    /// The next records, waiting for one at least; then, once settled and after lines
    /// went out less than [`FOLLOW_EVERY`] ago, what else comes until then. `None` once
    /// the stream ended or failed.
    async fn next(&mut self) -> Option<Vec<FollowRecord>> {
        let mut records = self.stream.next().await.ok().flatten()?;
        if let Some(last) = self.last
            && self.opened.elapsed() > FOLLOW_SETTLE
        {
            let until = (last + FOLLOW_EVERY).into();
            // `next` is cancel-safe: a record is taken only from a whole line received.
            while let Ok(more) = tokio::time::timeout_at(until, self.stream.next()).await {
                match more {
                    Ok(Some(r)) => records.extend(r),
                    // Ended: these records first, the end at the next call.
                    _ => break,
                }
            }
        }
        if records.iter().any(|r| matches!(r, FollowRecord::Line(_))) {
            self.last = Some(Instant::now());
        }
        Some(records)
    }
}

/// What a start or restart's answer says in the status panel (an error when the process
/// did not come up).
fn started(r: Result<crate::protocol::StartResult, crate::client::ClientError>, verb: &str) -> Msg {
    match r {
        Ok(r) => Msg::Done {
            error: r.readiness.as_ref().is_some_and(|x| x.failed()),
            text: r.message(verb),
        },
        Err(e) => Msg::Done {
            text: e.to_string(),
            error: true,
        },
    }
}
