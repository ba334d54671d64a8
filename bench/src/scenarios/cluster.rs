//! `cluster`: PubSub on several Snorky nodes sharing one Redis, side by side with one node
//! without a broker and with Django Channels on the same kind of Redis.
//!
//! Every measurement starts its own processes, and stops them after it:
//! - **1 node**: one `serve-snorky`, no broker; the subscribers are on it and the publishes go
//!   through its backend (the single-node figures of the other scenarios).
//! - **cluster**: a `redis-server` (Debian's, on a free loopback port, no persistence) and three
//!   `serve-snorky --broker` nodes; the subscribers are split evenly over the first two and the
//!   publishes go through the backend of the third, which has no subscriber: every delivery
//!   crosses Redis.
//! - **`channels_redis`**: the same Redis layout with three daphne processes serving the
//!   Channels reference on `channels_redis`'s `RedisPubSubChannelLayer` (two workers holding
//!   the subscribers, one publishing), fan-out only: it is slow, so it runs once and stops
//!   publishing after the time budget, as in the other scenarios.
//!
//! Two loads: the fan-out scenario's (5,000 subscribers, sequential publishes at most `window`
//! ahead of the slowest subscriber: deliveries/s, missing/duplicated/reordered per subscriber)
//! and the steady scenario's subscribers and duration at `cluster_rate` publishes/s and at a tenth
//! of it (the latency the Redis hop adds, under the target's load and under a light one). Redis's CPU time (its own `INFO cpu`, microsecond precision) is read at
//! the start and the end of each measured phase, less what it spends idle (its timers, the
//! nodes' liveness refreshes: measured for [`IDLE_WINDOW`] once the nodes are up), and divided
//! by the publishes and by the deliveries.

use std::time::Duration;

use super::common::{record_deliveries, Load};
use super::driver::{Ctx, Sizes};
use super::fanout::{self, fanout_load};
use super::latency::{record_steady, steady_load};
use crate::client::Target;
use crate::procs::{ChannelsSetup, RedisProcess, ServerProcess, Setup};
use crate::report::{format_number, Report};
use crate::stats::Deliveries;

/// How long Redis's idle CPU is measured before each measurement (to leave it out).
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// The node names of a cluster: the subscribers' two, then the publisher's.
const NODES: [&str; 3] = ["sub-a", "sub-b", "publisher"];

/// The processes of one setup.
struct Deployment {
    redis: Option<RedisProcess>,
    servers: Vec<ServerProcess>,
    targets: Vec<Target>,
}

impl Deployment {
    /// Starts `setup`'s processes (Channels' from `channels`); on a failure, stops those already
    /// started.
    async fn start(
        setup: Setup,
        channels: Option<&ChannelsSetup>,
        threads: Option<usize>,
    ) -> Result<Deployment, String> {
        let redis = match setup {
            Setup::Single => None,
            Setup::Cluster | Setup::ChannelsRedis => Some(RedisProcess::start().await?),
        };
        let mut deployment = Deployment { redis, servers: Vec::new(), targets: Vec::new() };
        let url = deployment.redis.as_ref().map(|redis| redis.url.clone());
        let names: &[&str] = if setup == Setup::Single { &NODES[..1] } else { &NODES };
        for name in names {
            let server = match (&url, setup) {
                (Some(url), Setup::ChannelsRedis) => match channels {
                    Some(channels) => ServerProcess::start_channels(channels, Some(url)).await,
                    None => Err("the Channels reference is not set up".to_owned()),
                },
                (url, _) => {
                    let threads = threads.map(|threads| threads.to_string());
                    let mut args = Vec::new();
                    if let Some(url) = url {
                        args.extend(["--broker", url, "--node-name", name]);
                    }
                    if let Some(threads) = &threads {
                        args.extend(["--threads", threads]);
                    }
                    ServerProcess::start_snorky_with(&args).await
                }
            };
            match server {
                Ok(server) => {
                    deployment.targets.push(server.target.clone());
                    deployment.servers.push(server);
                }
                Err(err) => {
                    deployment.stop().await;
                    return Err(format!("{}: {err}", setup.name()));
                }
            }
        }
        if let Some(redis) = deployment.redis.as_mut() {
            redis.measure_idle(IDLE_WINDOW).await;
            eprintln!("    Redis idle: {:.2} ms of CPU per second", redis.idle_cpu * 1e3);
        }
        Ok(deployment)
    }

