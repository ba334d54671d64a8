//! `snorky-bench`: the Snorky benchmark.
//!
//! One binary, three roles, so that the load generator and each server under test run in
//! separate processes (and runtimes) on the same machine:
//!
//! - `snorky-bench serve-snorky`: the Snorky server under test (PubSub + PubSubBackend).
//! - `snorky-bench serve-ceiling`: the *ceiling*, a minimal tokio + tokio-tungstenite server
//!   speaking the same PubSub subset (see `ceiling.rs`).
//! - `snorky-bench run`: the load generator. It starts each server kind as a child process
//!   (the Django Channels reference is `daphne` from `bench/.venv-channels`), runs every
//!   scenario against each of them, prints the table and optionally writes `RESULTS.md`.
//!   The scenarios of Snorky's own services (routing, DataSync, Chat, Python) run against
//!   Snorky only: DataSync and Chat through `serve-snorky --mode ...`, the Python service
//!   through the project's venv Python. `scenarios/` holds the driver, one module per scenario
//!   and the target judgment.
//! - `snorky-bench routing`: the DataSync router micro-benchmark (no sockets, `routing.rs`).
//! - `snorky-bench soak`: connections churning against one Snorky server for a long time,
//!   sampling its memory, descriptors, tasks and gauges (`scenarios/soak/`).
//!
//! Server processes print one line `READY ws=<url> backend=<url>` on stdout once listening and
//! exit when their stdin closes or on SIGTERM/SIGINT, so they never outlive the load generator.

// Counts, sizes and durations become `f64` for rates, ratios and percentiles everywhere in the
// benchmark; they stay far below 2^52, where the conversion is exact.
#![allow(clippy::cast_precision_loss)]

mod alloc;
mod ceiling;
mod client;
mod procs;
mod report;
mod routing;
mod scenarios;
mod snorky_server;
mod stats;
mod sys;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// The API key every server of the benchmark uses (loopback only).
pub const KEY: &str = "snorky-bench-key";

#[derive(Parser)]
#[command(name = "snorky-bench", about = "Snorky benchmark: load generator and reference servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Snorky server under test until stdin closes or SIGTERM.
    ServeSnorky(ServeArgs),
    /// Run the ceiling reference server until stdin closes or SIGTERM.
    ServeCeiling(ServeArgs),
    /// Run the scenarios against the servers and print (and optionally write) the results.
    Run(Box<RunArgs>),
    /// The DataSync routing micro-benchmark: `snorky::datasync::Router` in this process, no sockets.
    Routing(routing::RoutingArgs),
    /// The soak: connections churning against one Snorky server for a long time, watching it
    /// for leaks; prints (and optionally writes) the results and a plot.
    Soak(scenarios::soak::SoakArgs),
}

/// Where a server listens.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Frontend (WebSocket `/ws`) address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub frontend: String,
    /// Backend (`POST /backend`) address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub backend: String,
    /// The backend API key.
    #[arg(long, default_value = KEY)]
    pub key: String,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Count live heap allocations by size; print a snapshot line (`ALLOC ...`) on SIGUSR1.
    #[arg(long)]
    pub alloc_stats: bool,
    /// Services of `serve-snorky`: `pubsub` (PubSub + backend), `datasync` (DataSync + backend:
    /// a Simple dealer `tasks_by_owner` on model `Task` keyed by `owner`, a Broadcast dealer
    /// `all_notes` on model `Note`), `chat` (Chat + PubSub; needs --token-secret).
    #[arg(long, default_value = "pubsub")]
    pub mode: String,
    /// The secret that signs connection tokens (`serve-snorky`).
    #[arg(long)]
    pub token_secret: Option<String>,
    /// The broker this node shares with others (`serve-snorky`): `redis://127.0.0.1:<port>/0`.
    #[arg(long)]
    pub broker: Option<String>,
    /// This node's name in logs (`serve-snorky`, with `--broker`).
    #[arg(long)]
    pub node_name: Option<String>,
}

