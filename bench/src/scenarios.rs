//! The load generator: the six scenarios, each run against every server kind (a fresh server
//! process per scenario and kind), and the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use snorky::backend_client::BackendClient;
use tokio::sync::Semaphore;

use crate::client::{self, Clock, OpenOptions, Subscribers, Target};
use crate::procs::{ChannelsSetup, Kind, ServerProcess};
use crate::report::{format_number, format_ratio, Cell, Report, TargetLine};
use crate::stats::{Deliveries, Latency};
use crate::{sys, RunArgs};

/// Size of the `message` of every publish, in bytes of JSON.
const MESSAGE_SIZE: usize = 100;
/// How long the drain after the last publish may go without progress before giving up.
const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// Channels delivers one publish to 5,000 subscribers in tens of seconds: give it longer.
const DRAIN_IDLE_CHANNELS: Duration = Duration::from_secs(60);

fn drain_idle(kind: Kind) -> Duration {
    if kind == Kind::Channels {
        DRAIN_IDLE_CHANNELS
    } else {
        DRAIN_IDLE
    }
}
/// How long the drain may take at most.
const DRAIN_MAX: Duration = Duration::from_secs(120);
/// How long opening all subscribers may take at most.
const OPEN_MAX: Duration = Duration::from_secs(600);
/// How long a publisher waits for the slowest subscriber before giving up.
const WINDOW_WAIT_MAX: Duration = Duration::from_secs(30);

/// The sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    repeat: usize,
    channels_repeat: usize,
    concurrency: usize,
    source_ips: u8,
    window: u64,
    budget: Duration,
    fanout_subs: usize,
    channels_fanout_subs: usize,
    fanout_msgs: u64,
    idle_conns: usize,
    channels_idle_conns: usize,
    setup_conns: usize,
    channels_setup_conns: usize,
    multi_channels: usize,
    multi_per_channel: usize,
    multi_msgs: u64,
    multi_inflight: usize,
    latency_subs: usize,
    latency_rate: u64,
    latency_secs: f64,
    rpc_conns: usize,
    rpc_secs: f64,
    /// The scenarios of issues 3 and 6 (`services.rs`).
    services: crate::services::ServiceSizes,
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
        let services = crate::services::ServiceSizes {
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
            rpc_conns: pick(args.rpc_conns, 100, 10),
            rpc_secs: pickf(args.rpc_secs, 3.0, 0.5),
            services,
        }
    }
}

/// Everything a scenario needs besides the server.
struct Ctx {
    sizes: Sizes,
    clock: Clock,
}

impl Ctx {
    fn open_options(&self, max_seq: u64, record: bool) -> OpenOptions {
        OpenOptions { concurrency: self.sizes.concurrency, source_ips: self.sizes.source_ips, max_seq, record }
    }
}

/// Every scenario; the last four are Snorky's alone (issues 3 and 6, `services.rs`).
const ALL_SCENARIOS: [&str; 10] =
    ["fanout", "idle", "setup", "multi", "latency", "rpc", "routing", "datasync", "chat", "python"];

