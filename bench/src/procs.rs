//! Starting and stopping the servers under test, each in its own process.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Target;

/// A kind of server the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The minimal reference (`serve-ceiling`).
    Ceiling,
    /// Snorky (`serve-snorky`).
    Snorky,
    /// Django Channels under daphne.
    Channels,
    /// django-eventstream (Server-Sent Events) under daphne: measured by the `django` scenario
    /// only, which starts it itself.
    Eventstream,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling",
            Kind::Snorky => "snorky",
            Kind::Channels => "channels",
            Kind::Eventstream => "eventstream",
        }
    }

    pub fn parse(name: &str) -> Result<Kind, String> {
        match name.trim() {
            "ceiling" => Ok(Kind::Ceiling),
            "snorky" => Ok(Kind::Snorky),
            "channels" => Ok(Kind::Channels),
            "eventstream" => Ok(Kind::Eventstream),
            other => Err(format!("unknown server kind {other:?} (ceiling, snorky, channels, eventstream)")),
        }
    }
}

/// How the `cluster` scenario deploys PubSub: the columns of its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// One Snorky process, no broker: every subscriber on it, publishes through its backend.
    Single,
    /// Three Snorky processes on one Redis: subscribers on two, publishes through the third.
    Cluster,
    /// Three Django Channels processes (daphne) on the same Redis, with `channels_redis`'s
    /// `RedisPubSubChannelLayer`, laid out like the cluster.
    ChannelsRedis,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Single => "1 node",
            Setup::Cluster => "cluster",
            Setup::ChannelsRedis => "channels_redis",
        }
    }
}

/// Where to find the Channels reference.
#[derive(Debug, Clone)]
pub struct ChannelsSetup {
    pub venv: PathBuf,
    pub project: PathBuf,
}

impl ChannelsSetup {
    pub fn daphne(&self) -> PathBuf {
        absolute(&self.venv.join("bin").join("daphne"))
    }

    pub fn installed(&self) -> bool {
        self.daphne().is_file() && self.project.join("channels_ref").join("asgi.py").is_file()
    }