/// The load generator's options. Sizes left unset take the full-run defaults, or the smoke
/// defaults with `--smoke`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Tiny sizes everywhere (the test suite's smoke run); skips Channels unless its venv exists.
    #[arg(long)]
    pub smoke: bool,
    /// Server kinds to measure, comma-separated: ceiling, snorky, channels, and eventstream
    /// (django-eventstream, in the django scenario only; not in the default list).
    #[arg(long, default_value = "ceiling,snorky,channels")]
    pub servers: String,
    /// Scenarios to run, comma-separated: fanout, idle, setup, multi, latency, rpc (every
    /// server), routing, datasync, chat, python, isolation, sockjs, django (Snorky only; django
    /// measures Channels itself), and cluster (Snorky on one node and on several nodes sharing a
    /// Redis, and Channels on that Redis).
    #[arg(
        long,
        default_value = "fanout,idle,setup,multi,latency,rpc,routing,datasync,chat,python,sockjs,cluster,django"
    )]
    pub scenarios: String,
    /// The Python with the built `snorky` extension, for the `python` scenario (skipped with a
    /// note when it does not exist).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Routing: subscriptions in the router (and Filter subscriptions in the equality test).
    #[arg(long)]
    pub routing_subs: Option<usize>,
    /// Routing: deltas routed per measurement.
    #[arg(long)]
    pub routing_deltas: Option<usize>,
    /// DataSync and Chat: subscribed connections (members).
    #[arg(long)]
    pub service_conns: Option<usize>,
    /// DataSync: deltas per owner in the Simple-dealer run (each batch holds 100 deltas).
    #[arg(long)]
    pub datasync_per_owner: Option<u64>,
    /// DataSync: deltas in the Broadcast-dealer run.
    #[arg(long)]
    pub datasync_broadcast: Option<u64>,
    /// Chat: messages the one sender sends.
    #[arg(long)]
    pub chat_msgs: Option<u64>,
    /// The Channels reference's virtualenv (holds bin/daphne).
    #[arg(long, default_value = "bench/.venv-channels")]
    pub channels_venv: PathBuf,
    /// The Channels reference project (holds the `channels_ref` package).
    #[arg(long, default_value = "bench/channels_ref")]
    pub channels_dir: PathBuf,
    /// Write the results (markdown) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The command line to record in the results file.
    #[arg(long, default_value = "snorky-bench run")]
    pub command_line: String,
    /// Loopback source addresses to spread client connections over (127.0.0.1, .2, ...).
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Runs of every scenario against each Rust server (interleaved; the table shows medians).
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Runs against Channels (slow; its ratios are far from any threshold).
    #[arg(long)]
    pub channels_repeat: Option<usize>,
    /// Concurrent connection attempts while opening subscribers.
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Publisher window: how many messages a publisher may run ahead of the slowest subscriber.
    #[arg(long)]
    pub window: Option<u64>,
    /// Fan-out: subscribers on the one channel.
    #[arg(long)]
    pub fanout_subs: Option<usize>,
    /// Fan-out: subscribers for Channels (it may not cope with the full number).
    #[arg(long)]
    pub channels_fanout_subs: Option<usize>,
    /// Fan-out: messages published.
    #[arg(long)]
    pub fanout_msgs: Option<u64>,
    /// Idle memory: subscribed connections.
    #[arg(long)]
    pub idle_conns: Option<usize>,
    /// Idle memory: connections for Channels.
    #[arg(long)]
    pub channels_idle_conns: Option<usize>,
    /// Set-up rate: connections opened (handshake + subscribe).
    #[arg(long)]
    pub setup_conns: Option<usize>,
    /// Set-up rate: connections for Channels.
    #[arg(long)]
    pub channels_setup_conns: Option<usize>,
    /// Many channels: number of channels (5 subscribers each).
    #[arg(long)]
    pub multi_channels: Option<usize>,
    /// Many channels: subscribers per channel.
    #[arg(long)]
    pub multi_subs_per_channel: Option<usize>,
    /// Many channels: messages published to each channel.
    #[arg(long)]
    pub multi_msgs_per_channel: Option<u64>,
    /// Many channels: concurrent in-flight backend calls.
    #[arg(long)]
    pub multi_inflight: Option<usize>,
    /// Latency: subscribers.
    #[arg(long)]
    pub latency_subs: Option<usize>,
    /// Latency: messages per second.
    #[arg(long)]
    pub latency_rate: Option<u64>,
    /// Latency: seconds of publishing.
    #[arg(long)]
    pub latency_secs: Option<f64>,
    /// Cluster: publishes per second of the Redis-hop latency run (its subscribers and seconds
    /// are the latency scenario's).
    #[arg(long)]
    pub cluster_rate: Option<u64>,
    /// Cluster: worker threads of every Snorky process of the scenario, the single node's and
    /// the cluster's (default: the runtime's, one per CPU).
    #[arg(long)]
    pub cluster_threads: Option<usize>,
    /// RPC: connections of the multi-connection run (a one-connection run is always made too).
    #[arg(long)]
    pub rpc_conns: Option<usize>,
    /// RPC: seconds per run.
    #[arg(long)]
    pub rpc_secs: Option<f64>,
    /// SockJS: WebSocket connections, then xhr-streaming sessions, of its two fan-outs.
    #[arg(long)]
    pub sockjs_sessions: Option<usize>,
    /// SockJS: messages published in each fan-out.
    #[arg(long)]
    pub sockjs_msgs: Option<u64>,
    /// Django: clients of their own todos (Simple dealer by owner), one per user.
    #[arg(long)]
    pub django_mine: Option<usize>,
    /// Django: clients of every todo (Broadcast dealer).
    #[arg(long)]
    pub django_all: Option<usize>,
    /// Django: writes per second of the latency measurement.
    #[arg(long)]
    pub django_rate: Option<f64>,
    /// Django: seconds of writing of the latency measurement.
    #[arg(long)]
    pub django_secs: Option<f64>,
    /// Django: writer processes.
    #[arg(long)]
    pub django_writers: Option<usize>,
    /// Seconds of publishing after which a scenario stops publishing (Channels is slow); what
    /// was published is then drained and measured.
    #[arg(long)]
    pub publish_budget: Option<f64>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ServeSnorky(args) => snorky_server::main(&args),
        Command::ServeCeiling(args) => ceiling::main(&args),
        Command::Run(args) => scenarios::main(&args),
        Command::Routing(args) => routing::main(&args),
        Command::Soak(args) => scenarios::soak::main(&args),
    };
    if let Err(err) = result {
        eprintln!("snorky-bench: {err}");
        std::process::exit(1);
    }
}