/// Whether `scenario` runs against Snorky only (it starts its own servers).
fn snorky_only(scenario: &str) -> bool {
    ["routing", "datasync", "chat", "python"].contains(&scenario)
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
    judge_targets(&ctx.sizes, &mut report);
    runtime.shutdown_timeout(Duration::from_secs(2));

    println!();
    println!("{}", report.table());
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
    for scenario in scenarios {
        for (run, &kind) in (0..ctx.sizes.repeat).flat_map(|run| kinds.iter().map(move |kind| (run, kind))) {
            if kind == Kind::Channels && run >= ctx.sizes.channels_repeat {
                continue;
            }
            if snorky_only(scenario) {
                if kind != Kind::Snorky {
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
                    "routing" => crate::services::routing(services, report),
                    "datasync" => crate::services::datasync(services, ctx.clock, report).await,
                    "chat" => crate::services::chat(services, ctx.clock, report).await,
                    _ => crate::services::python(services, report).await,
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
                "fanout" => fanout(ctx, &server, report).await,
                "idle" => idle(ctx, &server, report).await,
                "setup" => setup(ctx, &server, report).await,
                "multi" => multi(ctx, &server, report).await,
                "latency" => latency(ctx, &server, report).await,
                "rpc" => rpc(ctx, &server, report).await,
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

pub(crate) fn backend_client(target: &Target) -> Result<BackendClient, String> {
    BackendClient::new(&target.backend_url, crate::KEY, Duration::from_secs(30)).map_err(|err| err.to_string())
}

/// Waits until every subscriber in `indices` has at least `needed` deliveries. False when the
/// slowest made no progress for [`WINDOW_WAIT_MAX`].
pub(crate) async fn wait_window(subscribers: &Subscribers, indices: &[usize], needed: u64) -> bool {
    let mut last = subscribers.progress.min_of(indices.iter().copied());
    let mut since = Instant::now();
    loop {
        let min = subscribers.progress.min_of(indices.iter().copied());
        if min >= needed {
            return true;
        }
        if min != last {
            last = min;
            since = Instant::now();
        } else if since.elapsed() > WINDOW_WAIT_MAX {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The size note of a cell when a kind ran at a different size than the others.
fn size_note(kind: Kind, size: usize, full: usize, what: &str) -> String {
    if kind == Kind::Channels && size != full {
        format!("{} {what}", format_number(size as f64, 0))
    } else {
        String::new()
    }
}

/// Records the rows every delivery scenario has.
fn record_deliveries(report: &mut Report, kind: Kind, prefix: &str, summary: &Deliveries, note: &str) {
    let mut rate = Cell::number(summary.per_second, 0).note(note);
    if summary.budget_hit {
        rate = rate.note("publishing stopped at the time budget");
    }
    report.row_mut(&format!("{prefix}: deliveries/s"), true).set(kind, rate);
    if let Some(latency) = summary.latency {
        report.row_mut(&format!("{prefix}: latency p50 (ms)"), true).set(kind, Cell::number(latency.p50_ms, 2));
        report.row_mut(&format!("{prefix}: latency p99 (ms)"), true).set(kind, Cell::number(latency.p99_ms, 2));
    }
    report.row_mut(&format!("{prefix}: missing/dup/reordered"), false).set(kind, Cell::text(summary.errors_text()));
    if let Some(cpu) = summary.server_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: server CPU µs/delivery"), true).set(kind, Cell::number(cpu, 2));
    }
    if let Some(cpu) = summary.client_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: load generator CPU µs/delivery"), true).set(kind, Cell::number(cpu, 2));
    }
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix} / {}: {}", kind.name(), summary.close_reasons.join("; ")));
    }
    eprintln!(
        "    {} deliveries in {:.2} s = {}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        summary.received,
        summary.elapsed.as_secs_f64(),
        format_number(summary.per_second, 0),
        summary.latency.map_or(0.0, |l| l.p50_ms),
        summary.latency.map_or(0.0, |l| l.p99_ms),
        summary.errors_text()
    );
}

fn check_clean(kind: Kind, summary: &Deliveries) -> Result<(), String> {
    if kind != Kind::Channels && !summary.clean() {
        return Err(format!("deliveries not clean: {}", summary.errors_text()));
    }
    Ok(())
}

/// Server CPU microseconds per counted unit (delivery, request) between two readings.
pub(crate) fn cpu_per_delivery(before: Option<Duration>, after: Option<Duration>, deliveries: u64) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    (deliveries > 0).then(|| spent.as_secs_f64() * 1e6 / deliveries as f64)
}

/// Scenario 1: S subscribers on one channel, sequential publishes through the backend, each
/// publisher at most `window` messages ahead of the slowest subscriber.
async fn fanout(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let subs = if server.kind == Kind::Channels { sizes.channels_fanout_subs } else { sizes.fanout_subs };
    let channels = Arc::new(vec![json!("bench")]);
    let subscribers = Subscribers::open(
        &server.target,
        &channels,
        &vec![0; subs],
        ctx.clock,
        ctx.open_options(sizes.fanout_msgs, true),
    );
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        subscribers.finish().await;
        return Err(format!("no subscriber connected ({failed} failed)"));
    }
    let backend = backend_client(&server.target)?;
    let everyone: Vec<usize> = (0..subs).collect();
    let cpu_before = server.cpu_time();
    let own_before = sys::cpu_time(std::process::id());
    let start = Instant::now();
    let (mut published, mut errors, mut budget_hit) = (0u64, 0u64, false);
    for seq in 0..sizes.fanout_msgs {
        if start.elapsed() > sizes.budget {
            budget_hit = true;
            break;
        }
        if seq >= sizes.window && !wait_window(&subscribers, &everyone, seq + 1 - sizes.window).await {
            report.notes.push(format!("fan-out / {}: subscribers stopped making progress", server.kind.name()));
            break;
        }
        let params = client::publish_params(&channels[0], client::payload(seq, ctx.clock.micros(), MESSAGE_SIZE));
        match backend.call("pubsub_backend", "publish", &params).await {
            Ok(_) => published += 1,
            Err(_) => errors += 1,
        }
    }
    subscribers.wait_drained(published * ready as u64, drain_idle(server.kind), Instant::now() + DRAIN_MAX).await;
    let cpu_after = server.cpu_time();
    let own_after = sys::cpu_time(std::process::id());
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &[published], errors, start);
    summary.budget_hit = budget_hit;
    summary.server_cpu_us_per_delivery = cpu_per_delivery(cpu_before, cpu_after, summary.received);
    summary.client_cpu_us_per_delivery = cpu_per_delivery(own_before, own_after, summary.received);
    let note = size_note(server.kind, subs, sizes.fanout_subs, "subs");
    let prefix = format!(
        "fan-out {} subs × {} msgs",
        format_number(sizes.fanout_subs as f64, 0),
        format_number(sizes.fanout_msgs as f64, 0)
    );
    record_deliveries(report, server.kind, &prefix, &summary, &note);
    check_clean(server.kind, &summary)
}

/// Scenario 2: server memory per idle subscribed connection.
async fn idle(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let conns = if server.kind == Kind::Channels { sizes.channels_idle_conns } else { sizes.idle_conns };
    // One connection first, so one-time costs (first accept, lazily built state) are in the
    // baseline rather than spread over the connections.
    let warm = Arc::new(vec![json!("idle-warm-up")]);
    let warm_up = Subscribers::open(&server.target, &warm, &[0], ctx.clock, ctx.open_options(1, false));
    warm_up.wait_ready(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib().ok_or("cannot read the server's VmRSS")?;
    let heap_before = server.alloc_snapshot().await;
    let channels = Arc::new((0..conns).map(|i| json!(format!("idle-{i}"))).collect::<Vec<Value>>());
    let assignment: Vec<usize> = (0..conns).collect();
    let opened = Instant::now();
    let subscribers = Subscribers::open(&server.target, &channels, &assignment, ctx.clock, ctx.open_options(1, false));
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    let open_time = opened.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib().ok_or("cannot read the server's VmRSS")?;
    let hwm = crate::sys::proc_status_kib(server.pid(), "VmHWM");
    let heap_after = server.alloc_snapshot().await;
    let nodelay = crate::sys::nodelay_sockets(server.pid(), 1000);
    let results = subscribers.finish().await;
    let closed = results.iter().filter(|r| r.closed.is_some()).count();
    warm_up.finish().await;
    if ready == 0 {
        return Err(format!("no connection subscribed ({failed} failed)"));
    }
    let per_conn = (after.saturating_sub(before)) as f64 / ready as f64;
    let note = size_note(server.kind, conns, sizes.idle_conns, "conns");
    let metric = format!("idle: server RSS KiB/conn at {} conns", format_number(sizes.idle_conns as f64, 0));
    report.row_mut(&metric, true).set(server.kind, Cell::number(per_conn, 2).note(&note));
    report
        .row_mut("idle: server RSS MiB (before → with conns)", false)
        .set(server.kind, Cell::text(format!("{:.1} → {:.1}", before as f64 / 1024.0, after as f64 / 1024.0)));
    eprintln!(
        "    {ready} connections ({failed} failed, {closed} closed) opened in {:.1} s: RSS {before} → {after} KiB (peak {}) = {per_conn:.2} KiB/conn",
        open_time.as_secs_f64(),
        hwm.unwrap_or(0)
    );
    if let Some((with, total)) = nodelay {
        report
            .row_mut("server's accepted sockets with TCP_NODELAY", false)
            .set(server.kind, Cell::text(format!("{with} of {total}")));
    }
    if let (Some((tasks_before, before)), Some((tasks_after, after))) = (heap_before, heap_after) {
        let (bytes, count, top) = crate::alloc::per_connection(&before, &after, ready);
        let tasks = (tasks_after - tasks_before) as f64 / ready as f64;
        report.row_mut("idle: live heap B/conn", true).set(server.kind, Cell::number(bytes, 0));
        report
            .row_mut("idle: heap allocations/conn, tasks/conn", false)
            .set(server.kind, Cell::text(format!("{count:.1}, {tasks:.2}")));
        report.notes.push(format!(
            "idle / {}: live heap per connection {bytes:.0} B in {count:.1} allocations, {tasks:.2} tasks; largest: {top}",
            server.kind.name()
        ));
        eprintln!("    heap/conn {bytes:.0} B in {count:.1} allocations, {tasks:.2} tasks/conn: {top}");
    }
    if failed > 0 || closed > 0 {
        report.notes.push(format!("idle / {}: {failed} connections failed, {closed} closed", server.kind.name()));
        if server.kind != Kind::Channels {
            return Err(format!("{failed} connections failed, {closed} closed"));
        }
    }
    Ok(())
}

/// Scenario 3: connections/s for handshake + subscribe round trip, `concurrency` at a time.
async fn setup(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let conns = if server.kind == Kind::Channels { sizes.channels_setup_conns } else { sizes.setup_conns };
    let gate = Arc::new(Semaphore::new(sizes.concurrency));
    let cpu_before = server.cpu_time();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let gate = Arc::clone(&gate);
        let target = server.target.clone();
        let source = client::source_ip(i, sizes.source_ips);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let began = Instant::now();
            let ws = client::connect_and_subscribe(&target, source, &json!(format!("setup-{i}"))).await;
            (ws, began.elapsed(), Instant::now())
        }));
    }
    let mut open = Vec::with_capacity(conns);
    let mut times = Vec::with_capacity(conns);
    let mut failed = 0usize;
    let mut last = start;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok((Ok(ws), took, done)) => {
                open.push(ws);
                times.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                last = last.max(done);
            }
            Ok((Err(err), _, _)) => {
                failed += 1;
                first_error.get_or_insert(err);
            }
            Err(err) => {
                failed += 1;
                first_error.get_or_insert(err.to_string());
            }
        }
    }
    let elapsed = last.duration_since(start).as_secs_f64();
    let cpu = cpu_per_delivery(cpu_before, server.cpu_time(), times.len() as u64);
    drop(open);
    let rate = if elapsed > 0.0 { times.len() as f64 / elapsed } else { 0.0 };
    let latency = Latency::of(&mut times).unwrap_or_default();
    let note = size_note(server.kind, conns, sizes.setup_conns, "conns");
    report
        .row_mut(&format!("set-up: connections/s ({} concurrent)", sizes.concurrency), true)
        .set(server.kind, Cell::number(rate, 0).note(&note));
    report.row_mut("set-up: handshake+subscribe p99 (ms)", true).set(server.kind, Cell::number(latency.p99_ms, 2));
    if let Some(cpu) = cpu {
        report.row_mut("set-up: server CPU µs/connection", true).set(server.kind, Cell::number(cpu, 1));
    }
    eprintln!(
        "    {} connections in {elapsed:.2} s = {rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {failed} failed",
        times.len(),
        latency.p50_ms,
        latency.p99_ms
    );
    if failed > 0 {
        report.notes.push(format!(
            "set-up / {}: {failed} connections failed ({})",
            server.kind.name(),
            first_error.unwrap_or_default()
        ));
        if server.kind != Kind::Channels {
            return Err(format!("{failed} connections failed"));
        }
    }
    Ok(())
}

