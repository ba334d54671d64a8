//! `django`: the Django path, from `save()` to the browsers, against Django Channels.
//!
//! One PostgreSQL cluster made for the run (`django_procs`); the todo demo's model
//! (`demos/todo`) in the Snorky site (`bench/django`), `benchtodos.PlainTodo` (the same fields)
//! in the Channels one (`bench/channels_ref`, `todo_*.py`). For each Snorky delivery mode
//! (`direct`, `outbox`, then `logical`, last since it sets `REPLICA IDENTITY FULL` on the
//! subscribable tables), a fresh `manage.py snorky`, then:
//!
//! 1. `driver.py micro`: one `save()` (insert, update) and a 100-row `bulk_create`, each in
//!    `transaction.atomic()`, with and without `@subscribable`; and one `publishDeltas` round
//!    trip (the part of a direct-mode commit that waits for the server).
//! 2. `driver.py tokens`: every client's subscription from the DRF list view
//!    (`X-Snorky: Subscribe`) and its connection token, over HTTP; the clients (here) connect
//!    with the token and `acquireSubscription`: `mine` clients through the demo's Simple dealer
//!    by owner, `all` through the model's Broadcast dealer.
//! 3. Writer processes (`driver.py write`) create, update and delete todos (1:1:1), each in its
//!    own transaction, at a fixed total rate, stamping each commit with `CLOCK_MONOTONIC`; every
//!    delta is matched to its write (the title carries the write's number, a delete the row's
//!    id) and timed from the commit: p50/p99, missing, duplicated, reordered (per row).
//! 4. The same at rising rates until a step misses p99 ≤ 100 ms, loses a delta, or the writers
//!    cannot reach the rate: the highest rate that passed.
//!
//! Then the same workload (steps 3–4) on Channels: `post_save`/`post_delete` receivers that
//! `group_send` on commit to the owner's group and to everyone's, `channels_redis` on a
//! `redis-server` of the run's own, consumers on uvicorn (session cookie authentication); and on
//! django-eventstream: the same receivers calling `send_event` to the owner's channel and to
//! everyone's, its Redis support (`EVENTSTREAM_REDIS`) carrying the events from the writer
//! processes to daphne's (one per core), clients reading Server-Sent Events (session cookie).
//! Server memory (RSS) is read with the clients connected: `manage.py snorky`; uvicorn's or
//! daphne's processes and redis-server.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sse_stream::SseStream;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::django_procs::{
    children, command, free_port, http_status, monotonic_us, run_to_end, run_writers, tree_rss_kib, Postgres, Redis,
    Service,
};
use crate::client::{self, Target, Ws};
use crate::procs::{absolute, Kind};
use crate::report::{format_number, Cell, Report, TargetLine};
use crate::stats::Latency;
use crate::RunArgs;

/// A step passes with at most this p99, commit → delivery.
const RAMP_P99_MS: f64 = 100.0;
/// ... and when the writers reached at least this share of the rate asked.
const RAMP_REACHED: f64 = 0.9;
const DRAIN_IDLE: Duration = Duration::from_secs(3);
const DRAIN_MAX: Duration = Duration::from_secs(60);
const OPEN_MAX: Duration = Duration::from_secs(300);

/// Sizes of the scenario.
#[derive(Debug, Clone)]
pub struct DjangoSizes {
    /// Clients of their own todos (Simple dealer by owner; one per user).
    pub mine: usize,
    /// Clients of every todo (Broadcast dealer).
    pub all: usize,
    /// Writes per second of the latency measurement.
    pub rate: f64,
    /// Seconds of writing of the latency measurement.
    pub secs: f64,
    /// Writer processes.
    pub writers: usize,
    /// The rising rates (writes/s), each written for `ramp_secs`.
    pub ramp: Vec<f64>,
    pub ramp_secs: f64,
    /// `save()` calls timed per kind and model.
    pub micro: usize,
    pub concurrency: usize,
    /// The project's venv Python (with the extension).
    pub python: PathBuf,
    /// The Channels reference's venv.
    pub channels_venv: PathBuf,
    /// Whether `--servers` names Channels: the scenario measures it only then.
    pub with_channels: bool,
    /// Whether `--servers` names django-eventstream (`eventstream`): measured only then.
    pub with_eventstream: bool,
}

impl DjangoSizes {
    /// The sizes for the run (`--django-*` options, or the full/smoke defaults).
    pub fn resolve(args: &RunArgs, concurrency: usize) -> DjangoSizes {
        let smoke = args.smoke;
        let ramp = if smoke {
            vec![40.0, 80.0]
        } else {
            vec![10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 600.0, 800.0, 1200.0, 1600.0, 2400.0, 3200.0]
        };
        DjangoSizes {
            mine: args.django_mine.unwrap_or(if smoke { 10 } else { 900 }),
            all: args.django_all.unwrap_or(if smoke { 5 } else { 100 }),
            rate: args.django_rate.unwrap_or(if smoke { 40.0 } else { 200.0 }),
            secs: args.django_secs.unwrap_or(if smoke { 1.5 } else { 15.0 }),
            writers: args.django_writers.unwrap_or(if smoke { 2 } else { 4 }).max(1),
            ramp,
            ramp_secs: if smoke { 1.0 } else { 8.0 },
            micro: if smoke { 20 } else { 1000 },
            concurrency,
            python: args.python.clone(),
            channels_venv: args.channels_venv.clone(),
            with_channels: args.servers.split(',').any(|server| server.trim() == "channels"),
            with_eventstream: args.servers.split(',').any(|server| server.trim() == "eventstream"),
        }
    }

    fn prefix(&self) -> String {
        format!(
            "django {} clients ({} by owner, {} broadcast)",
            format_number((self.mine + self.all) as f64, 0),
            format_number(self.mine as f64, 0),
            format_number(self.all as f64, 0)
        )
    }

    /// Whether the reference venv holds `reference`'s server and packages.
    fn installed(&self, reference: Reference) -> bool {
        let bin = self.channels_venv.join("bin");
        match reference {
            Reference::Channels => bin.join("uvicorn").is_file(),
            Reference::Eventstream => {
                // lib/python3.X/site-packages/django_eventstream
                let package = std::fs::read_dir(self.channels_venv.join("lib")).ok().is_some_and(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .any(|entry| entry.path().join("site-packages").join("django_eventstream").is_dir())
                });
                bin.join("daphne").is_file() && package
            }
        }
    }
}

