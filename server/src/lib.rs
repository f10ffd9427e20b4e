//! transferd: a background-transfer service. Clients queue HTTP(S) downloads over gRPC;
//! transferd runs them in the background (queued, prioritised, paused, resumed, restarted when a
//! server cannot resume, surviving restarts) and streams progress to every client that watches.
//! The contract mirrors WinRT's `Windows.Networking.BackgroundTransfer`.
//!
//! # Layout
//! - [`server`]: wiring. [`server::Transferd`] opens the store and loads every download before
//!   binding, then serves on an already-bound listener until a shutdown future completes.
//! - [`grpc`]: the gRPC layer, one file per service. Converts at the edge, maps every error to
//!   one status code, and [`grpc::routes`] gathers everything served (both services, health,
//!   reflection) so layers that apply to every call go in one place.
//! - [`client`]: a typed client for both services over one connection, for the tests and CLI.
//! - [`engine`]: the transfer engine: registry, priority queue, scheduler, state machine and
//!   transfer tasks. Knows nothing of gRPC.
//! - [`conditions`]: network, cost, constrained-mode and disk conditions, and which paused
//!   state they put a download in.
//! - [`progress`]: progress fan-out to any number of watchers without ever slowing a transfer.
//! - [`fetch`]: the HTTP fetcher; owns the Range / If-Range / restart rules and classifies
//!   failures as transient or fatal.
//! - [`retry`]: backoff with jitter, Retry-After, and the retry budget.
//! - [`store`]: durable state behind the `Store` trait; SQLite (WAL) by default.
//! - [`operation`]: the domain model of a download and its status rules.
//! - [`paths`]: result-file validation, partial files and the atomic commit.
//! - [`config`]: flags and environment variables.
//! - [`error`]: typed errors.
//! - [`pb`]: generated protobuf code, quarantined.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod grpc;
pub mod operation;
pub mod paths;
pub mod pb;
pub mod progress;
pub mod retry;
pub mod server;
pub mod store;

pub use config::Config;