/// Scenario 4: many channels with a few subscribers each, publishes from the fast backend
/// client with many calls in flight (each channel's publishes stay sequential, so per-channel
/// order is checked too).
async fn multi(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let (count, per) = (sizes.multi_channels, sizes.multi_per_channel);
    let channels = Arc::new((0..count).map(|c| json!(format!("ch-{c}"))).collect::<Vec<Value>>());
    let assignment: Vec<usize> = (0..count * per).map(|i| i / per).collect();
    let subscribers = Arc::new(Subscribers::open(
        &server.target,
        &channels,
        &assignment,
        ctx.clock,
        ctx.open_options(sizes.multi_msgs, true),
    ));
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        return Err(format!("no subscriber connected ({failed} failed)"));
    }
    let backend = backend_client(&server.target)?;
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicU64::new(0));
    let inflight = sizes.multi_inflight.clamp(1, count.max(1));
    let cpu_before = server.cpu_time();
    let own_before = sys::cpu_time(std::process::id());
    let start = Instant::now();
    let mut publishers = Vec::with_capacity(inflight);
    for task in 0..inflight {
        let (backend, subscribers, channels) = (backend.clone(), Arc::clone(&subscribers), Arc::clone(&channels));
        let (published, errors, stalled) = (Arc::clone(&published), Arc::clone(&errors), Arc::clone(&stalled));
        let (window, rounds, budget, clock) = (sizes.window, sizes.multi_msgs, sizes.budget, ctx.clock);
        publishers.push(tokio::spawn(async move {
            let mine: Vec<usize> = (task..channels.len()).step_by(inflight).collect();
            for seq in 0..rounds {
                for &c in &mine {
                    if start.elapsed() > budget {
                        return true;
                    }
                    if seq >= window && !wait_window(&subscribers, &subscribers.by_channel[c], seq + 1 - window).await {
                        stalled.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                    let params =
                        client::publish_params(&channels[c], client::payload(seq, clock.micros(), MESSAGE_SIZE));
                    match backend.call("pubsub_backend", "publish", &params).await {
                        Ok(_) => published[c].fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
            false
        }));
    }
    let mut budget_hit = false;
    for publisher in publishers {
        budget_hit |= publisher.await.unwrap_or(false);
    }
    let publishing = start.elapsed();
    let published: Vec<u64> = published.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    eprintln!(
        "    published {} messages in {:.2} s ({:.0} calls/s)",
        published.iter().sum::<u64>(),
        publishing.as_secs_f64(),
        published.iter().sum::<u64>() as f64 / publishing.as_secs_f64()
    );
    let expected: u64 = published.iter().map(|p| p * per as u64).sum();
    subscribers.wait_drained(expected, drain_idle(server.kind), Instant::now() + DRAIN_MAX).await;
    let cpu_after = server.cpu_time();
    let own_after = sys::cpu_time(std::process::id());
    let subscribers = Arc::into_inner(subscribers).ok_or("subscribers still shared")?;
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &published, errors.load(Ordering::Relaxed), start);
    summary.budget_hit = budget_hit;
    summary.server_cpu_us_per_delivery = cpu_per_delivery(cpu_before, cpu_after, summary.received);
    summary.client_cpu_us_per_delivery = cpu_per_delivery(own_before, own_after, summary.received);
    if stalled.load(Ordering::Relaxed) > 0 {
        report.notes.push(format!("{count} channels / {}: publishers stalled on a subscriber", server.kind.name()));
    }
    let prefix =
        format!("{} channels × {per} subs, {} in flight", format_number(count as f64, 0), sizes.multi_inflight);
    record_deliveries(report, server.kind, &prefix, &summary, "");
    check_clean(server.kind, &summary)
}

/// Scenario 5: latency under a steady rate: one channel, `latency_subs` subscribers, one
/// publish every 1/`latency_rate` s for `latency_secs`.
async fn latency(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let subs = sizes.latency_subs;
    let total = (sizes.latency_rate as f64 * sizes.latency_secs).ceil() as u64;
    let channels = Arc::new(vec![json!("latency")]);
    let subscribers =
        Subscribers::open(&server.target, &channels, &vec![0; subs], ctx.clock, ctx.open_options(total, true));
    let (ready, failed) = subscribers.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        subscribers.finish().await;
        return Err(format!("no subscriber connected ({failed} failed)"));
    }
    let backend = backend_client(&server.target)?;
    let interval = Duration::from_secs_f64(1.0 / sizes.latency_rate.max(1) as f64);
    let cpu_before = server.cpu_time();
    let own_before = sys::cpu_time(std::process::id());
    let start = Instant::now();
    let (mut published, mut errors, mut budget_hit) = (0u64, 0u64, false);
    for seq in 0..total {
        let due = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(due.into()).await;
        if start.elapsed() > sizes.budget {
            budget_hit = true;
            break;
        }
        let params = client::publish_params(&channels[0], client::payload(seq, ctx.clock.micros(), MESSAGE_SIZE));
        match backend.call("pubsub_backend", "publish", &params).await {
            Ok(_) => published += 1,
            Err(_) => errors += 1,
        }
    }
    let publishing = start.elapsed().as_secs_f64();
    subscribers.wait_drained(published * ready as u64, drain_idle(server.kind), Instant::now() + DRAIN_MAX).await;
    let cpu_after = server.cpu_time();
    let own_after = sys::cpu_time(std::process::id());
    let results = subscribers.finish().await;
    let mut summary = Deliveries::summarize(results, &[published], errors, start);
    summary.budget_hit = budget_hit;
    summary.server_cpu_us_per_delivery = cpu_per_delivery(cpu_before, cpu_after, summary.received);
    summary.client_cpu_us_per_delivery = cpu_per_delivery(own_before, own_after, summary.received);
    let achieved = published as f64 / publishing.max(1e-9);
    let prefix = format!("steady {} subs, {} msg/s", format_number(subs as f64, 0), sizes.latency_rate);
    if let Some(latency) = summary.latency {
        report.row_mut(&format!("{prefix}: latency p50 (ms)"), true).set(server.kind, Cell::number(latency.p50_ms, 2));
        report.row_mut(&format!("{prefix}: latency p99 (ms)"), true).set(server.kind, Cell::number(latency.p99_ms, 2));
        report.row_mut(&format!("{prefix}: latency max (ms)"), true).set(server.kind, Cell::number(latency.max_ms, 2));
    }
    report.row_mut(&format!("{prefix}: publishes/s achieved"), true).set(server.kind, Cell::number(achieved, 1));
    report
        .row_mut(&format!("{prefix}: missing/dup/reordered"), false)
        .set(server.kind, Cell::text(summary.errors_text()));
    if let Some(cpu) = summary.server_cpu_us_per_delivery {
        report.row_mut(&format!("{prefix}: server CPU µs/delivery"), true).set(server.kind, Cell::number(cpu, 2));
    }
    if let Some(cpu) = summary.client_cpu_us_per_delivery {
        report
            .row_mut(&format!("{prefix}: load generator CPU µs/delivery"), true)
            .set(server.kind, Cell::number(cpu, 2));
    }
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix} / {}: {}", server.kind.name(), summary.close_reasons.join("; ")));
    }
    eprintln!(
        "    {} deliveries at {achieved:.1} publishes/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
        summary.received,
        summary.latency.map_or(0.0, |l| l.p50_ms),
        summary.latency.map_or(0.0, |l| l.p99_ms),
        summary.latency.map_or(0.0, |l| l.max_ms),
        summary.errors_text()
    );
    check_clean(server.kind, &summary)
}