/// Runs the scenario (skipped with a note when the project's venv does not exist).
pub async fn run(sizes: &DjangoSizes, report: &mut Report) -> Result<(), String> {
    if !sizes.python.exists() {
        let note = format!(
            "django: skipped: {} does not exist (the project's venv with the built extension)",
            sizes.python.display()
        );
        println!("{note}");
        report.notes.push(note);
        return Ok(());
    }
    let work = std::env::temp_dir().join(format!("snorky-bench-django-{}-{}", std::process::id(), monotonic_us()));
    std::fs::create_dir_all(&work).map_err(|err| format!("{}: {err}", work.display()))?;
    eprintln!("    creating the PostgreSQL cluster");
    // Beyond the writers, the servers and the set-up steps: a connection per client, since each
    // open django-eventstream stream holds one (Django closes a request's connection when its
    // response ends, and a stream's does not).
    let max_connections = 300 + sizes.mine + sizes.all;
    let outcome = match Postgres::start(&["snorky", "channels", "eventstream"], max_connections).await {
        Ok(postgres) => {
            let outcome = run_on(sizes, &postgres, &work, report).await;
            postgres.stop().await;
            outcome
        }
        Err(err) => Err(err),
    };
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

/// What one delivery set-up measured.
#[derive(Debug, Default)]
struct Outcome {
    latency: Option<Step>,
    /// The highest rate that passed, and why the next one did not.
    sustained: Option<f64>,
    stopped: String,
    rss_kib: Option<u64>,
    /// PostgreSQL's processes with the clients connected: its background ones and one per
    /// connection (the writers are not running then).
    db_processes: Option<usize>,
    /// Why clients were disconnected, if any were.
    closes: String,
}

async fn run_on(sizes: &DjangoSizes, postgres: &Postgres, work: &Path, report: &mut Report) -> Result<(), String> {
    let snorky_env = Env::new(postgres.port, "snorky");
    eprintln!("    migrating, {} users", sizes.mine.max(sizes.all));
    let users_file = work.join("users-snorky.json");
    setup(&sizes.python, "snorky", &snorky_env, sizes.mine.max(sizes.all), &users_file).await?;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    // Logical last: its set-up makes the subscribable tables log whole old rows (`REPLICA
    // IDENTITY FULL`), which must not weigh on the other modes' writes.
    for mode in ["direct", "outbox", "logical"] {
        eprintln!("    snorky, {mode} delivery");
        match snorky_mode(sizes, &snorky_env, &users_file, work, mode, postgres.pid(), report).await {
            Ok(outcome) => outcomes.push((mode, outcome)),
            Err(err) => failures.push(format!("{mode}: {err}")),
        }
    }
    let mut references = Vec::new();
    for reference in [Reference::Channels, Reference::Eventstream] {
        let name = reference.name();
        let wanted = match reference {
            Reference::Channels => sizes.with_channels,
            Reference::Eventstream => sizes.with_eventstream,
        };
        if !wanted {
            report.notes.push(format!("django: {name} not measured: --servers does not name it."));
        } else if !sizes.installed(reference) {
            report.notes.push(format!("django: {name} skipped: it is not installed (bench/run.sh creates its venv)."));
        } else {
            eprintln!("    {name} ({})", reference.setup());
            match run_reference(reference, sizes, postgres, work, report).await {
                Ok(outcome) => references.push((reference, outcome)),
                Err(err) => failures.push(format!("{name}: {err}")),
            }
        }
    }
    record(sizes, report, &outcomes, &references);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The environment of every Python step of one site.
#[derive(Debug, Clone)]
struct Env(Vec<(String, String)>);

impl Env {
    fn new(pg_port: u16, database: &str) -> Env {
        Env(vec![
            ("BENCH_DB_PORT".into(), pg_port.to_string()),
            ("BENCH_DB_NAME".into(), database.into()),
            ("SNORKY_BENCH_KEY".into(), crate::KEY.into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ])
    }

    fn with(&self, key: &str, value: &str) -> Env {
        let mut env = self.clone();
        env.0.retain(|(k, _)| k != key);
        env.0.push((key.into(), value.into()));
        env
    }

    fn apply(&self, command: &mut Command) {
        command.envs(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
}

/// `python bench/django/driver.py --site <site> ...`.
fn driver(python: &Path, site: &str, env: &Env) -> Command {
    let mut command = command(&absolute(python), None, libc::SIGTERM);
    command.arg(absolute(Path::new("bench/django/driver.py"))).args(["--site", site]);
    env.apply(&mut command);
    command
}

async fn setup(python: &Path, site: &str, env: &Env, users: usize, out: &Path) -> Result<(), String> {
    let mut command = driver(python, site, env);
    command.arg("--out").arg(out).args(["setup", "--users", &users.to_string()]);
    run_to_end(command, "driver.py setup", Duration::from_secs(300)).await.map(|_| ())
}

/// The users `setup` created: (id, session key), in id order.
fn read_users(path: &Path) -> Result<Vec<(u64, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
    doc["users"]
        .as_array()
        .ok_or("no users")?
        .iter()
        .map(|user| {
            let id = user["id"].as_u64().ok_or("a user without id")?;
            Ok((id, user["session"].as_str().ok_or("a user without session")?.to_owned()))
        })
        .collect()
}

// --- Snorky ---------------------------------------------------------------------------------------

async fn snorky_mode(
    sizes: &DjangoSizes,
    env: &Env,
    users_file: &Path,
    work: &Path,
    mode: &str,
    pg_pid: Option<u32>,
    report: &mut Report,
) -> Result<Outcome, String> {
    let frontend: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let backend: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let env = env
        .with("BENCH_DELIVERY", mode)
        .with("BENCH_SNORKY_FRONTEND", &frontend.to_string())
        .with("BENCH_SNORKY_BACKEND", &backend.to_string());
    if mode == "outbox" || mode == "logical" {
        // The saves only write the outbox (or nothing more, with logical delivery): timed before
        // the relay starts sharing the machine.
        eprintln!("    save() timings");
        micro(&sizes.python, "snorky", &env, mode, sizes.micro, report).await?;
    }
    let mut server = command(&absolute(&sizes.python), None, libc::SIGTERM);
    server.arg(absolute(Path::new("bench/django/manage.py"))).arg("snorky");
    env.apply(&mut server);
    let server = Service::start(server, backend, "manage.py snorky").await?;
    let outcome = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(backend, "/health").await.ok() != Some(200) {
            if Instant::now() > deadline {
                return Err("manage.py snorky: /health did not answer 200".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if mode == "direct" {
            eprintln!("    save() timings");
            micro(&sizes.python, "snorky", &env, mode, sizes.micro, report).await?;
        }
        eprintln!("    {} subscriptions through the list views", sizes.mine + sizes.all);
        let tokens_file = work.join(format!("tokens-{mode}.json"));
        let mut tokens = driver(&sizes.python, "snorky", &env);
        tokens.arg("--out").arg(&tokens_file).arg("tokens").arg("--users-file").arg(users_file).args([
            "--mine",
            &sizes.mine.to_string(),
            "--all",
            &sizes.all.to_string(),
        ]);
        run_to_end(tokens, "driver.py tokens", Duration::from_secs(600)).await?;
        let specs = snorky_clients(&tokens_file)?;
        let target = Target::new(&format!("ws://{frontend}/ws"), &format!("http://{backend}/backend"))?;
        let clients = Clients::open(specs, Connect::Snorky(target), sizes.concurrency);
        let writers = WriterSetup {
            python: sizes.python.clone(),
            site: "snorky",
            env: env.clone(),
            users_file: users_file.to_owned(),
            work: work.to_owned(),
        };
        let outcome = measure(sizes, &clients, &writers, pg_pid, || server.pid().map(tree_rss_kib)).await;
        clients.close().await;
        outcome
    }
    .await;
    server.stop().await;
    outcome
}

/// Times `save()` with and without live updates (`driver.py micro`) and records the rows: on the
/// Snorky site (`mode`: `direct`, `outbox` or `logical`) `@subscribable` against the plain
/// model, on the reference ones (`mode`: `channels`, `eventstream`) the receivers that send on
/// commit (`group_send`, `send_event`) against none.
async fn micro(python: &Path, site: &str, env: &Env, mode: &str, n: usize, report: &mut Report) -> Result<(), String> {
    let mut command = driver(python, site, env);
    command.args(["micro", "--n", &n.to_string()]);
    let out = run_to_end(command, "driver.py micro", Duration::from_secs(900)).await?;
    let result: Value = serde_json::from_str(out.trim()).map_err(|err| format!("driver.py micro: {err}: {out}"))?;
    let number = |key: &str| result[key].as_f64().ok_or_else(|| format!("driver.py micro: no {key:?} in {out}"));
    let (kind, live) = match site {
        "snorky" => (Kind::Snorky, "@subscribable"),
        "eventstream" => (Kind::Eventstream, "post_save → send_event on commit"),
        _ => (Kind::Channels, "post_save → group_send on commit"),
    };
    for (what, label) in [
        ("insert", "save() of a new row"),
        ("update", "save() of a changed row"),
        ("bulk", "bulk_create() of 100 rows"),
    ] {
        let (Ok(plain), Ok(with)) = (number(&format!("{what} plain us")), number(&format!("{what} subscribable us")))
        else {
            continue; // bulk_create sends no signal: the reference sides have nothing to time
        };
        let prefix = format!("django {label} in a transaction ({mode})");
        report.row_mut(&format!("{prefix}: plain model (µs)"), false).set(kind, Cell::number(plain, 0));
        report.row_mut(&format!("{prefix}: {live} (µs)"), false).set(kind, Cell::number(with, 0));
        report.row_mut(&format!("{prefix}: {live} ÷ plain"), false).set(kind, Cell::number(with / plain.max(1e-9), 2));
        let plain_cpu = number(&format!("{what} plain cpu us"))?;
        let with_cpu = number(&format!("{what} subscribable cpu us"))?;
        report
            .row_mut(&format!("{prefix}: Python CPU, plain → {live} (µs)"), false)
            .set(kind, Cell::text(format!("{plain_cpu:.0} → {with_cpu:.0}")));
        eprintln!("    {label}: plain {plain:.0} µs, {live} {with:.0} µs (CPU {plain_cpu:.0} → {with_cpu:.0})");
        // The same model with its deltas built by a plain jsonify() (the Snorky site only): what
        // @subscribable costs without the demo's DRF serializer.
        if let Ok(light) = number(&format!("{what} light us")) {
            report
                .row_mut(&format!("{prefix}: {live} with a plain jsonify() (µs)"), false)
                .set(kind, Cell::number(light, 0));
            report
                .row_mut(&format!("{prefix}: {live} with a plain jsonify() ÷ plain"), false)
                .set(kind, Cell::number(light / plain.max(1e-9), 2));
        }
    }
    if mode == "direct" {
        let round_trip = number("publishDeltas round trip us")?;
        report
            .row_mut("django direct: one publishDeltas round trip, the commit's wait for the server (µs)", false)
            .set(Kind::Snorky, Cell::number(round_trip, 0));
    }
    Ok(())
}

/// The clients of the Snorky site, from `driver.py tokens`.
fn snorky_clients(path: &Path) -> Result<Vec<ClientSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
    doc["clients"]
        .as_array()
        .ok_or("no clients")?
        .iter()
        .map(|client| {
            let text = |key: &str| client[key].as_str().map(str::to_owned).ok_or(format!("a client without {key}"));
            Ok(ClientSpec {
                user: client["user"].as_u64().ok_or("a client without user")?,
                everything: client["list"] == json!("all"),
                login: Login::Snorky { connection: text("conn")?, subscription: text("sub")? },
            })
        })
        .collect()
}

// --- Channels and django-eventstream -------------------------------------------------------------

/// A set-up a Django user would pick today, measured beside Snorky on the same workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference {
    /// Django Channels: `channels_redis`, consumers on uvicorn.
    Channels,
    /// django-eventstream: Server-Sent Events, `EVENTSTREAM_REDIS`, daphne.
    Eventstream,
}

impl Reference {
    fn name(self) -> &'static str {
        match self {
            Reference::Channels => "channels",
            Reference::Eventstream => "eventstream",
        }
    }

    fn setup(self) -> &'static str {
        match self {
            Reference::Channels => "channels_redis, uvicorn",
            Reference::Eventstream => "django-eventstream, EVENTSTREAM_REDIS, daphne",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Reference::Channels => Kind::Channels,
            Reference::Eventstream => Kind::Eventstream,
        }
    }

    /// Starts the site's server processes (one per core) on free ports; returns them and how
    /// clients reach them.
    async fn serve(self, venv: &Path, env: &Env) -> Result<(Vec<Service>, Connect), String> {
        let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let program = |name: &str| command(&absolute(&venv.join("bin").join(name)), None, libc::SIGTERM);
        let project = absolute(Path::new("bench/channels_ref"));
        match self {
            Reference::Channels => {
                let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
                let mut uvicorn = program("uvicorn");
                // One worker per core, as a deployment on this machine would run it.
                uvicorn
                    .args(["channels_ref.todo_asgi:application", "--host", "127.0.0.1"])
                    .args(["--port", &addr.port().to_string(), "--workers", &workers.to_string()])
                    .args(["--ws", "websockets", "--http", "httptools", "--loop", "uvloop"])
                    .args(["--log-level", "warning", "--no-access-log"])
                    .current_dir(&project)
                    .env("DJANGO_SETTINGS_MODULE", "channels_ref.todo_settings");
                env.apply(&mut uvicorn);
                Ok((vec![Service::start(uvicorn, addr, "uvicorn").await?], Connect::Channels(addr)))
            }
            Reference::Eventstream => {
                // daphne, the server django-eventstream's documentation deploys with, is one
                // process: one per core, the clients spread over them, the events reaching each
                // through Redis.
                let mut services = Vec::with_capacity(workers);
                let mut addrs = Vec::with_capacity(workers);
                for _ in 0..workers {
                    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
                    let mut daphne = program("daphne");
                    daphne
                        .args(["-b", "127.0.0.1", "-p", &addr.port().to_string(), "-v", "0"])
                        .arg("channels_ref.eventstream_asgi:application")
                        .current_dir(&project)
                        .env("DJANGO_SETTINGS_MODULE", "channels_ref.eventstream_settings");
                    env.apply(&mut daphne);
                    match Service::start(daphne, addr, "daphne").await {
                        Ok(service) => services.push(service),
                        Err(err) => {
                            for service in services {
                                service.stop().await;
                            }
                            return Err(err);
                        }
                    }
                    addrs.push(addr);
                }
                Ok((services, Connect::Eventstream(addrs)))
            }
        }
    }
}

/// The same writers and clients on a reference set-up: its own database on the cluster, a
/// `redis-server` of its own between the writers and the server processes.
async fn run_reference(
    reference: Reference,
    sizes: &DjangoSizes,
    postgres: &Postgres,
    work: &Path,
    report: &mut Report,
) -> Result<Outcome, String> {
    let site = reference.name();
    let python = sizes.channels_venv.join("bin").join("python");
    let redis = Redis::start().await?;
    let env = Env::new(postgres.port, site).with("BENCH_REDIS_URL", &format!("redis://127.0.0.1:{}/0", redis.port));
    let outcome = async {
        let users_file = work.join(format!("users-{site}.json"));
        setup(&python, site, &env, sizes.mine.max(sizes.all), &users_file).await?;
        eprintln!("    save() timings");
        micro(&python, site, &env, site, sizes.micro, report).await?;
        let (servers, connect) = reference.serve(&sizes.channels_venv, &env).await?;
        let users = read_users(&users_file)?;
        let specs: Vec<ClientSpec> = users
            .iter()
            .take(sizes.mine)
            .map(|(id, session)| (id, session, false))
            .chain(users.iter().take(sizes.all).map(|(id, session)| (id, session, true)))
            .map(|(id, session, everything)| ClientSpec {
                user: *id,
                everything,
                login: Login::Session { session: session.clone() },
            })
            .collect();
        let clients = Clients::open(specs, connect, sizes.concurrency);
        let writers = WriterSetup {
            python: python.clone(),
            site,
            env: env.clone(),
            users_file: users_file.clone(),
            work: work.to_owned(),
        };
        let redis_pid = redis.pid();
        let outcome = measure(sizes, &clients, &writers, postgres.pid(), || {
            let servers: u64 = servers.iter().filter_map(Service::pid).map(tree_rss_kib).sum();
            Some(servers + redis_pid.map_or(0, tree_rss_kib))
        })
        .await;
        clients.close().await;
        for server in servers {
            server.stop().await;
        }
        outcome
    }
    .await;
    redis.stop().await;
    outcome
}

// --- The measurements -----------------------------------------------------------------------------

/// The latency step at the fixed rate, the memory (and PostgreSQL's processes, `pg_pid`'s
/// children), then the ramp.
async fn measure(
    sizes: &DjangoSizes,
    clients: &Clients,
    writers: &WriterSetup,
    pg_pid: Option<u32>,
    rss: impl Fn() -> Option<u64>,
) -> Result<Outcome, String> {
    let (ready, failed) = clients.wait_ready(OPEN_MAX).await;
    if failed > 0 || ready == 0 {
        return Err(format!("{failed} of {} clients could not subscribe: {}", ready + failed, clients.first_error()));
    }
    let mut outcome =
        Outcome { rss_kib: rss(), db_processes: pg_pid.map(|pid| children(pid).len()), ..Outcome::default() };
    let mut seq = 1u64;
    eprintln!("    {} writes/s for {} s", sizes.rate, sizes.secs);
    let latency = step(sizes, clients, writers, sizes.rate, sizes.secs, &mut seq).await?;
    latency.print();
    outcome.latency = Some(latency);
    for &rate in &sizes.ramp {
        let mut result = step(sizes, clients, writers, rate, sizes.ramp_secs, &mut seq).await?;
        result.print();
        if result.failure().is_some() {
            // On a shared machine one stall of another process can spoil a step's p99: a step
            // fails only if it fails twice.
            result = step(sizes, clients, writers, rate, sizes.ramp_secs, &mut seq).await?;
            result.print();
        }
        match result.failure() {
            None => outcome.sustained = Some(rate),
            Some(why) => {
                // Writers that fall short, with every delivery on time, still show a rate carried.
                if result.delivered_in_time() {
                    outcome.sustained = Some(outcome.sustained.unwrap_or(0.0).max(result.achieved));
                }
                outcome.stopped = format!("{} writes/s: {why}", format_number(rate, 0));
                break;
            }
        }
    }
    if outcome.stopped.is_empty() {
        outcome.stopped = "every rate tried passed".into();
    }
    outcome.closes = clients.close_reasons();
    Ok(outcome)
}

/// How to start the writers of a site.
struct WriterSetup {
    python: PathBuf,
    site: &'static str,
    env: Env,
    users_file: PathBuf,
    work: PathBuf,
}

/// One write, from a writer's log.
#[derive(Debug, Clone, Copy)]
struct Write {
    id: u64,
    owner: u64,
    committed_us: u64,
}

/// What one step measured.
#[derive(Debug, Default)]
struct Step {
    rate: f64,
    achieved: f64,
    writes: usize,
    expected: u64,
    delivered: u64,
    missing: u64,
    duplicated: u64,
    reordered: u64,
    unknown: u64,
    closed: usize,
    latency: Option<Latency>,
}

impl Step {
    fn errors(&self) -> String {
        format!("{}/{}/{}", self.missing, self.duplicated, self.reordered)
    }

    /// Why this step does not count as carried, if it does not.
    fn failure(&self) -> Option<String> {
        let p99 = self.latency.map_or(f64::INFINITY, |l| l.p99_ms);
        if self.closed > 0 {
            Some(format!("{} clients were disconnected", self.closed))
        } else if self.missing > 0 || self.duplicated > 0 {
            Some(format!("deliveries missing/duplicated: {}/{}", self.missing, self.duplicated))
        } else if self.achieved < self.rate * RAMP_REACHED {
            Some(format!("the writers reached {} writes/s", format_number(self.achieved, 0)))
        } else if p99 > RAMP_P99_MS {
            Some(format!("p99 {p99:.1} ms"))
        } else {
            None
        }
    }

    /// Every delivery arrived, once, within the p99 bound (whatever rate the writers reached).
    fn delivered_in_time(&self) -> bool {
        self.closed == 0
            && self.missing == 0
            && self.duplicated == 0
            && self.latency.is_some_and(|latency| latency.p99_ms <= RAMP_P99_MS)
    }

    fn print(&self) {
        eprintln!(
            "    {} writes/s asked, {:.0} done ({} writes): {} of {} deliveries, p50 {:.2} ms, p99 {:.2} ms, missing/dup/reordered {}{}",
            format_number(self.rate, 0),
            self.achieved,
            self.writes,
            self.delivered,
            self.expected,
            self.latency.map_or(0.0, |l| l.p50_ms),
            self.latency.map_or(0.0, |l| l.p99_ms),
            self.errors(),
            if self.unknown > 0 { format!(", {} unknown", self.unknown) } else { String::new() }
        );
    }
}

/// Writes at `rate` for `secs` from the writer processes, waits for the deliveries, matches them.
async fn step(
    sizes: &DjangoSizes,
    clients: &Clients,
    setup: &WriterSetup,
    rate: f64,
    secs: f64,
    seq: &mut u64,
) -> Result<Step, String> {
    let processes = sizes.writers;
    let mut commands = Vec::with_capacity(processes);
    let logs: Vec<PathBuf> = (0..processes).map(|i| setup.work.join(format!("writer-{i}.tsv"))).collect();
    for (index, log) in logs.iter().enumerate() {
        let mut command = driver(&setup.python, setup.site, &setup.env);
        command.arg("write").arg("--users-file").arg(&setup.users_file).arg("--log").arg(log).args([
            "--owners",
            &sizes.mine.to_string(),
            "--rate",
            &(rate / processes as f64).to_string(),
            "--secs",
            &secs.to_string(),
            "--index",
            &index.to_string(),
            "--of",
            &processes.to_string(),
            "--seq-start",
            &seq.to_string(),
        ]);
        commands.push(command);
    }
    let base = clients.received();
    let outputs = run_writers(commands, Duration::from_secs_f64(secs + 120.0)).await?;
    let mut elapsed: f64 = 0.0;
    for output in &outputs {
        let summary: Value = serde_json::from_str(output).map_err(|err| format!("a writer's summary: {err}"))?;
        elapsed = elapsed.max(summary["secs"].as_f64().unwrap_or(0.0));
    }
    let mut writes: HashMap<u64, Write> = HashMap::new();
    let mut deleted: HashMap<u64, u64> = HashMap::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).map_err(|err| format!("{}: {err}", log.display()))?;
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            let (Some(number), Some(id), Some(owner), Some(committed_us)) =
                (number(0), number(2), number(3), number(4))
            else {
                return Err(format!("a malformed writer log line: {line:?}"));
            };
            if fields[1] == "d" {
                deleted.insert(id, number);
            }
            writes.insert(number, Write { id, owner, committed_us });
            *seq = (*seq).max(number + 1);
        }
    }
    let mut per_owner: HashMap<u64, u64> = HashMap::new();
    for write in writes.values() {
        *per_owner.entry(write.owner).or_default() += 1;
    }
    let expected: u64 = clients
        .specs
        .iter()
        .map(|spec| if spec.everything { writes.len() as u64 } else { per_owner.get(&spec.user).copied().unwrap_or(0) })
        .sum();
    clients.wait_drained(base, expected).await;
    let mut result = Step {
        rate,
        achieved: writes.len() as f64 / elapsed.max(1e-9),
        writes: writes.len(),
        expected,
        ..Step::default()
    };
    let mut latencies: Vec<u32> = Vec::new();
    for (spec, state) in clients.specs.iter().zip(&clients.states) {
        let records = std::mem::take(&mut *state.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut seen: HashSet<u64> = HashSet::with_capacity(records.len());
        let mut last_of_row: HashMap<u64, u64> = HashMap::new();
        for record in records {
            let number = if record.delete { deleted.get(&record.id).copied() } else { Some(record.key) };
            let Some(write) = number.and_then(|n| writes.get(&n).map(|w| (n, *w))) else {
                result.unknown += 1;
                continue;
            };
            let (number, write) = write;
            if write.id != record.id {
                result.unknown += 1;
                continue;
            }
            if !seen.insert(number) {
                result.duplicated += 1;
                continue;
            }
            result.delivered += 1;
            latencies.push(u32::try_from(record.received_us.saturating_sub(write.committed_us)).unwrap_or(u32::MAX));
            let last = last_of_row.entry(write.id).or_insert(0);
            if number < *last {
                result.reordered += 1;
            }
            *last = (*last).max(number);
        }
        let owed = if spec.everything { writes.len() as u64 } else { per_owner.get(&spec.user).copied().unwrap_or(0) };
        result.missing += owed.saturating_sub(seen.len() as u64);
    }
    result.closed = clients.closed();
    result.latency = Latency::of(&mut latencies);
    Ok(result)
}

// --- The clients ----------------------------------------------------------------------------------

/// How a client logs in and subscribes.
#[derive(Debug, Clone)]
enum Login {
    /// `ws://.../ws?token=<connection>`, then `datasync.acquireSubscription(subscription)`.
    Snorky { connection: String, subscription: String },
    /// The user's session cookie: Channels' `ws://.../todos?list=mine|all`, django-eventstream's
    /// `GET /todos/events/?list=mine|all`.
    Session { session: String },
}

#[derive(Debug, Clone)]
struct ClientSpec {
    user: u64,
    /// Subscribed to every todo (else to the user's own).
    everything: bool,
    login: Login,
}

#[derive(Debug, Clone)]
enum Connect {
    Snorky(Target),
    Channels(SocketAddr),
    /// The server processes; a client goes to one of them by its user's id.
    Eventstream(Vec<SocketAddr>),
}

/// A subscribed client's connection.
enum Conn {
    Ws(Box<Ws>),
    Sse(Box<SseStream<Incoming>>),
}

/// One delivery: the write's number (from the title) or, for a delete, the row's id.
#[derive(Debug, Clone, Copy)]
struct Record {
    key: u64,
    id: u64,
    delete: bool,
    received_us: u64,
}

#[derive(Default)]
struct ClientState {
    records: Mutex<Vec<Record>>,
    count: AtomicU64,
    closed: Mutex<Option<String>>,
}

struct Clients {
    specs: Vec<ClientSpec>,
    states: Vec<Arc<ClientState>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl Clients {
    fn open(specs: Vec<ClientSpec>, connect: Connect, concurrency: usize) -> Clients {
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let first_error = Arc::new(Mutex::new(None));
        let states: Vec<Arc<ClientState>> = specs.iter().map(|_| Arc::new(ClientState::default())).collect();
        let tasks = specs
            .iter()
            .zip(&states)
            .map(|(spec, state)| {
                let (spec, state, connect) = (spec.clone(), Arc::clone(state), connect.clone());
                let (gate, ready, failed, first_error) =
                    (Arc::clone(&gate), Arc::clone(&ready), Arc::clone(&failed), Arc::clone(&first_error));
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    let permit = gate.acquire().await;
                    let conn = tokio::time::timeout(client::SETUP_TIMEOUT, join(&connect, &spec)).await;
                    drop(permit);
                    let mut conn = match conn {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(err)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(err);
                            return;
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    ready.fetch_add(1, Ordering::Relaxed);
                    receive(&mut conn, &state, &mut stop).await;
                })
            })
            .collect();
        Clients { specs, states, tasks, stop, ready, failed, first_error }
    }

    async fn wait_ready(&self, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let (ready, failed) = (self.ready.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
            if ready + failed >= self.specs.len() || Instant::now() > deadline {
                return (ready, failed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn first_error(&self) -> String {
        self.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone().unwrap_or_default()
    }

    fn received(&self) -> u64 {
        self.states.iter().map(|state| state.count.load(Ordering::Relaxed)).sum()
    }

    /// The distinct reasons clients were disconnected, with their counts.
    fn close_reasons(&self) -> String {
        let mut reasons: Vec<(String, usize)> = Vec::new();
        for state in &self.states {
            if let Some(reason) = state.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
                match reasons.iter_mut().find(|(known, _)| *known == reason) {
                    Some((_, count)) => *count += 1,
                    None => reasons.push((reason, 1)),
                }
            }
        }
        reasons.iter().map(|(reason, count)| format!("{count} × {reason}")).collect::<Vec<_>>().join(", ")
    }

    fn closed(&self) -> usize {
        self.states
            .iter()
            .filter(|state| state.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some())
            .count()
    }

    /// Waits until `expected` deliveries arrived since the count was `base`, or none for
    /// [`DRAIN_IDLE`], or [`DRAIN_MAX`].
    async fn wait_drained(&self, base: u64, expected: u64) {
        let deadline = Instant::now() + DRAIN_MAX;
        let (mut last, mut last_change) = (self.received(), Instant::now());
        loop {
            let now = self.received();
            if now.saturating_sub(base) >= expected || Instant::now() > deadline || last_change.elapsed() > DRAIN_IDLE {
                return;
            }
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn close(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Connects and subscribes one client.
async fn join(connect: &Connect, spec: &ClientSpec) -> Result<Conn, String> {
    let list = if spec.everything { "all" } else { "mine" };
    match (connect, &spec.login) {
        (Connect::Snorky(target), Login::Snorky { connection, subscription }) => {
            let url = format!("{}?token={connection}", target.ws_url);
            let mut ws = client::connect_url(target, None, &url).await?;
            client::call_service(&mut ws, "datasync", "acquireSubscription", json!({"token": subscription}), 1).await?;
            Ok(Conn::Ws(Box::new(ws)))
        }
        (Connect::Channels(addr), Login::Session { session }) => {
            let mut request = format!("ws://{addr}/todos?list={list}")
                .into_client_request()
                .map_err(|err| format!("request: {err}"))?;
            let cookie = HeaderValue::from_str(&format!("sessionid={session}")).map_err(|err| err.to_string())?;
            request.headers_mut().insert("Cookie", cookie);
            let stream = TcpStream::connect(addr).await.map_err(|err| format!("connect: {err}"))?;
            let _ = stream.set_nodelay(true);
            let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
            let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|err| format!("handshake: {err}"))?;
            Ok(Conn::Ws(Box::new(ws)))
        }
        (Connect::Eventstream(addrs), Login::Session { session }) => {
            let addr = addrs
                .get(usize::try_from(spec.user).unwrap_or(0) % addrs.len().max(1))
                .ok_or("no django-eventstream server")?;
            Ok(Conn::Sse(Box::new(open_events(*addr, list, session).await?)))
        }
        _ => Err("a client's login does not match its server".into()),
    }
}

/// `GET /todos/events/?list=...` with the session cookie, as a browser's `EventSource` asks; the
/// client is subscribed once the stream's `stream-open` event arrived (the server registers the
/// stream's listener before it sends it).
async fn open_events(addr: SocketAddr, list: &str, session: &str) -> Result<SseStream<Incoming>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|err| format!("connect: {err}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|err| format!("HTTP: {err}"))?;
    // The connection lives as long as the response body: it ends when the client drops it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::get(format!("/todos/events/?list={list}"))
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::ACCEPT, "text/event-stream")
        .header(hyper::header::COOKIE, format!("sessionid={session}"))
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("request: {err}"))?;
    let response = sender.send_request(request).await.map_err(|err| format!("GET: {err}"))?;
    let content_type = response.headers().get(hyper::header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    if response.status() != hyper::StatusCode::OK || content_type != Some("text/event-stream") {
        return Err(format!("GET /todos/events/: {} ({content_type:?})", response.status()));
    }
    let mut events = SseStream::new(response.into_body());
    loop {
        match events.next().await {
            Some(Ok(event)) => match event.event.as_deref() {
                Some("stream-open") => return Ok(events),
                Some("stream-error") => return Err(format!("stream-error: {}", event.data.unwrap_or_default())),
                _ => {}
            },
            Some(Err(err)) => return Err(format!("events: {err}")),
            None => return Err("the stream ended before stream-open".into()),
        }
    }
}

/// Reads deltas until told to stop, recording each with its arrival time.
async fn receive(conn: &mut Conn, state: &ClientState, stop: &mut watch::Receiver<bool>) {
    let mut checked = false;
    let reason = match conn {
        Conn::Ws(ws) => loop {
            let Some(message) = next_or_stop(ws.as_mut(), stop).await else { return };
            match message {
                Some(Ok(Message::Text(text))) => note(text.as_str(), state, &mut checked),
                Some(Ok(Message::Close(frame))) => {
                    break frame
                        .map_or_else(|| "close frame".to_owned(), |f| format!("closed with {}", u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => break format!("error: {err}"),
                None => break "connection ended".into(),
            }
        },
        Conn::Sse(events) => loop {
            let Some(event) = next_or_stop(events.as_mut(), stop).await else { return };
            match event {
                // An event without a type is a `message` (the SSE rules); `keep-alive` is not one.
                Some(Ok(event)) => match (event.event.as_deref(), event.data) {
                    (None | Some("message"), Some(data)) => note(&data, state, &mut checked),
                    (Some("stream-error"), data) => break format!("stream-error: {}", data.unwrap_or_default()),
                    _ => {}
                },
                Some(Err(err)) => break format!("error: {err}"),
                None => break "stream ended".into(),
            }
        },
    };
    *state.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
}

/// The next item of `stream`, or `None` once told to stop.
async fn next_or_stop<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    stop: &mut watch::Receiver<bool>,
) -> Option<Option<S::Item>> {
    tokio::select! {
        biased;
        _ = stop.changed() => None,
        item = stream.next() => Some(item),
    }
}

/// Records one delivered text, when it is a delta: the first one is checked in full, then the
/// numbers are read from the text.
fn note(text: &str, state: &ClientState, checked: &mut bool) {
    let received_us = monotonic_us();
    let record = parse(text, received_us).filter(|record| {
        let ok = *checked || well_formed(text, record);
        *checked = true;
        ok
    });
    if let Some(record) = record {
        state.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(record);
        state.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The record of a delta frame, read straight from its text: the first `"id":` is the todo's
/// (the objects carry no other key named `id`), and the first title is the new one (`data` or
/// `newData`; `oldData` comes after it).
fn parse(text: &str, received_us: u64) -> Option<Record> {
    if !text.contains("\"type\":\"delta\"") {
        return None;
    }
    let id = number_after(text, "\"id\":")?;
    if text.contains("\"type\":\"delete\"") {
        return Some(Record { key: id, id, delete: true, received_us });
    }
    let key = number_after(text, "\"title\":\"s")?;
    Some(Record { key, id, delete: false, received_us })
}

/// Whether `text` is a delta frame whose object says what [`parse`] read from it.
fn well_formed(text: &str, record: &Record) -> bool {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let delta = &frame["message"]["delta"];
    let object = if delta["type"] == json!("update") { &delta["newData"] } else { &delta["data"] };
    let title = object["title"].as_str().and_then(|title| title.strip_prefix('s')?.parse::<u64>().ok());
    frame["service"] == json!("datasync")
        && frame["message"]["type"] == json!("delta")
        && delta["model"] == json!("Todo")
        && object["id"].as_u64() == Some(record.id)
        && (record.delete == (delta["type"] == json!("delete")))
        && (record.delete || title == Some(record.key))
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

// --- The report -----------------------------------------------------------------------------------

/// How a figure is read from an outcome.
type Measure<'a> = &'a dyn Fn(&Outcome) -> Option<Cell>;

fn record(sizes: &DjangoSizes, report: &mut Report, snorky: &[(&str, Outcome)], references: &[(Reference, Outcome)]) {
    let prefix = sizes.prefix();
    let rate = format_number(sizes.rate, 0);
    let latency = |outcome: &Outcome, p99: bool| {
        outcome.latency.as_ref().and_then(|s| s.latency).map(|l| Cell::number(if p99 { l.p99_ms } else { l.p50_ms }, 2))
    };
    let achieved = |outcome: &Outcome| outcome.latency.as_ref().map(|s| Cell::number(s.achieved, 0));
    let errors = |outcome: &Outcome| outcome.latency.as_ref().map(|s| Cell::text(s.errors()));
    let sustained = |outcome: &Outcome| Some(Cell::number(outcome.sustained.unwrap_or(0.0), 0).note(&outcome.stopped));
    let rss = |outcome: &Outcome| outcome.rss_kib.map(|kib| Cell::number(kib as f64 / 1024.0, 1));
    let db = |outcome: &Outcome| outcome.db_processes.map(|n| Cell::number(n as f64, 0));
    for (mode, outcome) in snorky {
        let at = format!("{prefix}, {rate} writes/s ({mode})");
        let rows: [(String, bool, Measure); 7] = [
            (format!("{at}: commit → delivery p50 (ms)"), true, &|o| latency(o, false)),
            (format!("{at}: commit → delivery p99 (ms)"), true, &|o| latency(o, true)),
            (format!("{at}: writes/s done"), false, &achieved),
            (format!("{at}: missing/dup/reordered"), false, &errors),
            (
                format!("{prefix} ({mode}): highest write rate with p99 ≤ {RAMP_P99_MS:.0} ms (writes/s)"),
                true,
                &sustained,
            ),
            (format!("{prefix} ({mode}): server RSS with the clients connected (MiB)"), true, &rss),
            (format!("{prefix} ({mode}): PostgreSQL processes with the clients connected"), true, &db),
        ];
        // Each Snorky mode's rows carry the references' figures beside it, for the ratios.
        for (metric, ratios, measure) in rows {
            let row = report.row_mut(&metric, ratios);
            if let Some(cell) = measure(outcome) {
                row.set(Kind::Snorky, cell);
            }
            for (reference, outcome) in references {
                if let Some(cell) = measure(outcome) {
                    row.set(reference.kind(), cell);
                }
            }
        }
        if !outcome.closes.is_empty() {
            report.notes.push(format!("django ({mode}): clients disconnected: {}", outcome.closes));
        }
        if let Some(step) = &outcome.latency {
            if step.unknown > 0 {
                report
                    .notes
                    .push(format!("django ({mode}): {} deliveries matched no write of their step", step.unknown));
            }
        }
    }
    for (reference, outcome) in references {
        let name = reference.name();
        if !outcome.closes.is_empty() {
            report.notes.push(format!("django ({name}): clients disconnected: {}", outcome.closes));
        }
        report.notes.push(match reference {
            Reference::Channels => "django: the channels column is the same workload on Django Channels 4 \
                 (channels_redis, uvicorn with one worker per core, post_save/post_delete receivers that group_send on \
                 commit); its RSS adds uvicorn's processes and redis-server."
                .into(),
            Reference::Eventstream => "django: the django-eventstream column is the same workload on \
                 django-eventstream 5 (Server-Sent Events; post_save/post_delete receivers that send_event on commit \
                 to the owner's channel and everyone's; EVENTSTREAM_REDIS carries the events from the writer \
                 processes to daphne, one process per core, the clients spread over them; no event storage); its \
                 RSS adds daphne's processes and redis-server; each open stream holds a PostgreSQL connection."
                .into(),
        });
    }
}

/// The targets of the scenario.
pub fn targets(report: &Report, sizes: &DjangoSizes) -> Vec<TargetLine> {
    let smoke = report.smoke;
    let value = |metric: &str, kind: Kind| {
        report
            .main
            .rows
            .iter()
            .find(|row| row.metric == metric)
            .and_then(|row| row.get(kind))
            .and_then(|cell| cell.value)
    };
    let mut lines = Vec::new();
    for (mode, limit) in [("outbox", 1.15), ("direct", 1.25), ("logical", 1.15)] {
        let ratios: Vec<(String, Option<f64>)> = ["save() of a new row", "save() of a changed row"]
            .into_iter()
            .map(|label| {
                let metric = format!("django {label} in a transaction ({mode}): @subscribable ÷ plain");
                (label.to_owned(), value(&metric, Kind::Snorky))
            })
            .collect();
        let measured: Vec<String> = ratios
            .iter()
            .map(|(label, ratio)| {
                format!("{label}: {}", ratio.map_or_else(|| "not measured".into(), |r| format!("{r:.2}×")))
            })
            .collect();
        lines.push(TargetLine {
            target: format!(
                "@subscribable adds ≤ {:.0}% to a single-row save() in a transaction ({mode})",
                (limit - 1.0) * 100.0
            ),
            measured: measured.join(", "),
            met: if smoke || ratios.iter().any(|(_, r)| r.is_none()) {
                None
            } else {
                Some(ratios.iter().all(|(_, r)| r.is_some_and(|r| r <= limit)))
            },
        });
    }
    let prefix = sizes.prefix();
    let rate = format_number(sizes.rate, 0);
    for mode in ["direct", "outbox", "logical"] {
        let metric = format!("{prefix}, {rate} writes/s ({mode}): commit → delivery p99 (ms)");
        let p99 = value(&metric, Kind::Snorky);
        lines.push(TargetLine {
            target: format!("django: commit → browser p99 ≤ 20 ms at 200 writes/s ({mode})"),
            measured: p99.map_or_else(|| "not measured".into(), |ms| format!("{ms:.2} ms")),
            met: if smoke { None } else { p99.map(|ms| ms <= 20.0) },
        });
        let channels = value(&metric, Kind::Channels);
        let lower = p99.zip(channels).map(|(snorky, channels)| channels / snorky.max(1e-9));
        lines.push(TargetLine {
            target: format!("django: p99 ≥ 10× lower than Channels at 200 writes/s ({mode})"),
            measured: lower.map_or_else(|| "not measured".into(), |r| format!("{r:.1}× lower")),
            met: if smoke { None } else { lower.map(|r| r >= 10.0) },
        });
        let metric = format!("{prefix} ({mode}): highest write rate with p99 ≤ {RAMP_P99_MS:.0} ms (writes/s)");
        let (snorky, channels) = (value(&metric, Kind::Snorky), value(&metric, Kind::Channels));
        let ratio = snorky.zip(channels).map(|(s, c)| s / c.max(1e-9));
        lines.push(TargetLine {
            target: format!("django: sustained write rate ≥ 10× Channels ({mode})"),
            measured: match (snorky, channels) {
                (Some(s), Some(c)) => format!("{} vs {} writes/s", format_number(s, 0), format_number(c, 0)),
                _ => "not measured".into(),
            },
            met: if smoke { None } else { ratio.map(|r| r >= 10.0) },
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_read_from_their_text() {
        let insert = r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"insert","model":"Todo","data":{"id":12,"title":"s345","done":false,"owner":3,"owner_name":"user00002"}}}}"#;
        let record = parse(insert, 7).expect("an insert");
        assert_eq!((record.key, record.id, record.delete, record.received_us), (345, 12, false, 7));
        assert!(well_formed(insert, &record));
        let update = r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"update","model":"Todo","newData":{"id":12,"title":"s346"},"oldData":{"id":12,"title":"s345"}}}}"#;
        let record = parse(update, 8).expect("an update");
        assert_eq!((record.key, record.id), (346, 12));
        assert!(well_formed(update, &record));
        let delete = r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"delete","model":"Todo","data":{"id":12,"title":"s346"}}}}"#;
        let record = parse(delete, 9).expect("a delete");
        assert!(record.delete && record.id == 12);
        assert!(well_formed(delete, &record));
        assert!(parse(r#"{"service":"datasync","message":{"type":"response","callId":1}}"#, 0).is_none());
        let wrong = Record { key: 1, ..record };
        assert!(!well_formed(insert, &wrong));
    }
}
