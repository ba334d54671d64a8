//! The SockJS scenario, against Snorky only: one `serve-snorky` process, two fan-outs in the
//! same run, then the memory of idle sessions and of expired ones.
//!
//! 1. WebSocket: `sessions` connections subscribe to one channel over `/ws`; `msgs` messages are
//!    published through the backend, at most `window` ahead of the slowest subscriber.
//! 2. The idle memory of SockJS sessions: live heap and RSS before and after opening `sessions`
//!    xhr-streaming sessions, each subscribed (through `xhr_send`) to the fan-out's channel.
//! 3. xhr-streaming: the same fan-out to those sessions. Each reads its streaming response as
//!    sockjs-client does, and opens the next one on the same keep-alive connection when the
//!    server ends a response at the response limit (128 KiB).
//! 4. Expiry: the SockJS clients go away without a word; once the disconnect delay has passed,
//!    the server's session gauges must be back to 0 and the live heap back to its level before.
//!
//! Deliveries are checked for loss, duplication and reordering as in the other scenarios, and
//! the server's CPU time per delivery is compared: the target is xhr-streaming ≤ 2× WebSocket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use super::common::{backend_client, cpu_per_delivery, http_get, wait_window};
use crate::client::{self, Clock, OpenOptions, SubResult, Subscribers};
use crate::procs::{Kind, ServerProcess};
use crate::report::{format_number, format_ratio, Cell, Report, TargetLine};
use crate::stats::Deliveries;
use crate::RunArgs;

const MESSAGE_SIZE: usize = 100;
const OPEN_MAX: Duration = Duration::from_secs(300);
const DRAIN_IDLE: Duration = Duration::from_secs(10);
const DRAIN_MAX: Duration = Duration::from_secs(120);
/// Bound on the wait for the abandoned sessions to close (the server's disconnect delay is 5 s).
const EXPIRY_MAX: Duration = Duration::from_secs(20);
/// A closed session serves its close frame for one more disconnect delay (5 s) before its state
/// is freed: the heap is measured after that, with a margin.
const FREED_AFTER: Duration = Duration::from_secs(7);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Sizes of the scenario.
#[derive(Debug, Clone)]
pub struct SockJsSizes {
    /// Subscribers of each fan-out (WebSocket connections, then xhr-streaming sessions).
    pub sessions: usize,
    /// Messages published in each fan-out.
    pub msgs: u64,
    pub window: u64,
    pub concurrency: usize,
}

impl SockJsSizes {
    /// The sizes from the command line (`--sockjs-sessions`, `--sockjs-msgs`).
    pub fn resolve(args: &RunArgs, window: u64, concurrency: usize) -> SockJsSizes {
        let (sessions, msgs) = if args.smoke { (5, 5) } else { (1000, 1000) };
        SockJsSizes {
            sessions: args.sockjs_sessions.unwrap_or(sessions),
            msgs: args.sockjs_msgs.unwrap_or(msgs),
            window,
            concurrency,
        }
    }

    fn prefix(&self) -> String {
        format!(
            "SockJS fan-out {} subs × {} msgs",
            format_number(self.sessions as f64, 0),
            format_number(self.msgs as f64, 0)
        )
    }
}

/// Runs the scenario on a server of its own.
pub async fn run(sizes: &SockJsSizes, clock: Clock, report: &mut Report) -> Result<(), String> {
    let server = ServerProcess::start_snorky_counted(&[]).await?;
    let outcome = run_on(sizes, clock, &server, report).await;
    server.stop().await;
    outcome
}