/// Scenario 6: RPC round trips per second: subscribe/unsubscribe ping-pong, each connection
/// sequential, on one connection and on `rpc_conns` connections.
async fn rpc(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    for conns in [1, sizes.rpc_conns] {
        let duration = Duration::from_secs_f64(sizes.rpc_secs);
        let mut sockets = Vec::with_capacity(conns);
        for i in 0..conns {
            let ws = tokio::time::timeout(
                client::SETUP_TIMEOUT,
                client::connect(&server.target, client::source_ip(i, sizes.source_ips)),
            )
            .await
            .map_err(|_| "connect timed out".to_owned())??;
            sockets.push(ws);
        }
        let cpu_before = server.cpu_time();
        let switches_before = sys::context_switches(server.pid());
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(conns);
        for (i, mut ws) in sockets.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let channel = json!(format!("rpc-{i}"));
                let (mut trips, mut call_id) = (0u64, 0u64);
                while start.elapsed() < duration {
                    for command in ["subscribe", "unsubscribe"] {
                        call_id += 1;
                        let call = tokio::time::timeout(
                            client::SETUP_TIMEOUT,
                            client::call(&mut ws, command, &channel, call_id),
                        );
                        match call.await {
                            Ok(Ok(())) => trips += 1,
                            Ok(Err(err)) => return (trips, Some(err)),
                            Err(_) => return (trips, Some("timed out".into())),
                        }
                    }
                }
                (trips, None)
            }));
        }
        let mut trips = 0u64;
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok((count, error)) => {
                    trips += count;
                    errors.extend(error);
                }
                Err(err) => errors.push(err.to_string()),
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_per_delivery(cpu_before, server.cpu_time(), trips);
        let rate = trips as f64 / elapsed;
        let label = if conns == 1 { "1 connection".to_owned() } else { format!("{conns} connections") };
        report.row_mut(&format!("RPC: round trips/s, {label}"), true).set(server.kind, Cell::number(rate, 0));
        if let Some(cpu) = cpu {
            report
                .row_mut(&format!("RPC: server CPU µs/round trip, {label}"), true)
                .set(server.kind, Cell::number(cpu, 2));
        }
        if let (Some(before), Some(after)) = (switches_before, sys::context_switches(server.pid())) {
            let per_trip = after.saturating_sub(before) as f64 / trips.max(1) as f64;
            report
                .row_mut(&format!("RPC: server context switches/round trip, {label}"), true)
                .set(server.kind, Cell::number(per_trip, 2));
        }
        eprintln!("    {label}: {trips} round trips in {elapsed:.2} s = {rate:.0}/s, {} errors", errors.len());
        if !errors.is_empty() {
            report.notes.push(format!("RPC {label} / {}: {} errors ({})", server.kind.name(), errors.len(), errors[0]));
            if server.kind != Kind::Channels {
                return Err(format!("RPC errors: {}", errors[0]));
            }
        }
    }
    backend_calls(ctx, server, report).await
}

