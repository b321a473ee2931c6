//! The integration tests: one binary (so one build and one link), one module per area,
//! shared helpers in [`helpers`].
//!
//! All tests run in this one process on parallel threads: nothing may change
//! process-global state (environment, current directory, umask, signal dispositions).
//! Child processes get what they need through explicit arguments and environment (see
//! [`helpers::daemon::bpm_command`]), data lives in temporary directories, and listeners
//! bind 127.0.0.1 port 0.

mod helpers;

mod access;
mod bounds;
mod cli;
mod daemon;
mod daemons;
mod filter_file;
mod habits;
mod health;
mod hygiene;
mod mcp;
mod mcp_compat;
mod migrations;
mod migrations_filters;
mod orphans;
mod schemas;
mod search_filters;
mod service;
mod setup;
mod slow_disk;
mod start;
mod store;
mod store_crash;
mod store_faults;
mod store_model;
mod supervisor;
mod tui;
