//! Health after start: what a repeated readiness check's result does to a ready
//! process (`unhealthy` with its evidence, ready again, or a restart).

use super::{Supervisor, unix_ms};
use crate::logs::{Actor, EventKind};
use crate::supervisor::process::State;

/// Failed health checks in a row after which `restart_on_unhealthy` restarts a process
/// (docker's default retries): one slow answer is not worth a restart.
const UNHEALTHY_RESTART_AFTER: u32 = 3;

impl Supervisor {
    /// A health check's result for a ready instance: failing makes it `unhealthy` (with
    /// the evidence), passing again makes it `ready`; with `restart_on_unhealthy`, it is
    /// restarted after [`UNHEALTHY_RESTART_AFTER`] failures in a row.
    pub(super) async fn on_health(&mut self, instance: u64, result: Result<(), String>) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if run.instance != instance {
            return;
        }
        match result {
            Ok(()) => {
                run.health_failures = 0;
                if let State::Unhealthy { since_unix_ms, .. } = self.state {
                    run.ready = Some(true);
                    self.state = State::Ready;
                    let secs = (unix_ms() - since_unix_ms).max(0) as f64 / 1000.0;
                    self.record(
                        Some(instance),
                        EventKind::Note {
                            text: format!("healthy again after {secs:.1}s"),
                        },
                    );
                }
            }
            Err(error) => {
                run.health_failures = run.health_failures.saturating_add(1);
                let failures = run.health_failures;
                run.ready = Some(false);
                let since_unix_ms = match &self.state {
                    State::Unhealthy { since_unix_ms, .. } => *since_unix_ms,
                    _ => {
                        self.record(
                            Some(instance),
                            EventKind::Note {
                                text: format!("unhealthy: {error}"),
                            },
                        );
                        unix_ms()
                    }
                };
                self.state = State::Unhealthy {
                    since_unix_ms,
                    error: error.clone(),
                };
                let restart = self
                    .spec
                    .ready
                    .as_ref()
                    .is_some_and(|r| r.restart_on_unhealthy);
                if restart && failures >= UNHEALTHY_RESTART_AFTER {
                    self.record(
                        Some(instance),
                        EventKind::Note {
                            text: format!(
                                "restarting: unhealthy after {failures} failed health checks ({error})"
                            ),
                        },
                    );
                    self.record(
                        Some(instance),
                        EventKind::RestartRequested {
                            by: Actor::CrashPolicy,
                        },
                    );
                    self.last_error = Some(format!("restarted: unhealthy ({error})"));
                    self.swap_out_run().await;
                    self.restarts += 1;
                    if let Err(e) = self.spawn_run().await {
                        tracing::warn!(error = %e, "restart of an unhealthy process failed");
                    }
                }
            }
        }
    }
}
