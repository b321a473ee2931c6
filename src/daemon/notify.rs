//! The systemd notification protocol (`Type=notify`): `READY=1` once the daemon serves,
//! `WATCHDOG=1` from its event loop at half the `WATCHDOG_USEC` interval systemd asks
//! for (`WatchdogSec=`), `STOPPING=1` when it begins to shut down. Without
//! `NOTIFY_SOCKET` (not run by systemd) each is a no-op.

use sd_notify::NotifyState;

/// The daemon serves.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// The daemon begins its shutdown.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Tell systemd the event loop is alive every half watchdog interval, for as long as the
/// daemon runs; returns at once when no watchdog is asked for. A runtime that stops
/// running tasks stops these too, and systemd restarts the daemon.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(std::time::Duration::from_millis(1));
    tracing::debug!(?interval, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd ({state:?}): {e}");
    }
}
