//! The run driver: resolves the sizes, starts a fresh server process per scenario and kind,
//! runs the scenarios, judges the targets and writes the report.

use std::time::{Duration, Instant};

use super::services::ServiceSizes;
use super::{
    chat, cluster, datasync, django, fanout, idle, isolation, latency, multi, python, routing, rpc, setup, snorky_only,
    sockjs, targets, ALL_SCENARIOS,
};
use crate::client::{Clock, OpenOptions};
use crate::procs::{ChannelsSetup, Kind, ServerProcess};
use crate::report::Report;
use crate::{sys, RunArgs};

/// The sizes of one run.
#[derive(Debug, Clone)]
pub(super) struct Sizes {
    pub(super) repeat: usize,
    pub(super) channels_repeat: usize,
    pub(super) concurrency: usize,
    pub(super) source_ips: u8,
    pub(super) window: u64,
    pub(super) budget: Duration,
    pub(super) fanout_subs: usize,
    pub(super) channels_fanout_subs: usize,
    pub(super) fanout_msgs: u64,
    pub(super) idle_conns: usize,
    pub(super) channels_idle_conns: usize,
    pub(super) setup_conns: usize,
    pub(super) channels_setup_conns: usize,
    pub(super) multi_channels: usize,
    pub(super) multi_per_channel: usize,
    pub(super) multi_msgs: u64,
    pub(super) multi_inflight: usize,
    pub(super) latency_subs: usize,
    pub(super) latency_rate: u64,
    pub(super) latency_secs: f64,
    /// Publishes per second of the cluster scenario's Redis-hop run.
    pub(super) cluster_rate: u64,
    /// Worker threads of every Snorky process of the cluster scenario (`None`: the runtime's
    /// default).
    pub(super) cluster_threads: Option<usize>,
    pub(super) rpc_conns: usize,
    pub(super) rpc_secs: f64,
    /// The Snorky-only scenarios (DataSync, Chat, the Python service, routing).
    pub(super) services: ServiceSizes,
    /// The SockJS scenario.
    pub(super) sockjs: sockjs::SockJsSizes,
    /// The django scenario.
    pub(super) django: django::DjangoSizes,
}

impl Sizes {
    fn resolve(args: &RunArgs) -> Sizes {
        let smoke = args.smoke;
        let pick = |value: Option<usize>, full: usize, small: usize| value.unwrap_or(if smoke { small } else { full });
        let pick64 = |value: Option<u64>, full: u64, small: u64| value.unwrap_or(if smoke { small } else { full });
        let pickf = |value: Option<f64>, full: f64, small: f64| value.unwrap_or(if smoke { small } else { full });
        let fanout_subs = pick(args.fanout_subs, 5_000, 50);
        let idle_conns = pick(args.idle_conns, 10_000, 50);
        let setup_conns = pick(args.setup_conns, 2_000, 50);
        let repeat = pick(args.repeat, 3, 1).max(1);
        let concurrency = pick(args.connect_concurrency, 64, 16);
        let services = ServiceSizes {
            conns: pick(args.service_conns, 1_000, 20),
            per_owner: pick64(args.datasync_per_owner, 100, 10),
            broadcast: pick64(args.datasync_broadcast, 2_000, 200),
            chat_msgs: pick64(args.chat_msgs, 400, 50),
            window: pick64(args.window, 32, 32),
            concurrency,
            source_ips: args.source_ips.max(1),
            rpc_secs: pickf(args.rpc_secs, 3.0, 0.3),
            rpc_conns: 32,
            python: args.python.clone(),
            routing_subs: pick(args.routing_subs, 100_000, 1_000),
            routing_deltas: pick(args.routing_deltas, 20_000, 200),
            // The largest authorization and batch the defaults allow in a 16 MiB body.
            isolation_items: pick(None, 600, 5),
            isolation_parts: pick(None, 1_000, 50),
            isolation_deltas: pick(None, 180_000, 1_000),
        };
        Sizes {
            repeat,
            channels_repeat: args.channels_repeat.unwrap_or(1).clamp(1, repeat),
            concurrency,
            source_ips: args.source_ips.max(1),
            window: pick64(args.window, 32, 32),
            budget: Duration::from_secs_f64(pickf(args.publish_budget, 20.0, 5.0)),
            fanout_subs,
            channels_fanout_subs: args.channels_fanout_subs.unwrap_or(fanout_subs),
            fanout_msgs: pick64(args.fanout_msgs, 400, 300),
            idle_conns,
            channels_idle_conns: args.channels_idle_conns.unwrap_or(idle_conns),
            setup_conns,
            channels_setup_conns: args.channels_setup_conns.unwrap_or(setup_conns),
            multi_channels: pick(args.multi_channels, 1_000, 10),
            multi_per_channel: pick(args.multi_subs_per_channel, 5, 5),
            multi_msgs: pick64(args.multi_msgs_per_channel, 40, 20),
            multi_inflight: pick(args.multi_inflight, 64, 8),
            latency_subs: pick(args.latency_subs, 1_000, 50),
            latency_rate: pick64(args.latency_rate, 200, 200),
            latency_secs: pickf(args.latency_secs, 10.0, 1.0),
            cluster_rate: pick64(args.cluster_rate, 100, 100).max(1),
            cluster_threads: args.cluster_threads,
            rpc_conns: pick(args.rpc_conns, 100, 10),
            rpc_secs: pickf(args.rpc_secs, 3.0, 0.5),
            services,
            sockjs: sockjs::SockJsSizes::resolve(args, pick64(args.window, 32, 32), concurrency),
            django: django::DjangoSizes::resolve(args, concurrency),
        }
    }
}