async fn run_on(sizes: &SockJsSizes, clock: Clock, server: &ServerProcess, report: &mut Report) -> Result<(), String> {
    let prefix = sizes.prefix();
    let addr = server.target.ws_addr;

    eprintln!("    WebSocket fan-out");
    let channels = Arc::new(vec![json!("sockjs-bench-ws")]);
    let options = OpenOptions { concurrency: sizes.concurrency, source_ips: 1, max_seq: sizes.msgs, record: true };
    let websockets = Subscribers::open(&server.target, &channels, &vec![0; sizes.sessions], clock, options);
    let (ready, failed) = websockets.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        websockets.finish().await;
        return Err(format!("no WebSocket subscriber connected ({failed} failed)"));
    }
    let everyone: Vec<usize> = (0..sizes.sessions).collect();
    let ws = fan_out(sizes, clock, server, &channels[0], |needed| wait_window(&websockets, &everyone, needed)).await?;
    websockets.wait_drained(ws.published * ready as u64, DRAIN_IDLE, Instant::now() + DRAIN_MAX).await;
    let ws = ws.finish(server, websockets.finish().await);
    record(report, &prefix, "WebSocket", &ws);

    eprintln!("    opening {} xhr-streaming sessions", sizes.sessions);
    let heap_before = server.alloc_snapshot().await;
    let rss_before = server.rss_kib();
    let channel = json!("sockjs-bench-xhr");
    let sessions = Sessions::open(addr, &channel, sizes, clock);
    let (ready, failed) = sessions.wait_ready(OPEN_MAX).await;
    if ready == 0 {
        sessions.finish().await;
        return Err(format!("no SockJS session subscribed ({failed} failed)"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heap_idle = server.alloc_snapshot().await;
    let rss_idle = server.rss_kib();
    record_memory(report, "SockJS idle: live heap B/session", heap_before.as_ref(), heap_idle.as_ref(), ready);
    if let (Some(before), Some(after)) = (rss_before, rss_idle) {
        let per_session = after.saturating_sub(before) as f64 / ready as f64;
        report.row_mut("SockJS idle: server RSS KiB/session", false).set(Kind::Snorky, Cell::number(per_session, 2));
    }

    eprintln!("    xhr-streaming fan-out");
    let wait = |needed| sessions.wait_window(needed);
    let xhr = fan_out(sizes, clock, server, &channel, wait).await?;
    sessions.wait_drained(xhr.published * ready as u64, DRAIN_IDLE, Instant::now() + DRAIN_MAX).await;
    let xhr = xhr.finish(server, sessions.finish().await);
    record(report, &prefix, "xhr-streaming", &xhr);
    if let (Some(ws_cpu), Some(xhr_cpu)) = (ws.server_cpu_us_per_delivery, xhr.server_cpu_us_per_delivery) {
        report
            .row_mut(&format!("{prefix}: server CPU xhr-streaming ÷ WebSocket"), false)
            .set(Kind::Snorky, Cell::number(xhr_cpu / ws_cpu, 2));
    }

    eprintln!("    waiting for the abandoned sessions to expire");
    let expired = wait_expired(server).await;
    tokio::time::sleep(FREED_AFTER).await;
    let heap_expired = server.alloc_snapshot().await;
    record_memory(
        report,
        "SockJS expired: live heap B/session left",
        heap_before.as_ref(),
        heap_expired.as_ref(),
        ready,
    );
    report.row_mut("SockJS expired: sessions left (gauges)", false).set(
        Kind::Snorky,
        Cell::text(
            expired
                .as_ref()
                .map_or_else(Clone::clone, |(sessions, conns)| format!("{sessions} sessions, {conns} conns")),
        ),
    );
    for (what, summary) in [("WebSocket", &ws), ("xhr-streaming", &xhr)] {
        if !summary.clean() {
            return Err(format!("{what} deliveries not clean: {}", summary.errors_text()));
        }
    }
    expired.map(|_| ())
}

/// One fan-out's publishing, before the subscribers are collected.
struct Publishing {
    published: u64,
    errors: u64,
    start: Instant,
    cpu_before: Option<Duration>,
    own_before: Option<Duration>,
}

impl Publishing {
    fn finish(self, server: &ServerProcess, results: Vec<SubResult>) -> Deliveries {
        let cpu_after = server.cpu_time();
        let own_after = crate::sys::cpu_time(std::process::id());
        let mut summary = Deliveries::summarize(results, &[self.published], self.errors, self.start);
        summary.server_cpu_us_per_delivery = cpu_per_delivery(self.cpu_before, cpu_after, summary.received);
        summary.client_cpu_us_per_delivery = cpu_per_delivery(self.own_before, own_after, summary.received);
        summary
    }
}

async fn fan_out<W, F>(
    sizes: &SockJsSizes,
    clock: Clock,
    server: &ServerProcess,
    channel: &Value,
    wait: W,
) -> Result<Publishing, String>
where
    W: Fn(u64) -> F,
    F: std::future::Future<Output = bool>,
{
    let backend = backend_client(&server.target)?;
    let mut published = Publishing {
        published: 0,
        errors: 0,
        start: Instant::now(),
        cpu_before: server.cpu_time(),
        own_before: crate::sys::cpu_time(std::process::id()),
    };
    for seq in 0..sizes.msgs {
        if seq >= sizes.window && !wait(seq + 1 - sizes.window).await {
            eprintln!("    subscribers stopped making progress at {seq}");
            break;
        }
        let params = client::publish_params(channel, client::payload(seq, clock.micros(), MESSAGE_SIZE));
        match backend.call("pubsub_backend", "publish", &params).await {
            Ok(_) => published.published += 1,
            Err(_) => published.errors += 1,
        }
    }
    Ok(published)
}

fn record(report: &mut Report, prefix: &str, transport: &str, summary: &Deliveries) {
    let row = |what: &str| format!("{prefix}: {transport} {what}");
    report.row_mut(&row("deliveries/s"), false).set(Kind::Snorky, Cell::number(summary.per_second, 0));
    report.row_mut(&row("missing/dup/reordered"), false).set(Kind::Snorky, Cell::text(summary.errors_text()));
    if let Some(cpu) = summary.server_cpu_us_per_delivery {
        report.row_mut(&row("server CPU µs/delivery"), false).set(Kind::Snorky, Cell::number(cpu, 2));
    }
    if let Some(latency) = summary.latency {
        report.row_mut(&row("latency p50 (ms)"), false).set(Kind::Snorky, Cell::number(latency.p50_ms, 2));
        report.row_mut(&row("latency p99 (ms)"), false).set(Kind::Snorky, Cell::number(latency.p99_ms, 2));
    }
    if !summary.close_reasons.is_empty() {
        report.notes.push(format!("{prefix} / {transport}: {}", summary.close_reasons.join("; ")));
    }
    eprintln!(
        "    {transport}: {} deliveries = {}/s, server CPU {:.2} µs/delivery, errors {}",
        summary.received,
        format_number(summary.per_second, 0),
        summary.server_cpu_us_per_delivery.unwrap_or(0.0),
        summary.errors_text()
    );
}

type Snapshot = (i64, Vec<crate::alloc::Bucket>);

fn record_memory(report: &mut Report, metric: &str, before: Option<&Snapshot>, after: Option<&Snapshot>, n: usize) {
    let (Some((_, before)), Some((_, after))) = (before, after) else {
        report.notes.push(format!("{metric}: no heap snapshot"));
        return;
    };
    let (bytes, count, top) = crate::alloc::per_connection(before, after, n);
    report.row_mut(metric, false).set(Kind::Snorky, Cell::number(bytes, 0));
    report.notes.push(format!("{metric}: {bytes:.0} B in {count:.1} allocations; largest: {top}"));
    eprintln!("    {metric}: {bytes:.0} B in {count:.1} allocations");
}

/// Waits until the server's SockJS session gauge and connection gauge are 0.
async fn wait_expired(server: &ServerProcess) -> Result<(i64, i64), String> {
    let metrics = server.target.backend_url.replace("/backend", "/metrics");
    let deadline = Instant::now() + EXPIRY_MAX;
    loop {
        let text = http_get(&metrics).await?;
        let gauge = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse::<i64>().ok()))
                .unwrap_or(-1)
        };
        let (sessions, connections) = (gauge("snorky_sockjs_sessions "), gauge("snorky_connections "));
        if sessions == 0 && connections == 0 {
            return Ok((sessions, connections));
        }
        if Instant::now() > deadline {
            return Err(format!("{sessions} SockJS sessions and {connections} connections left after {EXPIRY_MAX:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The scenario's target lines (for the targets table).
pub fn targets(report: &Report, sizes: &SockJsSizes) -> Vec<TargetLine> {
    let prefix = sizes.prefix();
    let value = |metric: &str| report.main.find(|m| m == metric).and_then(|row| row.get(Kind::Snorky));
    let ratio = value(&format!("{prefix}: server CPU xhr-streaming ÷ WebSocket")).and_then(|cell| cell.value);
    let errors: Vec<String> = ["WebSocket", "xhr-streaming"]
        .iter()
        .filter_map(|transport| {
            let metric = format!("{prefix}: {transport} missing/dup/reordered");
            report.main.find(|m| m == metric).and_then(|row| row.text(Kind::Snorky))
        })
        .collect();
    vec![
        TargetLine {
            target: "SockJS: xhr-streaming server CPU per delivery ≤ 2× WebSocket's".into(),
            measured: ratio.map_or_else(|| "not measured".into(), |r| format!("{}×", format_ratio(r))),
            met: if report.smoke { None } else { ratio.map(|r| r <= 2.0) },
        },
        TargetLine {
            target: "SockJS: 0 missing, duplicated, reordered (both transports)".into(),
            met: if report.smoke || errors.len() < 2 { None } else { Some(errors.iter().all(|e| e == "0/0/0")) },
            measured: if errors.is_empty() { "not measured".into() } else { errors.join(", ") },
        },
    ]
}

/// xhr-streaming sessions, each read by its own task as sockjs-client would.
struct Sessions {
    progress: Arc<Vec<AtomicU64>>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<SubResult>>,
}

impl Sessions {
    fn open(addr: SocketAddr, channel: &Value, sizes: &SockJsSizes, clock: Clock) -> Sessions {
        let progress = Arc::new((0..sizes.sessions).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(sizes.concurrency.max(1)));
        let tasks = (0..sizes.sessions)
            .map(|index| {
                let session = SessionTask {
                    addr,
                    path: format!("/sockjs/000/bench{index:06}"),
                    channel: channel.clone(),
                    index,
                    progress: Arc::clone(&progress),
                    clock,
                    max_seq: sizes.msgs,
                };
                let (ready, failed, gate, mut stop) =
                    (Arc::clone(&ready), Arc::clone(&failed), Arc::clone(&gate), stop_rx.clone());
                tokio::spawn(async move {
                    let permit = gate.acquire().await;
                    let opened = session.open().await;
                    drop(permit);
                    match opened {
                        Ok(stream) => {
                            ready.fetch_add(1, Ordering::Relaxed);
                            session.receive(stream, &mut stop).await
                        }
                        Err(err) => {
                            session.progress[index].store(u64::MAX, Ordering::Relaxed);
                            failed.fetch_add(1, Ordering::Relaxed);
                            SubResult { setup_error: Some(err), ..SubResult::default() }
                        }
                    }
                })
            })
            .collect();
        Sessions { progress, ready, failed, stop, tasks }
    }

    async fn wait_ready(&self, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let (ready, failed) = (self.ready.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
            if ready + failed >= self.tasks.len() || Instant::now() > deadline {
                return (ready, failed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn min_progress(&self) -> u64 {
        self.progress.iter().map(|p| p.load(Ordering::Relaxed)).min().unwrap_or(u64::MAX)
    }

    fn total(&self) -> u64 {
        self.progress.iter().map(|p| p.load(Ordering::Relaxed)).filter(|p| *p != u64::MAX).sum()
    }

    /// Waits until every session has `needed` deliveries; false when none came for a while.
    async fn wait_window(&self, needed: u64) -> bool {
        let (mut last, mut since) = (self.min_progress(), Instant::now());
        loop {
            let min = self.min_progress();
            if min >= needed {
                return true;
            }
            if min != last {
                (last, since) = (min, Instant::now());
            } else if since.elapsed() > DRAIN_IDLE {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    async fn wait_drained(&self, expected: u64, idle: Duration, deadline: Instant) {
        let (mut last, mut since) = (self.total(), Instant::now());
        while self.total() < expected && since.elapsed() < idle && Instant::now() < deadline {
            let total = self.total();
            if total != last {
                (last, since) = (total, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops every session's reader: each drops its connections without a word (a client that
    /// went away), and returns what it saw.
    async fn finish(self) -> Vec<SubResult> {
        let _ = self.stop.send(true);
        let mut results = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match tokio::time::timeout(IO_TIMEOUT, task).await {
                Ok(Ok(result)) => results.push(result),
                _ => results.push(SubResult { closed: Some("did not stop".into()), ..SubResult::default() }),
            }
        }
        results
    }
}

/// One session's client.
struct SessionTask {
    addr: SocketAddr,
    path: String,
    channel: Value,
    index: usize,
    progress: Arc<Vec<AtomicU64>>,
    clock: Clock,
    max_seq: u64,
}

type Reader = BufReader<TcpStream>;

impl SessionTask {
    /// Opens the streaming response, reads the open frame, and subscribes through `xhr_send`.
    async fn open(&self) -> Result<Reader, String> {
        let io = async {
            let mut stream = self.streaming_request(None).await?;
            let mut lines = String::new();
            while !lines.contains("o\n") {
                let chunk = read_chunk(&mut stream).await?.ok_or("the response ended before the open frame")?;
                lines.push_str(&String::from_utf8_lossy(&chunk));
            }
            let subscribe = json!({"service": "pubsub", "message": {
                "command": "subscribe", "params": {"channel": self.channel}, "callId": 1}});
            let body = serde_json::to_string(&[subscribe.to_string()]).map_err(|err| err.to_string())?;
            self.send(&body).await?;
            let mut text = String::new();
            while !text.contains("response") {
                let chunk = read_chunk(&mut stream).await?.ok_or("the response ended before the reply")?;
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            Ok(stream)
        };
        tokio::time::timeout(IO_TIMEOUT, io).await.map_err(|_| "opening the session timed out".to_owned())?
    }

    /// `POST .../xhr_streaming` (on `reuse`, a keep-alive connection, when given); returns the
    /// reader after the response head and the prelude.
    async fn streaming_request(&self, reuse: Option<Reader>) -> Result<Reader, String> {
        let mut stream = match reuse {
            Some(stream) => stream,
            None => BufReader::new(TcpStream::connect(self.addr).await.map_err(|err| err.to_string())?),
        };
        let request =
            format!("POST {}/xhr_streaming HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n", self.path, self.addr);
        stream.get_mut().write_all(request.as_bytes()).await.map_err(|err| err.to_string())?;
        let head = read_head(&mut stream).await?;
        if !head.starts_with("HTTP/1.1 200") || !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            return Err(format!("unexpected response: {}", head.lines().next().unwrap_or_default()));
        }
        let prelude = read_chunk(&mut stream).await?.ok_or("no prelude")?;
        if prelude.len() != 2049 {
            return Err(format!("a prelude of {} bytes", prelude.len()));
        }
        Ok(stream)
    }

    /// `POST .../xhr_send` with `body` on a connection of its own.
    async fn send(&self, body: &str) -> Result<(), String> {
        let mut stream = TcpStream::connect(self.addr).await.map_err(|err| err.to_string())?;
        let request = format!(
            "POST {}/xhr_send HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(|err| err.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(|err| err.to_string())?;
        if answer.starts_with(b"HTTP/1.1 204") {
            Ok(())
        } else {
            Err(format!("xhr_send: {}", String::from_utf8_lossy(&answer).lines().next().unwrap_or_default()))
        }
    }

    /// Reads deliveries until told to stop, opening the next streaming response whenever the
    /// server ends one.
    async fn receive(&self, mut stream: Reader, stop: &mut watch::Receiver<bool>) -> SubResult {
        let mut result = SubResult::default();
        let mut seen = vec![0u64; usize::try_from(self.max_seq / 64 + 1).unwrap_or(1)];
        let mut highest: Option<u64> = None;
        let mut pending = String::new();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = stop.changed() => break,
                chunk = read_chunk(&mut stream) => chunk,
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                // The response reached its limit: the next one, on the same connection.
                Ok(None) => match self.streaming_request(Some(stream)).await {
                    Ok(next) => {
                        stream = next;
                        continue;
                    }
                    Err(err) => {
                        result.closed = Some(format!("reopening: {err}"));
                        break;
                    }
                },
                Err(err) => {
                    result.closed = Some(err);
                    break;
                }
            };
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let frame: String = pending.drain(..=end).collect();
                self.frame(frame.trim_end(), &mut result, &mut seen, &mut highest);
            }
        }
        result
    }

    fn frame(&self, frame: &str, result: &mut SubResult, seen: &mut [u64], highest: &mut Option<u64>) {
        if let Some(close) = frame.strip_prefix('c') {
            result.closed = Some(format!("closed: {close}"));
            return;
        }
        let Some(array) = frame.strip_prefix('a') else { return };
        let Ok(messages) = serde_json::from_str::<Vec<String>>(array) else {
            result.malformed += 1;
            return;
        };
        let now = self.clock.micros();
        for message in messages {
            let (Some(seq), Some(ts)) = (number_after(&message, "\"seq\":"), number_after(&message, "\"ts\":")) else {
                result.malformed += 1;
                continue;
            };
            result.received += 1;
            let (word, bit) = (usize::try_from(seq / 64).unwrap_or(usize::MAX), 1u64 << (seq % 64));
            match seen.get_mut(word) {
                Some(slot) if *slot & bit != 0 => result.duplicated += 1,
                Some(slot) => {
                    *slot |= bit;
                    result.unique += 1;
                    if highest.is_some_and(|high| seq < high) {
                        result.reordered += 1;
                    }
                    *highest = Some(highest.map_or(seq, |high| high.max(seq)));
                }
                None => result.malformed += 1,
            }
            result.latencies.push(u32::try_from(now.saturating_sub(ts)).unwrap_or(u32::MAX));
            result.last_delivery = Some(Instant::now());
        }
        self.progress[self.index].store(result.unique, Ordering::Relaxed);
    }
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn read_head(stream: &mut Reader) -> Result<String, String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = stream.read_line(&mut line).await.map_err(|err| err.to_string())?;
        if read == 0 {
            return Err("the connection closed in the response head".into());
        }
        if line == "\r\n" {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

/// The next chunk of a chunked body; `None` at its end.
async fn read_chunk(stream: &mut Reader) -> Result<Option<Vec<u8>>, String> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.map_err(|err| err.to_string())? == 0 {
        return Err("the connection closed".into());
    }
    let size = usize::from_str_radix(line.trim_end(), 16).map_err(|_| format!("bad chunk size {line:?}"))?;
    let mut data = vec![0; size + 2];
    stream.read_exact(&mut data).await.map_err(|err| err.to_string())?;
    data.truncate(size);
    Ok((size > 0).then_some(data))
}
