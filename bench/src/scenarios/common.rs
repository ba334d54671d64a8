//! What the PubSub scenarios share: the publish size, the drain and window waits, the backend
//! client, and how a delivery scenario records its rows and judges its deliveries.

use std::time::{Duration, Instant};

use snorky::backend_client::BackendClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{Subscribers, Target};
use crate::procs::{Kind, RedisProcess, ServerProcess};
use crate::report::{format_number, Cell, Column, Report, Table};
use crate::stats::Deliveries;
use crate::sys;

/// Size of the `message` of every publish, in bytes of JSON.
pub(super) const MESSAGE_SIZE: usize = 100;
/// How long the drain after the last publish may go without progress before giving up.
pub(super) const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// Channels delivers one publish to 5,000 subscribers in tens of seconds: give it longer.
pub(super) const DRAIN_IDLE_CHANNELS: Duration = Duration::from_secs(60);

pub(super) fn drain_idle(kind: Kind) -> Duration {
    if kind == Kind::Channels {
        DRAIN_IDLE_CHANNELS
    } else {
        DRAIN_IDLE
    }
}
/// How long the drain may take at most.
pub(super) const DRAIN_MAX: Duration = Duration::from_secs(120);
/// How long opening all subscribers may take at most.
pub(super) const OPEN_MAX: Duration = Duration::from_secs(600);
/// How long a publisher waits for the slowest subscriber before giving up.
pub(super) const WINDOW_WAIT_MAX: Duration = Duration::from_secs(30);

/// Where a delivery scenario's load goes: the servers the subscribers connect to, the backend
/// that publishes, and the processes whose CPU time is measured.
pub(super) struct Load<'a> {
    /// Subscribers are spread evenly over these (with one, all are on it).
    pub(super) subscribe: &'a [Target],
    /// The backend the publishes go through.
    pub(super) publish: &'a Target,
    /// Every server process (their CPU times are added up).
    pub(super) server_pids: Vec<u32>,
    /// The broker, if any.
    pub(super) broker: Option<&'a RedisProcess>,
    /// What serves: how long a drain may wait without progress depends on it.
    pub(super) kind: Kind,
}

impl Load<'_> {
    /// The load on one server: subscribers and publishes on it.
    pub(super) fn on(server: &ServerProcess) -> Load<'_> {
        Load {
            subscribe: std::slice::from_ref(&server.target),
            publish: &server.target,
            server_pids: vec![server.pid()],
            broker: None,
            kind: server.kind,
        }
    }

    /// The CPU clocks of its processes and of the load generator, now.
    pub(super) async fn cpu_mark(&self) -> CpuMark {
        let broker = match self.broker {
            Some(redis) => redis.cpu_time().await,
            None => None,
        };
        CpuMark {
            server: self.server_pids.iter().map(|pid| sys::cpu_time(*pid)).sum(),
            broker,
            broker_idle: self.broker.map_or(0.0, |redis| redis.idle_cpu),
            own: sys::cpu_time(std::process::id()),
            at: Instant::now(),
        }
    }
}

/// A backend client for `target` with the benchmark's key.
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
pub(super) fn size_note(kind: Kind, size: usize, full: usize, what: &str) -> String {
    if kind == Kind::Channels && size != full {
        format!("{} {what}", format_number(size as f64, 0))
    } else {
        String::new()
    }
}

/// Records the rows every delivery scenario has, in the table of `column`.
pub(super) fn record_deliveries<C: Column>(
    report: &mut Report,
    column: C,
    prefix: &str,
    summary: &Deliveries,
    note: &str,
) {
    let mut rate = Cell::number(summary.per_second, 0).note(note);
    if summary.budget_hit {
        rate = rate.note("publishing stopped at the time budget");
    }
    let table = C::table_mut(report);
    table.row_mut(&format!("{prefix}: deliveries/s"), true).set(column, rate);
    if let Some(latency) = summary.latency {
        table.row_mut(&format!("{prefix}: latency p50 (ms)"), true).set(column, Cell::number(latency.p50_ms, 2));
        table.row_mut(&format!("{prefix}: latency p99 (ms)"), true).set(column, Cell::number(latency.p99_ms, 2));
    }
    table.row_mut(&format!("{prefix}: missing/dup/reordered"), false).set(column, Cell::text(summary.errors_text()));
    record_cpu(table, column, prefix, summary);
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix} / {}: {}", column.header(), summary.close_reasons.join("; ")));
    }
    print_summary(summary);
}

/// Records the CPU rows of a delivery scenario: the server's, the load generator's and, with a
/// broker, Redis's.
pub(super) fn record_cpu<C: Column>(table: &mut Table<C>, column: C, prefix: &str, summary: &Deliveries) {
    let rows = [
        ("server CPU µs/delivery", summary.server_cpu_us_per_delivery, 2),
        ("load generator CPU µs/delivery", summary.client_cpu_us_per_delivery, 2),
        ("Redis CPU µs/publish", summary.broker_cpu_us_per_publish, 2),
        ("Redis CPU µs/delivery", summary.broker_cpu_us_per_delivery, 3),
    ];
    for (name, value, decimals) in rows {
        if let Some(value) = value {
            table.row_mut(&format!("{prefix}: {name}"), true).set(column, Cell::number(value, decimals));
        }
    }
}

/// Prints a delivery scenario's outcome on one line.
pub(super) fn print_summary(summary: &Deliveries) {
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

pub(super) fn check_clean(kind: Kind, summary: &Deliveries) -> Result<(), String> {
    if kind != Kind::Channels && !summary.clean() {
        return Err(format!("deliveries not clean: {}", summary.errors_text()));
    }
    Ok(())
}

/// The CPU time the server (all its processes), the broker and the load generator had used at
/// one moment.
pub(super) struct CpuMark {
    server: Option<Duration>,
    broker: Option<Duration>,
    /// The broker's idle CPU seconds per second, left out of what it is charged.
    broker_idle: f64,
    own: Option<Duration>,
    at: Instant,
}

impl CpuMark {
    /// Sets the per-delivery (and, with a broker, per-publish) CPU figures of `summary` from
    /// this mark to `after`.
    pub(super) fn charge(&self, after: &CpuMark, summary: &mut Deliveries) {
        summary.server_cpu_us_per_delivery = cpu_per_delivery(self.server, after.server, summary.received);
        summary.client_cpu_us_per_delivery = cpu_per_delivery(self.own, after.own, summary.received);
        let idle = Duration::try_from_secs_f64(self.broker_idle * after.at.duration_since(self.at).as_secs_f64())
            .unwrap_or_default();
        let broker_after = after.broker.map(|spent| spent.saturating_sub(idle));
        summary.broker_cpu_us_per_publish = cpu_per_delivery(self.broker, broker_after, summary.published);
        summary.broker_cpu_us_per_delivery = cpu_per_delivery(self.broker, broker_after, summary.received);
    }
}

/// Server CPU microseconds per counted unit (delivery, request) between two readings.
pub(crate) fn cpu_per_delivery(before: Option<Duration>, after: Option<Duration>, deliveries: u64) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    (deliveries > 0).then(|| spent.as_secs_f64() * 1e6 / deliveries as f64)
}

/// How long a plain HTTP `GET` may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A plain `GET`, answered in full (the server's `/metrics`).
pub(super) async fn http_get(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http URL: {url}"))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let io = async {
        let mut stream = TcpStream::connect(host).await.map_err(|err| err.to_string())?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|err| err.to_string())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.map_err(|err| err.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(HTTP_TIMEOUT, io).await.map_err(|_| format!("GET {url} timed out"))??;
    answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).ok_or_else(|| "no HTTP body".into())
}
