//! bpm: a process manager for the age of AI coding agents.
//!
//! One binary is both an always-on daemon that supervises development processes and
//! records everything they print, and the clients that talk to it.
//!
//! # Layout
//!
//! The data flows child output -> capture -> store -> search -> tools:
//!
//! - [`logs`] owns the store: line framing, the block encoding, the redb tables and their
//!   migrations, the single writer thread, the hot ring cache of live instances, follow
//!   subscriptions and retention.
//! - [`search`] turns a query (regex, context, head/tail, stream, time range) into result
//!   lines over the ring and the store.
//! - [`supervisor`] owns the operating-system side of supervision: process groups (spawn,
//!   stop with grace, crash-recovery cleanup) and port-conflict diagnostics.
//!
//! - [`daemon`] runs the daemon: the operations layer every front end shares, the JSON
//!   API on TCP and on the local Unix socket.
//! - [`cli`] is the command-line front end and the local API's client.
//!
//! `main.rs` only parses arguments, dispatches and maps errors to exit codes.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod logs;
pub mod mcp;
pub mod protocol;
pub mod search;
pub mod supervisor;
pub mod timespec;
