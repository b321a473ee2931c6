//! bpm: a process manager for the age of AI coding agents.
//!
//! One binary is both an always-on daemon that supervises development processes and
//! records everything they print, and the clients that talk to it.
//!
//! # Layout
//!
//! The data flows child output -> capture -> store -> search -> front ends:
//!
//! - [`config`] reads `.mcp-run` (every error located by file, line and column) and
//!   holds the data-directory rules.
//! - [`supervisor`] owns the operating-system side of supervision: one task per process
//!   (policy, backoff, build-then-swap, readiness), process groups (spawn, stop with
//!   grace, orphan cleanup), capture of output, port-conflict diagnostics.
//! - [`logs`] owns the store: line framing, the block encoding, the redb tables and their
//!   migrations, the single writer thread, the hot ring cache of live instances, follow
//!   subscriptions and retention.
//! - [`search`] turns a query (regex, context, head/tail, stream, time range) into result
//!   lines over the ring and the store.
//! - [`daemon`] runs the daemon: `run()` in phases, the operations layer every front end
//!   shares (`daemon::ops`), the JSON API on TCP and on the local Unix socket, the TCP
//!   guard.
//! - [`protocol`] is the local API's messages: every request and answer, one set of
//!   types for both directions; [`client`] is its typed client, for every front end.
//! - Front ends, which hold no logic and never import one another: [`cli`] (the
//!   command line), [`mcp`] (the MCP tools, served by the daemon, and `bpm mcp`, the
//!   stdio bridge), [`tui`] (`bpm tui`, the terminal dashboard).
//! - [`platform`] says what works where (Linux fully; elsewhere what reads `/proc` is
//!   off, and says so).
//! - [`timespec`] reads times such as `10m` or an ISO time, for every front end.
//!
//! `main.rs` only parses arguments, dispatches and maps errors to exit codes.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod logs;
pub mod mcp;
pub mod platform;
pub mod protocol;
pub mod search;
pub mod supervisor;
pub mod timespec;
pub mod tui;