/// Everything a scenario needs besides the server.
pub(super) struct Ctx {
    pub(super) sizes: Sizes,
    pub(super) clock: Clock,
}

impl Ctx {
    pub(super) fn open_options(&self, max_seq: u64, record: bool) -> OpenOptions {
        OpenOptions { concurrency: self.sizes.concurrency, source_ips: self.sizes.source_ips, max_seq, record }
    }
}

/// `snorky-bench run`.
pub fn main(args: &RunArgs) -> Result<(), String> {
    let fd_limit = sys::raise_fd_limit();
    let sizes = Sizes::resolve(args);
    let needed = sizes.idle_conns.max(sizes.channels_idle_conns).max(sizes.fanout_subs) + 256;
    if fd_limit < needed as u64 {
        return Err(format!(
            "the open-files limit is {fd_limit}, the run needs about {needed}: raise it (ulimit -n) or use smaller sizes"
        ));
    }
    let channels = ChannelsSetup { venv: args.channels_venv.clone(), project: args.channels_dir.clone() };
    let mut notes = Vec::new();
    let mut kinds = Vec::new();
    for name in args.servers.split(',').filter(|name| !name.trim().is_empty()) {
        let kind = Kind::parse(name)?;
        if kind == Kind::Eventstream {
            // The django scenario reads `--servers` itself and starts django-eventstream there;
            // it has no PubSub server for the other scenarios.
            continue;
        }
        if kind == Kind::Channels && !channels.installed() {
            if args.smoke {
                notes.push("Channels skipped: its venv is not installed (bench/run.sh creates it).".to_owned());
                continue;
            }
            return Err(format!(
                "the Channels reference is not installed ({} missing): bench/run.sh creates it, or pass --servers ceiling,snorky",
                channels.daphne().display()
            ));
        }
        kinds.push(kind);
    }
    let scenarios: Vec<String> =
        args.scenarios.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    for scenario in &scenarios {
        if !ALL_SCENARIOS.contains(&scenario.as_str()) {
            return Err(format!("unknown scenario {scenario:?} ({})", ALL_SCENARIOS.join(", ")));
        }
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|err| format!("runtime: {err}"))?;
    let started = Instant::now();
    let mut report = Report {
        command: args.command_line.clone(),
        date: utc_now(),
        machine: sys::machine(),
        revision: sys::revision(),
        load_before: sys::loadavg(),
        smoke: args.smoke,
        notes,
        ..Report::default()
    };
    let ctx = Ctx { sizes, clock: Clock::new() };
    let failures = runtime.block_on(run_all(&ctx, &kinds, &scenarios, &channels, &mut report));
    report.load_after = sys::loadavg();
    report.duration_s = started.elapsed().as_secs_f64();
    targets::judge_targets(&ctx.sizes, &mut report);
    runtime.shutdown_timeout(Duration::from_secs(2));

    println!();
    if !report.main.rows.is_empty() {
        println!("{}", report.table());
    }
    if !report.cluster.rows.is_empty() {
        println!("Several nodes on Redis:\n\n{}", report.cluster.render());
    }
    println!("{}", report.targets_table());
    for note in report.distinct_notes() {
        println!("note: {note}");
    }
    if let Some(path) = &args.out {
        std::fs::write(path, report.markdown()).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failure(s): {}", failures.len(), failures.join("; ")))
    }
}

