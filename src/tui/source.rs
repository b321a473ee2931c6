//! Where the TUI's answers come from: the daemon through [`crate::client`], else, for
//! a local data directory with no daemon running, the store opened read-only (and
//! closed when idle, so that a daemon starting meanwhile can take it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TuiArgs;
use super::app::{Conn, Msg};
use crate::client::{self, Client, ClientError, Target};
use crate::daemon::ops;
use crate::logs::Store;
use crate::protocol::{LogQuery, LogResult, StatusReport};

/// A store opened for offline reads is closed after this long unused, so that a daemon
/// starting meanwhile can take it.
const STORE_IDLE: Duration = Duration::from_secs(2);

/// Where answers come from: the daemon, else (locally) the store read-only.
#[derive(Clone)]
pub(super) struct Source {
    pub(super) client: Client,
    /// The local data directory; `None` for a daemon elsewhere (no store to read).
    local: Option<Target>,
    /// The store opened for offline reads, and when it was last used.
    store: Arc<Mutex<Option<(Store, Instant)>>>,
}

impl Source {
    pub(super) fn new(args: &TuiArgs) -> Result<Source, String> {
        let (client, local) = match &args.url {
            Some(url) => {
                let token = std::env::var("BPM_TOKEN")
                    .ok()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty());
                (
                    Client::remote(url, token)
                        .map_err(|e| e.to_string())?
                        .for_tui(),
                    None,
                )
            }
            None => {
                let opts = client::DaemonOptions::new(args.data_dir.clone(), false);
                let target = client::locate(opts.data_dir.as_deref(), &opts.cwd);
                (Client::new(target.clone()).for_tui(), Some(target))
            }
        };
        Ok(Source {
            client,
            local,
            store: Arc::new(Mutex::new(None)),
        })
    }

    /// The store, opened read-only (blocking).
    fn open_store(&self) -> Result<Option<Store>, String> {
        let Some(t) = &self.local else {
            return Ok(None);
        };
        let mut held = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, used)) = held.as_mut() {
            *used = Instant::now();
            return Ok(Some(s.clone()));
        }
        if !t.store().exists() {
            return Ok(None);
        }
        let s = Store::open_read_only(&t.store()).map_err(|e| e.to_string())?;
        *held = Some((s.clone(), Instant::now()));
        Ok(Some(s))
    }

    pub(super) fn close_idle(&self) {
        let mut held = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if held
            .as_ref()
            .is_some_and(|(_, used)| used.elapsed() > STORE_IDLE)
        {
            *held = None;
        }
    }

    fn close_store(&self) {
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A log read: from the daemon when connected, else from the store.
    pub(super) async fn logs(
        &self,
        online: bool,
        name: &str,
        q: LogQuery,
    ) -> Result<LogResult, String> {
        if online {
            return self.client.logs(name, &q).await.map_err(|e| e.to_string());
        }
        let this = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || match this.open_store()? {
            Some(store) => ops::read_logs(&store, &name, &q).map_err(|e| e.to_string()),
            None => Err("no daemon, and no store to read".to_owned()),
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The status: the daemon's; else, once, the store's (it cannot change without a
    /// daemon); else why there is none.
    pub(super) async fn status(&self, was: &Conn) -> Vec<Msg> {
        match self.client.status(None).await {
            Ok(r) => {
                self.close_store();
                let mut out = Vec::new();
                if !was.online() {
                    out.push(Msg::Conn(Conn::Online {
                        address: self.client.address(),
                    }));
                }
                out.push(Msg::Status(r));
                out
            }
            Err(e) if matches!(was, Conn::Offline { .. }) && e.not_sent() => Vec::new(),
            Err(e) => {
                let lost = was.online();
                let this = self.clone();
                let offline = tokio::task::spawn_blocking(move || this.offline_status()).await;
                match offline {
                    Ok(Ok(Some((store, report)))) => vec![
                        Msg::Conn(Conn::Offline { store, lost }),
                        Msg::Status(report),
                    ],
                    Ok(Ok(None)) => vec![
                        Msg::Conn(Conn::Disconnected {
                            address: self.client.address(),
                            error: short_error(&e),
                        }),
                        Msg::Status(StatusReport::empty()),
                    ],
                    Ok(Err(why)) => vec![Msg::Conn(Conn::Disconnected {
                        address: self.client.address(),
                        error: why,
                    })],
                    Err(j) => vec![Msg::Error(j.to_string())],
                }
            }
        }
    }

    /// The status the store alone tells (blocking); `None` without a local store.
    fn offline_status(&self) -> Result<Option<(String, StatusReport)>, String> {
        let Some(t) = &self.local else {
            return Ok(None);
        };
        let Some(store) = self.open_store()? else {
            return Ok(None);
        };
        let config = t
            .project_dir
            .as_deref()
            .and_then(|d| crate::config::Config::load(d).ok().flatten())
            .unwrap_or_else(|| crate::config::Config::default_for(std::path::Path::new("/")));
        let r = ops::offline_status(&store, &config, None).map_err(|e| e.to_string())?;
        Ok(Some((t.store().display().to_string(), r)))
    }
}

fn short_error(e: &ClientError) -> String {
    match e {
        ClientError::NotRunning { .. } => "no daemon answers".to_owned(),
        e => e.to_string(),
    }
}
