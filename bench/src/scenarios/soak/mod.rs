//! `snorky-bench soak`: connections churning against one Snorky server for a long time, with
//! publishes throughout, watching the server for leaks.
//!
//! The server is `serve-snorky --mode isolation` (PubSub beside DataSync, a Simple dealer by
//! owner) verifying connection tokens and counting its heap. [`clients`] holds the load (the
//! churning clients and the two publishers) and what it checks; [`samples`] what is read from
//! the server every interval (resident memory, live heap, descriptors, tasks, the gauges of
//! `/metrics`); [`plot`] draws them; [`report`] writes the results.
//!
//! The run: a baseline sample, the load for `--secs` (clients ramp up, then churn; a sample
//! every `--sample-secs`), then the publishers stop, every client drains what was accepted,
//! cancels its subscription and closes, and the server must come back to its baseline
//! (descriptors, tasks, gauges) within [`SETTLE_MAX`]. Required: 0 lost, duplicated or
//! reordered deliveries, no failed session, the baseline regained, and (on runs of at least
//! [`MEMORY_JUDGED_SECS`]) resident memory after the warm-up within ±10% of its median.

mod clients;
mod plot;
mod report;
mod samples;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use self::clients::{Count, Counters, Plan, Shared, Streams, TOKEN_SECRET};
use self::samples::{Phase, Sample, SETTLE_POLL};
use super::common::backend_client;
use crate::client::Clock;
use crate::procs::ServerProcess;

/// How long the server may take to come back to its baseline once the clients are gone.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// How long the clients may take to leave once told to.
const LEAVE_MAX: Duration = Duration::from_secs(120);
/// Resident memory is judged on runs at least this long: over a shorter run the allocator is
/// still warming up, and a leak has had no time to show.
const MEMORY_JUDGED_SECS: f64 = 600.0;
/// The largest deviation of resident memory from its median after the warm-up.
const MEMORY_BAND: f64 = 0.10;