    /// Whether the venv also has `channels_redis` (a venv made before it was required has not).
    pub async fn has_redis_layer(&self) -> bool {
        let python = absolute(&self.venv.join("bin").join("python"));
        let status = Command::new(python)
            .args(["-c", "import channels_redis.pubsub"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        status.is_ok_and(|status| status.success())
    }
}

/// A running server process.
pub struct ServerProcess {
    pub kind: Kind,
    pub target: Target,
    child: Child,
    pid: u32,
    /// `ALLOC` lines the server printed (servers started with `--alloc-stats`).
    alloc_lines: Option<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl ServerProcess {
    /// Starts a server of `kind` and waits until it accepts connections.
    /// With `alloc_stats`, the Rust servers count their heap allocations (see `alloc.rs`).
    pub async fn start(kind: Kind, channels: &ChannelsSetup, alloc_stats: bool) -> Result<ServerProcess, String> {
        match kind {
            Kind::Ceiling => Self::start_rust(kind, "serve-ceiling", alloc_stats).await,
            Kind::Snorky => Self::start_rust(kind, "serve-snorky", alloc_stats).await,
            Kind::Channels => Self::start_channels(channels, None).await,
            Kind::Eventstream => Err("django-eventstream runs in the django scenario only".into()),
        }
    }

    async fn start_rust(kind: Kind, subcommand: &str, alloc_stats: bool) -> Result<ServerProcess, String> {
        Self::start_rust_with(kind, subcommand, alloc_stats, &[]).await
    }

    /// Starts `serve-snorky` with extra options (`--mode datasync`, `--token-secret ...`).
    pub async fn start_snorky_with(extra: &[&str]) -> Result<ServerProcess, String> {
        Self::start_rust_with(Kind::Snorky, "serve-snorky", false, extra).await
    }

    /// Starts `serve-snorky` with extra options, counting its heap allocations (for
    /// [`ServerProcess::alloc_snapshot`]).
    pub async fn start_snorky_counted(extra: &[&str]) -> Result<ServerProcess, String> {
        Self::start_rust_with(Kind::Snorky, "serve-snorky", true, extra).await
    }

    async fn start_rust_with(
        kind: Kind,
        subcommand: &str,
        alloc_stats: bool,
        extra: &[&str],
    ) -> Result<ServerProcess, String> {
        let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
        let mut command = Command::new(exe);
        command
            .arg(subcommand)
            .args(["--frontend", "127.0.0.1:0", "--backend", "127.0.0.1:0", "--key", crate::KEY])
            .args(alloc_stats.then_some("--alloc-stats"))
            .args(extra);
        Self::spawn_ready(kind, command, subcommand, alloc_stats).await
    }

    /// Starts Snorky inside Python (`python -c script`): the script builds the server with the
    /// `snorky` package and prints the same `READY` line.
    pub async fn start_python(python: &Path, script: &str) -> Result<ServerProcess, String> {
        let mut command = Command::new(absolute(python));
        command.args(["-c", script]).env("SNORKY_BENCH_KEY", crate::KEY).env("PYTHONDONTWRITEBYTECODE", "1");
        Self::spawn_ready(Kind::Snorky, command, "the Python server", false).await
    }

    /// Spawns `command` (a server printing `READY ws=... backend=...`) and waits for that line.
    async fn spawn_ready(
        kind: Kind,
        mut command: Command,
        subcommand: &str,
        alloc_stats: bool,
    ) -> Result<ServerProcess, String> {
        die_with_parent(&mut command);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot start {subcommand}: {err}"))?;
        let pid = child.id().ok_or("server exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("READY ") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("{subcommand} did not become ready"))?;
        // Keep draining stdout so the server never blocks on a full pipe.
        let (alloc_tx, alloc_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("ALLOC ") {
                    let _ = alloc_tx.send(line);
                }
            }
        });
        let mut ws_url = None;
        let mut backend_url = None;
        for word in line.split_whitespace() {
            if let Some(url) = word.strip_prefix("ws=") {
                ws_url = Some(url.to_owned());
            } else if let Some(url) = word.strip_prefix("backend=") {
                backend_url = Some(url.to_owned());
            }
        }
        let (Some(ws_url), Some(backend_url)) = (ws_url, backend_url) else {
            return Err(format!("bad READY line {line:?}"));
        };
        let target = Target::new(&ws_url, &backend_url)?;
        let alloc_lines = alloc_stats.then(|| tokio::sync::Mutex::new(alloc_rx));
        Ok(ServerProcess { kind, target, child, pid, alloc_lines })
    }

    /// Starts daphne serving the Channels reference; with `redis_url`, its channel layer is
    /// `channels_redis`'s `RedisPubSubChannelLayer` on that Redis instead of the in-memory one.
    pub async fn start_channels(setup: &ChannelsSetup, redis_url: Option<&str>) -> Result<ServerProcess, String> {
        if !setup.installed() {
            return Err(format!(
                "the Channels reference is not installed ({} missing): run bench/run.sh",
                setup.daphne().display()
            ));
        }
        let port = free_port()?;
        let endpoint = format!("tcp:port={port}:interface=127.0.0.1:backlog=4096");
        let mut command = Command::new(setup.daphne());
        die_with_parent(&mut command);
        let child = command
            .args(["-e", &endpoint, "-v", "0", "channels_ref.asgi:application"])
            .current_dir(absolute(&setup.project))
            .env("DJANGO_SETTINGS_MODULE", "channels_ref.settings")
            .env("SNORKY_BENCH_KEY", crate::KEY)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("SNORKY_BENCH_REDIS", redis_url.unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot start daphne: {err}"))?;
        let pid = child.id().ok_or("daphne exited at once")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err("daphne did not start listening".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let target = Target::new(&format!("ws://{addr}/ws"), &format!("http://{addr}/backend"))?;
        Ok(ServerProcess { kind: Kind::Channels, target, child, pid, alloc_lines: None })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::sys::rss_kib(self.pid)
    }

    /// Asks a server started with `alloc_stats` for its live-heap snapshot: (alive tasks,
    /// buckets).
    pub async fn alloc_snapshot(&self) -> Option<(i64, Vec<crate::alloc::Bucket>)> {
        let mut lines = self.alloc_lines.as_ref()?.lock().await;
        while lines.try_recv().is_ok() {}
        crate::sys::signal_usr1(self.pid);
        let line = tokio::time::timeout(Duration::from_secs(5), lines.recv()).await.ok()??;
        crate::alloc::parse(&line)
    }

    /// The server's CPU time so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        crate::sys::cpu_time(self.pid)
    }

    /// Asks the server to stop (stdin closed and SIGTERM), waits a little, then kills it.
    pub async fn stop(mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("    the {} server had already exited: {status}", self.kind.name());
        }
        drop(self.child.stdin.take());
        crate::sys::terminate(self.pid);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// A `redis-server` of the benchmark's own (Debian's package): a free loopback port, a temporary
/// directory, no persistence; stopped with [`RedisProcess::stop`] (or killed when dropped).
pub struct RedisProcess {
    /// `redis://127.0.0.1:<port>/0`.
    pub url: String,
    /// CPU seconds it spends per second with nothing to do (see [`RedisProcess::measure_idle`]).
    pub idle_cpu: f64,
    port: u16,
    child: Child,
    pid: u32,
    dir: PathBuf,
}

impl RedisProcess {
    /// Starts it and waits until it accepts connections (it says so on stdout).
    pub async fn start() -> Result<RedisProcess, String> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("snorky-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "notice", "--dir"])
            .arg(&dir);
        die_with_parent(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot start redis-server (scripts/setup installs Debian's): {err}"))?;
        let pid = child.id().ok_or("redis-server exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !ready {
            return Err(format!("redis-server did not become ready on port {port}"));
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(RedisProcess { url: format!("redis://127.0.0.1:{port}/0"), idle_cpu: 0.0, port, child, pid, dir })
    }

    /// Its CPU time so far (user + system, all threads), as it reports it (`INFO cpu`, through
    /// `redis-cli`): microsecond precision, where `/proc/<pid>/stat` counts 10 ms ticks, too coarse
    /// for the few milliseconds Redis spends on a whole fan-out.
    pub async fn cpu_time(&self) -> Option<Duration> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "INFO", "cpu"])
            .stdin(Stdio::null())
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let seconds = |field: &str| -> Option<f64> {
            text.lines().find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':')?.parse().ok())
        };
        let total = seconds("used_cpu_user")? + seconds("used_cpu_sys")?;
        Duration::try_from_secs_f64(total).ok()
    }

    /// Measures its CPU time over `window` with no traffic (its own timers, the nodes'
    /// liveness refreshes) into [`idle_cpu`](Self::idle_cpu), so that a measurement can leave
    /// it out.
    pub async fn measure_idle(&mut self, window: Duration) {
        let before = self.cpu_time().await;
        let start = std::time::Instant::now();
        tokio::time::sleep(window).await;
        let after = self.cpu_time().await;
        let spent = before.zip(after).and_then(|(before, after)| after.checked_sub(before));
        self.idle_cpu = spent.map_or(0.0, |spent| spent.as_secs_f64() / start.elapsed().as_secs_f64());
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s); dropping it removes its directory.
    pub async fn stop(mut self) {
        crate::sys::terminate(self.pid);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes the child get SIGTERM if the load generator dies without stopping it.
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

fn free_port() -> Result<u16, String> {
    let listener = StdListener::bind("127.0.0.1:0").map_err(|err| format!("no free port: {err}"))?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

/// Resolves `path` against the current directory (for messages).
pub fn absolute(path: &Path) -> PathBuf {
    std::env::current_dir().map_or_else(|_| path.to_owned(), |dir| dir.join(path))
}