/// Runs every scenario against every kind; returns hard failures (a scenario that could not
/// run, or a Rust server that lost, duplicated or reordered deliveries).
async fn run_all(
    ctx: &Ctx,
    kinds: &[Kind],
    scenarios: &[String],
    channels: &ChannelsSetup,
    report: &mut Report,
) -> Vec<String> {
    let mut failures = Vec::new();
    // The cluster scenario compares with Channels on Redis when Channels is measured and its
    // venv has `channels_redis`.
    let channels_redis = if scenarios.iter().any(|s| s == "cluster") && kinds.contains(&Kind::Channels) {
        if channels.has_redis_layer().await {
            Some(channels)
        } else {
            let note =
                "Channels on Redis skipped: the Channels venv has no channels_redis (bench/run.sh refreshes it).";
            report.notes.push(note.to_owned());
            if !report.smoke {
                failures.push(note.to_owned());
            }
            None
        }
    } else {
        None
    };
    for scenario in scenarios {
        for (run, &kind) in (0..ctx.sizes.repeat).flat_map(|run| kinds.iter().map(move |kind| (run, kind))) {
            if kind == Kind::Channels && run >= ctx.sizes.channels_repeat {
                continue;
            }
            if snorky_only(scenario) {
                // The django scenario is long and measures Channels itself: one run.
                if kind != Kind::Snorky || (scenario == "django" && run > 0) {
                    continue;
                }
                eprintln!(
                    "[{:>6.1}s] {scenario} / snorky (run {} of {})",
                    ctx.clock.micros() as f64 / 1e6,
                    run + 1,
                    ctx.sizes.repeat
                );
                let services = &ctx.sizes.services;
                let outcome = match scenario.as_str() {
                    "routing" => routing::routing(services, report),
                    "datasync" => datasync::datasync(services, ctx.clock, report).await,
                    "chat" => chat::chat(services, ctx.clock, report).await,
                    "isolation" => isolation::isolation(services, report).await,
                    "sockjs" => sockjs::run(&ctx.sizes.sockjs, ctx.clock, report).await,
                    "cluster" => {
                        let channels = channels_redis.filter(|_| run < ctx.sizes.channels_repeat);
                        cluster::cluster(ctx, channels, report).await
                    }
                    "django" => django::run(&ctx.sizes.django, report).await,
                    _ => python::python(services, report).await,
                };
                if let Err(err) = outcome {
                    eprintln!("    {scenario}: {err}");
                    failures.push(format!("{scenario}: {err}"));
                }
                continue;
            }
            eprintln!(
                "[{:>6.1}s] {scenario} / {} (run {} of {})",
                ctx.clock.micros() as f64 / 1e6,
                kind.name(),
                run + 1,
                if kind == Kind::Channels { ctx.sizes.channels_repeat } else { ctx.sizes.repeat }
            );
            let server = match ServerProcess::start(kind, channels, scenario == "idle").await {
                Ok(server) => server,
                Err(err) => {
                    failures.push(format!("{scenario}/{}: {err}", kind.name()));
                    continue;
                }
            };
            let outcome = match scenario.as_str() {
                "fanout" => fanout::fanout(ctx, &server, report).await,
                "idle" => idle::idle(ctx, &server, report).await,
                "setup" => setup::setup(ctx, &server, report).await,
                "multi" => multi::multi(ctx, &server, report).await,
                "latency" => latency::latency(ctx, &server, report).await,
                "rpc" => rpc::rpc(ctx, &server, report).await,
                _ => Ok(()),
            };
            server.stop().await;
            if let Err(err) = outcome {
                eprintln!("    {scenario}/{}: {err}", kind.name());
                failures.push(format!("{scenario}/{}: {err}", kind.name()));
            }
        }
    }
    failures
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub(super) fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}