/// The soak's options. The defaults are the full run (5,000 connections, 30 minutes).
#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Connections kept churning (each one connects, authenticates, subscribes, receives,
    /// leaves and comes back, for the whole run).
    #[arg(long, default_value_t = 5_000)]
    pub connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 1_800.0)]
    pub secs: f64,
    /// Seconds between samples (default: 60, or a twelfth of a shorter run).
    #[arg(long)]
    pub sample_secs: Option<f64>,
    /// Seconds of warm-up before memory is judged (default: a sixth of the run).
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Seconds over which the connections first connect (default: a tenth of the run, at most
    /// 30).
    #[arg(long)]
    pub ramp_secs: Option<f64>,
    /// PubSub channels; connection i subscribes to channel i mod this.
    #[arg(long, default_value_t = 50)]
    pub channels: usize,
    /// DataSync owners; connection i's subscription follows owner i mod this.
    #[arg(long, default_value_t = 50)]
    pub owners: usize,
    /// PubSub publishes per second (backend `publish`, the channels in turn).
    #[arg(long, default_value_t = 20.0)]
    pub publish_rate: f64,
    /// DataSync deltas per second (backend `publishDeltas`, the owners in turn).
    #[arg(long, default_value_t = 20.0)]
    pub delta_rate: f64,
    /// Deltas per `publishDeltas` call.
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Shortest time a connection stays, in seconds (uniform up to `--session-max`).
    #[arg(long, default_value_t = 5.0)]
    pub session_min: f64,
    /// Longest time a connection stays, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub session_max: f64,
    /// Longest pause before a client reconnects, in seconds (uniform from 0).
    #[arg(long, default_value_t = 1.0)]
    pub pause_max: f64,
    /// Percentage of sessions that end by cancelling their DataSync subscription and dropping
    /// the socket without a close frame (the next session authorizes a new subscription); the
    /// others close cleanly and resume their subscription in the next session.
    #[arg(long, default_value_t = 10)]
    pub abrupt_percent: u8,
    /// Loopback source addresses to spread the connections over (127.0.0.1, .2, ...).
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Write the results (markdown) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the plot (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The command line to record in the results.
    #[arg(long, default_value = "snorky-bench soak")]
    pub command_line: String,
}

/// The run's timing, resolved from the options.
#[derive(Debug, Clone, Copy)]
struct Timing {
    secs: f64,
    sample_secs: f64,
    warmup_secs: f64,
}

/// Everything the report needs.
struct Outcome {
    timing: Timing,
    plan: Plan,
    samples: Vec<Sample>,
    /// What was not back at the baseline after the load (empty: everything was).
    leftovers: Vec<String>,
    /// Seconds the server took to settle after the clients left.
    settle_secs: f64,
    counts: Vec<(Count, u64)>,
    errors: Vec<String>,
    /// Clients that did not leave within [`LEAVE_MAX`] (aborted).
    stuck: usize,
    server_cpu_secs: Option<f64>,
}

/// `snorky-bench soak`.
pub fn main(args: &SoakArgs) -> Result<(), String> {
    if !(args.secs > 0.0 && args.session_min > 0.0 && args.session_max >= args.session_min) {
        return Err("--secs and --session-min must be positive and --session-max at least --session-min".into());
    }
    if args.publish_rate <= 0.0 || args.delta_rate <= 0.0 || args.connections == 0 {
        return Err("--connections, --publish-rate and --delta-rate must be positive".into());
    }
    let fd_limit = crate::sys::raise_fd_limit();
    if fd_limit < args.connections as u64 + 256 {
        return Err(format!(
            "the open-files limit is {fd_limit}, {} connections need about {}: raise it (ulimit -n) or use fewer",
            args.connections,
            args.connections + 256
        ));
    }
    let timing = Timing {
        secs: args.secs,
        sample_secs: args.sample_secs.unwrap_or((args.secs / 12.0).min(60.0)).max(1.0),
        warmup_secs: args.warmup_secs.unwrap_or(args.secs / 6.0),
    };
    let plan = Plan {
        connections: args.connections,
        channels: args.channels.max(1),
        owners: args.owners.max(1),
        publish_rate: args.publish_rate,
        delta_rate: args.delta_rate,
        batch: args.batch.max(1),
        session_secs: (args.session_min, args.session_max),
        pause_max_secs: args.pause_max.max(0.0),
        abrupt_percent: args.abrupt_percent.min(100),
        ramp_secs: args.ramp_secs.unwrap_or((args.secs / 10.0).min(30.0)).max(0.0),
        source_ips: args.source_ips.max(1),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|err| format!("runtime: {err}"))?;
    let header = report::Header::now(&args.command_line);
    let outcome = runtime.block_on(async {
        let server =
            ServerProcess::start_snorky_counted(&["--mode", "isolation", "--token-secret", TOKEN_SECRET]).await?;
        let outcome = soak(&server, timing, plan).await;
        server.stop().await;
        outcome
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    let header = header.finished();
    let judged = report::judge(&outcome);
    let markdown = report::markdown(&header, &outcome, &judged, args.plot.as_deref());
    println!("{markdown}");
    if let Some(path) = &args.plot {
        let length = if outcome.timing.secs < 120.0 {
            format!("{:.0} s", outcome.timing.secs)
        } else {
            format!("{:.0} min", outcome.timing.secs / 60.0)
        };
        let title = format!(
            "Snorky soak: {} churning connections, {length}",
            crate::report::format_number(outcome.plan.connections as f64, 0)
        );
        let marks = plot::Marks {
            warmup: outcome.timing.warmup_secs / 60.0,
            stop: outcome.timing.secs / 60.0,
            rss: judged.rss,
        };
        plot::draw(path, &title, &outcome.samples, &marks)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.out {
        std::fs::write(path, &markdown).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let failures: Vec<&str> =
        judged.lines.iter().filter(|line| line.met == Some(false)).map(|line| line.target.as_str()).collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("soak failed: {}", failures.join("; ")))
    }
}

/// The run itself, against `server`.
async fn soak(server: &ServerProcess, timing: Timing, plan: Plan) -> Result<Outcome, String> {
    let shared = Arc::new(Shared {
        target: server.target.clone(),
        pubsub: Streams::new(plan.channels),
        deltas: Streams::new(plan.owners),
        counters: Counters::default(),
        plan: plan.clone(),
        clock: Clock::new(),
    });
    // DataSync starts its sweeper task on first use: an empty publish starts it before the
    // baseline, so that the baseline counts it.
    let mut params = serde_json::Map::new();
    params.insert("deltas".into(), serde_json::Value::Array(Vec::new()));
    backend_client(&server.target)?
        .call("datasync_backend", "publishDeltas", &params)
        .await
        .map_err(|err| format!("publishDeltas: {err}"))?;
    // That call's connection closes when its client is dropped: give the server a moment to
    // see it go, so the baseline does not count it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = server.cpu_time();
    let mut samples = vec![Sample::take(server, &shared, 0.0, Phase::Baseline).await];
    eprintln!("soak: {} connections for {:.0} s; baseline {}", plan.connections, timing.secs, samples[0].line());
    let start = Instant::now();
    let (publishers_stop, publishers_stopped) = watch::channel(false);
    let (clients_stop, clients_stopped) = watch::channel(false);
    let publishers = [
        tokio::spawn(clients::publish_messages(
            Arc::clone(&shared),
            backend_client(&server.target)?,
            publishers_stopped.clone(),
        )),
        tokio::spawn(clients::publish_deltas(Arc::clone(&shared), backend_client(&server.target)?, publishers_stopped)),
    ];
    let backend = Arc::new(backend_client(&server.target)?);
    let clients: Vec<_> = (0..plan.connections)
        .map(|index| {
            tokio::spawn(clients::run_client(Arc::clone(&shared), Arc::clone(&backend), index, clients_stopped.clone()))
        })
        .collect();
    drop(backend);
    let end = start + Duration::from_secs_f64(timing.secs);
    for k in 1u32.. {
        let at = start + Duration::from_secs_f64(timing.sample_secs * f64::from(k));
        if at > end {
            break;
        }
        sleep_until(at).await;
        let sample = Sample::take(server, &shared, start.elapsed().as_secs_f64(), Phase::Load).await;
        eprintln!("{}", sample.line());
        samples.push(sample);
    }
    sleep_until(end).await;
    // Publishing stops first, so that what the leaving clients wait for is final.
    let _ = publishers_stop.send(true);
    for publisher in publishers {
        let _ = publisher.await;
    }
    let _ = clients_stop.send(true);
    let leave_deadline = Instant::now() + LEAVE_MAX;
    let mut stuck = 0usize;
    for client in clients {
        let abort = client.abort_handle();
        if tokio::time::timeout_at(leave_deadline, client).await.is_err() {
            abort.abort();
            stuck += 1;
        }
    }
    let load_secs = start.elapsed().as_secs_f64();
    let settle_start = Instant::now();
    let baseline = samples[0].clone();
    let (after, leftovers) = loop {
        let now = Sample::take(server, &shared, start.elapsed().as_secs_f64(), Phase::After).await;
        let leftovers = samples::differences(&baseline, &now);
        if leftovers.is_empty() || settle_start.elapsed() > SETTLE_MAX {
            break (now, leftovers);
        }
        tokio::time::sleep(SETTLE_POLL).await;
    };
    let settle_secs = settle_start.elapsed().as_secs_f64();
    eprintln!("after the load ({load_secs:.0} s, settled in {settle_secs:.1} s): {}", after.line());
    samples.push(after);
    let errors = shared.counters.errors();
    let server_cpu_secs = cpu_before
        .zip(server.cpu_time())
        .and_then(|(before, after)| after.checked_sub(before))
        .map(|spent| spent.as_secs_f64());
    Ok(Outcome {
        timing,
        plan,
        samples,
        leftovers,
        settle_secs,
        counts: Count::ALL.iter().map(|&count| (count, shared.counters.get(count))).collect(),
        errors,
        stuck,
        server_cpu_secs,
    })
}