/// Backend round trips: `publish` to a channel nobody listens to, through the fast client,
/// one call in flight and `multi_inflight` in flight. Isolates the HTTP path.
async fn backend_calls(ctx: &Ctx, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let sizes = &ctx.sizes;
    let backend = backend_client(&server.target)?;
    let duration = Duration::from_secs_f64(sizes.rpc_secs);
    for inflight in [1, sizes.multi_inflight] {
        let cpu_before = server.cpu_time();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(inflight);
        for task in 0..inflight {
            let backend = backend.clone();
            tasks.push(tokio::spawn(async move {
                let channel = json!(format!("nobody-{task}"));
                let (mut calls, mut errors) = (0u64, 0u64);
                while start.elapsed() < duration {
                    let params = client::publish_params(&channel, client::payload(calls, 0, MESSAGE_SIZE));
                    match backend.call("pubsub_backend", "publish", &params).await {
                        Ok(_) => calls += 1,
                        Err(_) => errors += 1,
                    }
                }
                (calls, errors)
            }));
        }
        let (mut calls, mut errors) = (0u64, 0u64);
        for task in tasks {
            let (c, e) = task.await.unwrap_or((0, 1));
            calls += c;
            errors += e;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_per_delivery(cpu_before, server.cpu_time(), calls);
        let rate = calls as f64 / elapsed;
        report
            .row_mut(&format!("backend publish calls/s (no subscribers), {inflight} in flight"), true)
            .set(server.kind, Cell::number(rate, 0));
        if let Some(cpu) = cpu {
            report
                .row_mut(&format!("backend: server CPU µs/call, {inflight} in flight"), true)
                .set(server.kind, Cell::number(cpu, 2));
        }
        eprintln!("    backend, {inflight} in flight: {calls} calls in {elapsed:.2} s = {rate:.0}/s, {errors} errors");
        if errors > 0 {
            report.notes.push(format!("backend calls / {}: {errors} errors", server.kind.name()));
            if server.kind != Kind::Channels {
                return Err(format!("{errors} backend call errors"));
            }
        }
    }
    Ok(())
}

/// Fills the targets table from the rows.
fn judge_targets(sizes: &Sizes, report: &mut Report) {
    let smoke = report.smoke;
    let mut lines = Vec::new();
    let ratio_line = |report: &Report, prefix: &str, other: Kind, at_least: f64, target: &str| {
        let row = report.rows.iter().find(|row| row.metric.starts_with(prefix));
        let ratio = row.and_then(|row| row.ratio(other));
        TargetLine {
            target: target.to_owned(),
            measured: ratio.map_or_else(|| "not measured".to_owned(), |r| format!("{}×", format_ratio(r))),
            met: if smoke { None } else { ratio.map(|r| r >= at_least) },
        }
    };
    let fanout = format!("fan-out {} subs", format_number(sizes.fanout_subs as f64, 0));
    lines.push(ratio_line(
        report,
        &format!("{fanout} × {} msgs: deliveries/s", format_number(sizes.fanout_msgs as f64, 0)),
        Kind::Ceiling,
        0.8,
        "fan-out 5,000 subs: deliveries/s ≥ 0.8× ceiling",
    ));
    lines.push(ratio_line(
        report,
        &format!("{fanout} × {} msgs: deliveries/s", format_number(sizes.fanout_msgs as f64, 0)),
        Kind::Channels,
        100.0,
        "fan-out 5,000 subs: deliveries/s ≥ 100× Channels",
    ));
    let errors = report
        .rows
        .iter()
        .find(|row| row.metric.starts_with(&fanout) && row.metric.ends_with("missing/dup/reordered"))
        .and_then(|row| row.text(Kind::Snorky));
    lines.push(TargetLine {
        target: "fan-out: 0 missing, duplicated, reordered (snorky)".into(),
        met: if smoke { None } else { errors.as_ref().map(|text| text == "0/0/0") },
        measured: errors.unwrap_or_else(|| "not measured".into()),
    });
    let idle = report
        .rows
        .iter()
        .find(|row| row.metric.starts_with("idle: server RSS KiB/conn"))
        .and_then(|row| row.get(Kind::Snorky))
        .and_then(|cell| cell.value);
    lines.push(TargetLine {
        target: "idle: ≤ 8 KiB per subscribed connection at 10,000".into(),
        measured: idle.map_or_else(
            || "not measured".into(),
            |kib| format!("{kib:.2} KiB at {}", format_number(sizes.idle_conns as f64, 0)),
        ),
        met: if smoke { None } else { idle.map(|kib| kib <= 8.0) },
    });
    lines.push(ratio_line(report, "set-up: connections/s", Kind::Ceiling, 0.8, "set-up rate ≥ 0.8× ceiling"));
    lines.push(ratio_line(
        report,
        &format!("{} channels ×", format_number(sizes.multi_channels as f64, 0)),
        Kind::Ceiling,
        0.8,
        "1,000 channels × 5 subs via BackendClient: deliveries/s ≥ 0.8× ceiling",
    ));
    let p99 = report
        .rows
        .iter()
        .find(|row| row.metric.starts_with("steady") && row.metric.ends_with("latency p99 (ms)"))
        .and_then(|row| row.get(Kind::Snorky))
        .and_then(|cell| cell.value);
    lines.push(TargetLine {
        target: "latency p99 ≤ 10 ms at 1,000 subs, 200 msg/s".into(),
        measured: p99.map_or_else(|| "not measured".into(), |ms| format!("{ms:.2} ms")),
        met: if smoke { None } else { p99.map(|ms| ms <= 10.0) },
    });
    let routing = report
        .rows
        .iter()
        .find(|row| {
            row.metric.starts_with("routing: update through")
                && row.metric.contains("equality condition: route µs median")
        })
        .and_then(|row| row.get(Kind::Snorky))
        .and_then(|cell| cell.value);
    lines.push(TargetLine {
        target: "routing an update through 100,000 equality Filter subs: median < 50 µs".into(),
        measured: routing.map_or_else(
            || "not measured".into(),
            |us| format!("{us:.2} µs at {}", format_number(sizes.services.routing_subs as f64, 0)),
        ),
        met: if smoke { None } else { routing.map(|us| us < 50.0) },
    });
    for (what, starts) in [("DataSync", "DataSync"), ("chat", "chat")] {
        let texts: Vec<String> = report
            .rows
            .iter()
            .filter(|row| row.metric.starts_with(starts) && row.metric.ends_with("missing/dup/reordered"))
            .filter_map(|row| row.text(Kind::Snorky))
            .collect();
        lines.push(TargetLine {
            target: format!("{what}: 0 missing, duplicated, reordered"),
            met: if smoke || texts.is_empty() { None } else { Some(texts.iter().all(|t| t == "0/0/0")) },
            measured: if texts.is_empty() { "not measured".into() } else { texts.join(", ") },
        });
    }
    report.targets = lines;
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
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