    /// Where the load goes: one server takes everything; otherwise the subscribers are on all
    /// but the last, which publishes.
    fn load(&self) -> Result<Load<'_>, String> {
        let (publish, rest) = self.targets.split_last().ok_or("no server")?;
        let first = self.servers.first().ok_or("no server")?;
        Ok(Load {
            subscribe: if rest.is_empty() { std::slice::from_ref(publish) } else { rest },
            publish,
            server_pids: self.servers.iter().map(ServerProcess::pid).collect(),
            broker: self.redis.as_ref(),
            kind: first.kind,
        })
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
        if let Some(redis) = self.redis {
            redis.stop().await;
        }
    }
}

/// The metric prefix of the Redis-hop rows at `rate` publishes per second.
pub(super) fn hop_prefix(sizes: &Sizes, rate: u64) -> String {
    format!("Redis hop: steady {} subs, {rate} msg/s", format_number(sizes.latency_subs as f64, 0))
}

/// The rates of the Redis-hop runs: `cluster_rate` (the target's), and a tenth of it, light
/// enough that neither setup queues on a busy machine, so the difference is the hop itself.
pub(super) fn hop_rates(sizes: &Sizes) -> [u64; 2] {
    [sizes.cluster_rate, (sizes.cluster_rate / 10).max(1)]
}

/// One run of the scenario: fan-out on each setup (Channels only with `channels`), then the
/// Redis hop on one node and on the cluster. Records the rows; an error lists what could not
/// run and the Snorky deliveries that were not clean.
pub(super) async fn cluster(ctx: &Ctx, channels: Option<&ChannelsSetup>, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let mut failures = Vec::new();
    if let Some(threads) = sizes.cluster_threads {
        report.notes.push(format!("cluster: every Snorky process ran {threads} worker thread(s)"));
    }
    let fanout_setups: &[Setup] = if channels.is_some() {
        &[Setup::Single, Setup::Cluster, Setup::ChannelsRedis]
    } else {
        &[Setup::Single, Setup::Cluster]
    };
    for &setup in fanout_setups {
        eprintln!("    fan-out / {}", setup.name());
        let subs = if setup == Setup::ChannelsRedis { sizes.channels_fanout_subs } else { sizes.fanout_subs };
        let notes = &mut report.notes;
        let outcome = with_deployment(setup, channels, sizes.cluster_threads, async |load: &Load<'_>| {
            fanout_load(ctx, load, subs, notes).await
        })
        .await;
        let note =
            if subs == sizes.fanout_subs { String::new() } else { format!("{} subs", format_number(subs as f64, 0)) };
        match outcome {
            Ok(summary) => {
                record_deliveries(report, setup, &fanout::prefix(sizes), &summary, &note);
                judge(setup, "fan-out", &summary, &mut failures);
            }
            Err(err) => failures.push(format!("fan-out / {}: {err}", setup.name())),
        }
    }
    for rate in hop_rates(sizes) {
        for setup in [Setup::Single, Setup::Cluster] {
            eprintln!("    Redis hop at {rate} msg/s / {}", setup.name());
            let outcome = with_deployment(setup, channels, sizes.cluster_threads, async |load: &Load<'_>| {
                steady_load(ctx, load, rate).await
            })
            .await;
            match outcome {
                Ok((summary, achieved)) => {
                    record_steady(report, setup, &hop_prefix(sizes, rate), &summary, achieved);
                    judge(setup, "Redis hop", &summary, &mut failures);
                }
                Err(err) => failures.push(format!("Redis hop / {}: {err}", setup.name())),
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Starts `setup`, runs `measure` on its load, and stops it.
async fn with_deployment<T>(
    setup: Setup,
    channels: Option<&ChannelsSetup>,
    threads: Option<usize>,
    measure: impl AsyncFnOnce(&Load<'_>) -> Result<T, String>,
) -> Result<T, String> {
    let deployment = Deployment::start(setup, channels, threads).await?;
    let outcome = match deployment.load() {
        Ok(load) => measure(&load).await,
        Err(err) => Err(err),
    };
    deployment.stop().await;
    outcome
}

/// Snorky's deliveries must be clean (Channels' are reported, not judged, as elsewhere).
fn judge(setup: Setup, load: &str, summary: &Deliveries, failures: &mut Vec<String>) {
    if setup != Setup::ChannelsRedis && !summary.clean() {
        failures.push(format!("{load} / {}: deliveries not clean: {}", setup.name(), summary.errors_text()));
    }
}
