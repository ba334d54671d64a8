//! `snorky-bench run`: the load generator's scenarios.
//!
//! - [`driver`]: resolves the sizes, starts a fresh server process per scenario and kind, runs
//!   the scenarios, judges the targets and writes the report.
//! - [`common`]: what the PubSub scenarios share (publish size, drain and window waits, rows).
//! - One module per scenario run against every server kind (ceiling, Snorky, Channels):
//!   [`fanout`], [`idle`], [`setup`], [`multi`], [`latency`], [`rpc`].
//! - One module per scenario run against Snorky only (the ceiling has no equivalent of
//!   DataSync, Chat or Python services, so their rows carry absolute numbers), with what they
//!   share in [`services`]: [`routing`], [`datasync`], [`chat`], [`python`], [`isolation`]; and
//!   [`sockjs`] (WebSocket and SockJS xhr-streaming fan-outs in one run); [`django`] (the
//!   Django path from `save()` to the clients, against Channels; its processes in
//!   [`django_procs`]).
//! - [`cluster`]: PubSub on several Snorky nodes sharing a Redis, beside one node and Django
//!   Channels on Redis (it starts its own processes, Redis included; its own table).
//! - [`targets`]: the targets table, judged from the recorded rows.
//! - [`soak`]: `snorky-bench soak`, not a scenario of `run`: connections churning for a long
//!   time against one server, with its own results file and plot.
//!
//! Deliveries are checked for missing, duplicated and reordered messages and timed from the
//! publishing call to their arrival.

mod chat;
mod cluster;
mod common;
mod datasync;
mod django;
mod django_procs;
mod driver;
mod fanout;
mod idle;
mod isolation;
mod latency;
mod multi;
mod python;
mod routing;
mod rpc;
mod services;
mod setup;
pub mod soak;
mod sockjs;
mod targets;

pub use driver::main;

/// Every scenario, in the order of a full run; the first six run against every server kind, the
/// others start their own servers.
const ALL_SCENARIOS: [&str; 14] = [
    "fanout",
    "idle",
    "setup",
    "multi",
    "latency",
    "rpc",
    "routing",
    "datasync",
    "chat",
    "python",
    "isolation",
    "sockjs",
    "cluster",
    "django",
];

/// Whether `scenario` starts its own servers (Snorky's, and for `cluster` Channels' too) rather
/// than running against each server kind in turn.
fn snorky_only(scenario: &str) -> bool {
    ["routing", "datasync", "chat", "python", "isolation", "sockjs", "cluster", "django"].contains(&scenario)
}
