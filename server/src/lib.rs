//! transferd: a background-transfer service. Clients queue HTTP(S) downloads over gRPC;
//! transferd runs them in the background (queued, prioritised, paused, resumed, restarted when a
//! server cannot resume, surviving restarts) and streams progress to every client that watches.
//! The contract mirrors WinRT's `Windows.Networking.BackgroundTransfer`.
//!
//! # Layout
//! A request flows down this list: the gRPC layer converts it, an engine command changes the
//! download through its one transition function, the scheduler starts it, its transfer task
//! drives the fetcher and checkpoints into the store, and the progress hub tells every watcher.
//!
//! Public, for the binary, the tests and clients:
//! - [`server`]: wiring. [`server::Transferd`] opens the store and loads every download before
//!   binding, then serves on an already-bound listener until a shutdown future completes.
//! - [`client`]: a typed client for both services over one connection, for the tests and CLI.
//! - [`auth`]: who is calling: the caller's name, tenant and role, established once per call;
//!   public for its token file ([`auth::tokens`]), which the binary hashes and reloads.
//! - [`config`]: flags and environment variables.
//! - [`logging`]: the log's filter and format (text or JSON lines), checked at start.
//! - [`egress`]: the egress policy: which addresses the fetcher may connect to.
//! - [`tls`]: the TLS files of the gRPC port, read and checked before anything binds.
//! - [`pb`]: generated protobuf code, quarantined.
//!
//! Inside the crate:
//! - `grpc/`: the gRPC layer, one file per service (`transfer.rs`, `system.rs`); `convert.rs`
//!   converts at the edge (every protobuf number is checked there), `status.rs` is the one table
//!   from errors to status codes, and `routes()` gathers everything served (both services,
//!   health, reflection; `dispatch.rs` picks the service by the call's path) so layers that
//!   apply to every call go in one place. `identify.rs` is the layer in front of every route
//!   (bearer token, caller, role check) and `roles.rs` the one table of the least role each
//!   method needs. `coalesce.rs` wraps each accepted socket so the frames of many streams on
//!   one connection go out in few writes (fan-out to watchers).
//! - `engine/`: the transfer engine; knows nothing of gRPC. `commands.rs` (what clients ask),
//!   `validate.rs` (request limits), `download.rs` (one download and the one transition
//!   function), `registry.rs` (downloads by guid and creation order, the index of live
//!   downloads, result-file claims, paging, the lazy WatchDownloads snapshot walk), `queue.rs`
//!   (the run queue), `scheduler.rs` (slots, priorities, serialized groups), `transfer.rs` (the
//!   transfer task: attempts, checkpoints, commit), `progressor.rs` (what a running attempt
//!   reports, landing in the download's state, its watchers and the store), `retention.rs`
//!   (DeleteDownload and `--retain-finished`), `results.rs` (ReadResult: a download's bytes,
//!   followed while written), `host.rs` (host conditions and their monitor), `tenants.rs`
//!   (which downloads a caller's request covers; per-tenant counts and quotas), `cluster.rs`
//!   (replicas sharing a PostgreSQL store: claims, leases, fencing, per-epoch partial files;
//!   `cluster/call.rs` runs or forwards control calls, `cluster/feed.rs` keeps every replica's
//!   copies current). Every command runs as the call's `Caller`. `mod.rs` documents the lock
//!   order.
//! - `fetch/`: the HTTP fetcher; owns the Range / If-Range / restart rules and classifies
//!   failures as transient or fatal. `segments.rs` fetches a large file over several
//!   connections (adding them while throughput grows, one checkpoint per segment, retries per
//!   segment), with `spans.rs` (the parts and their sums), `piece.rs` (one segment's ranged
//!   requests) and `hosts.rs` (the per-host connection cap).
//! - `store/`: durable state behind the async `Store` trait with backend-neutral errors;
//!   `sqlite.rs` is the embedded default (its schema and migrations in `sqlite/schema.rs`, the
//!   column mapping both backends share in `sqlite/row.rs`), `postgres.rs` the store replicas
//!   share (`postgres/shared.rs`: leases, claims, fenced writes, LISTEN/NOTIFY), `shared.rs`
//!   the `SharedStore` trait it implements, `trust.rs` the checks a loaded row must pass,
//!   `conformance.rs` the suite every backend passes.
//! - `metrics/`: every Prometheus metric, the `--metrics-listen` endpoint that serves them,
//!   and the timed store wrapper; the engine, fetcher, store and gRPC layer (`grpc/measure.rs`)
//!   only report events to it.
//! - `progress`: progress fan-out to any number of watchers without ever slowing a transfer.
//! - `retry`: backoff with jitter, Retry-After, and the retry budget.
//! - `sha256`: a SHA-256 whose state is saved with each checkpoint and continued on resume.
//! - `operation`: the domain model of a download: spec, settings, statuses and their numbers.
//! - `redact`: which request headers are sensitive, and the one way secrets (their values, URI
//!   userinfo) are shown in responses and logs: as a fixed marker.
//! - `paths`: result-file validation, partial files, the atomic commit and result-file removal;
//!   `paths/read.rs` opens them for ReadResult, and `paths/dirsync.rs` is the group fsync that
//!   commits into one directory share.
//! - `datadir`: the lock that keeps a second process off a data directory.
//! - `error`: typed errors of the engine.
#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod config;
pub(crate) mod datadir;
pub mod egress;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod fetch;
pub(crate) mod grpc;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod operation;
pub(crate) mod paths;
pub mod pb;
pub(crate) mod progress;
pub(crate) mod redact;
pub(crate) mod retry;
pub mod server;
pub(crate) mod sha256;
pub(crate) mod store;
pub mod tls;

pub use config::Config;
