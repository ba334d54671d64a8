//! The processes of the django scenario: a PostgreSQL cluster created for the run (`initdb` and
//! `postgres` from Debian's package, in a temporary directory, as the `postgres` user when the
//! bench runs as root, since PostgreSQL refuses root), a `redis-server` for the Channels layer,
//! and the Python steps (`bench/django/driver.py`, `manage.py snorky`, uvicorn).
//!
//! Every child gets `PR_SET_PDEATHSIG`, so none outlives the load generator, and listens on
//! 127.0.0.1 only.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// `CLOCK_MONOTONIC` in microseconds: the clock the Python writers stamp commits with
/// (`time.monotonic_ns()`), shared by every process of the machine.
pub fn monotonic_us() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the struct we pass.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now);
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000
}

/// A free loopback port (bound then released: the child binds it right after).
pub fn free_port() -> Result<u16, String> {
    let listener = StdListener::bind("127.0.0.1:0").map_err(|err| format!("no free port: {err}"))?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

/// A command whose process gets SIGTERM (`signal`) when the load generator dies; run as
/// `user` (uid, gid) when given.
pub fn command(program: &Path, user: Option<(u32, u32)>, signal: i32) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    // SAFETY: the closure runs between fork and exec (after the uid change, which would clear
    // the setting) and only calls prctl(2), which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
    command.kill_on_drop(true);
    command
}

/// Runs `command` to its end within `timeout`; returns its stdout, or an error with its stderr.
pub async fn run_to_end(mut command: Command, what: &str, timeout: Duration) -> Result<String, String> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().map_err(|err| format!("cannot start {what}: {err}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} did not finish within {} s", timeout.as_secs()))?
        .map_err(|err| format!("{what}: {err}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what} failed ({}):\n{}", output.status, tail.join("\n")));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Sends `signal` to `child` and waits (up to 10 s) for it to exit, then kills it.
pub async fn stop_child(child: &mut Child, signal: i32) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, signal);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Waits until something accepts TCP connections on `addr`, or `child` exits, or `timeout`.
pub async fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on {addr} within {} s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` over HTTP/1.0 on `addr`: the status code (0 when the answer is not HTTP).
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|err| err.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|err| err.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.map_err(|err| err.to_string())?;
    Ok(std::str::from_utf8(&head[9..12]).ok().and_then(|code| code.parse().ok()).unwrap_or(0))
}

/// The resident memory of `pid` and of every process below it, in KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = crate::sys::rss_kib(pid).unwrap_or(0);
    for child in children(pid) {
        total += tree_rss_kib(child);
    }
    total
}

/// The processes whose parent is `pid` (a PostgreSQL server's: one per connection, beside its
/// own background processes).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| parent_of(*candidate) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The uid and gid of `name`, when it exists.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage (or null); it is read at once.
    #[allow(unsafe_code)]
    unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        entry.as_ref().map(|entry| (entry.pw_uid, entry.pw_gid))
    }
}

/// A PostgreSQL cluster of the run's own, stopped and removed by [`Postgres::stop`].
pub struct Postgres {
    pub port: u16,
    child: Child,
    dir: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    /// `initdb` in a temporary directory, then `postgres` on a free loopback port with
    /// `wal_level = logical` (for logical delivery) and durability off (`fsync`,
    /// `full_page_writes`), so the database's own cost in the timings is the smallest it can be,
    /// accepting `max_connections`; then the `databases` are created.
    pub async fn start(databases: &[&str], max_connections: usize) -> Result<Postgres, String> {
        let bin = postgres_bin().ok_or("PostgreSQL is not installed (apt-get install postgresql)")?;
        let dir = std::env::temp_dir().join(format!("snorky-bench-pg-{}-{}", std::process::id(), monotonic_us()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        // SAFETY: geteuid has no preconditions.
        #[allow(unsafe_code)]
        let root = unsafe { libc::geteuid() } == 0;
        let user =
            if root { Some(user_ids("postgres").ok_or("running as root, but no `postgres` user")?) } else { None };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|err| format!("chown: {err}"))?;
        }
        let data = dir.join("data");
        let mut initdb = command(&bin.join("initdb"), user, libc::SIGTERM);
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        let started = async {
            run_to_end(initdb, "initdb", Duration::from_secs(120)).await?;
            let port = free_port()?;
            let log = std::fs::File::create(dir.join("server.log")).map_err(|err| err.to_string())?;
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid))
                    .map_err(|err| err.to_string())?;
            }
            // SIGQUIT: an immediate shutdown if the load generator dies.
            let mut postgres = command(&bin.join("postgres"), user, libc::SIGQUIT);
            postgres.arg("-D").arg(&data).args(["-p", &port.to_string()]).arg("-k").arg(&dir);
            // Logical decoding sees a commit only once its WAL is flushed, so with
            // `synchronous_commit=off` logical delivery would wait for the WAL writer
            // (`wal_writer_delay`). Every mode and reference runs with it on, side by side under
            // the same commit: with `fsync=off` a flush is a write() to the OS cache.
            for setting in [
                "listen_addresses=127.0.0.1".to_owned(),
                "wal_level=logical".to_owned(),
                "fsync=off".to_owned(),
                "synchronous_commit=on".to_owned(),
                "full_page_writes=off".to_owned(),
                format!("max_connections={max_connections}"),
            ] {
                postgres.args(["-c", &setting]);
            }
            let log_err = log.try_clone().map_err(|err| err.to_string())?;
            let mut child = postgres
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .spawn()
                .map_err(|err| format!("cannot start postgres: {err}"))?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            wait_listening(addr, &mut child, "postgres", Duration::from_secs(60)).await?;
            Ok::<_, String>((port, child))
        };
        let (port, child) = match started.await {
            Ok(started) => started,
            Err(err) => {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("{err}\n{log}"));
            }
        };
        let cluster = Postgres { port, child, dir, bin };
        for name in databases {
            // The server may still be starting up behind its open port: try for a while.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut createdb = command(&cluster.bin.join("createdb"), None, libc::SIGTERM);
                createdb.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", name]);
                match run_to_end(createdb, "createdb", Duration::from_secs(30)).await {
                    Ok(_) => break,
                    Err(err) if Instant::now() > deadline => return Err(err),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(cluster)
    }

    /// The server's process (the parent of its backends).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A fast shutdown (SIGINT), then the directory is removed.
    pub async fn stop(mut self) {
        stop_child(&mut self.child, libc::SIGINT).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A `redis-server` on a free loopback port, keeping nothing on disk.
pub struct Redis {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Redis {
    pub async fn start() -> Result<Redis, String> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("snorky-bench-redis-{}-{}", std::process::id(), monotonic_us()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        let mut redis = command(Path::new("redis-server"), None, libc::SIGTERM);
        redis
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child =
            redis.spawn().map_err(|err| format!("cannot start redis-server (apt-get install redis-server): {err}"))?;
        wait_listening(([127, 0, 0, 1], port).into(), &mut child, "redis-server", Duration::from_secs(20)).await?;
        Ok(Redis { port, child, dir })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        stop_child(&mut self.child, libc::SIGTERM).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A long-running Python child (`manage.py snorky`, uvicorn), stopped with SIGTERM.
pub struct Service {
    child: Child,
}

impl Service {
    /// Spawns `command` and waits until `addr` accepts connections.
    pub async fn start(mut command: Command, addr: SocketAddr, what: &str) -> Result<Service, String> {
        command.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(|err| format!("cannot start {what}: {err}"))?;
        wait_listening(addr, &mut child, what, Duration::from_secs(60)).await?;
        Ok(Service { child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        stop_child(&mut self.child, libc::SIGTERM).await;
    }
}

/// Starts the writer processes (each prints `READY` once set up), then tells them all the same
/// start time, a little ahead; returns their outputs (one JSON line each) once they end.
pub async fn run_writers(commands: Vec<Command>, timeout: Duration) -> Result<Vec<String>, String> {
    let mut children = Vec::with_capacity(commands.len());
    for mut command in commands {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        children.push(command.spawn().map_err(|err| format!("cannot start a writer: {err}"))?);
    }
    let mut outputs = Vec::with_capacity(children.len());
    let mut readers = Vec::with_capacity(children.len());
    for child in &mut children {
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line == "READY" => readers.push(lines),
            _ => return Err("a writer did not get ready (its errors are above)".into()),
        }
    }
    let start_at = monotonic_us() + 300_000;
    for child in &mut children {
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(format!("{start_at}\n").as_bytes()).await.map_err(|err| err.to_string())?;
    }
    for (mut child, mut lines) in children.into_iter().zip(readers) {
        let line = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| "a writer did not finish in time".to_owned())?
            .map_err(|err| err.to_string())?;
        let status = child.wait().await.map_err(|err| err.to_string())?;
        match line {
            Some(line) if status.success() => outputs.push(line),
            _ => return Err(format!("a writer failed ({status}; its errors are above)")),
        }
    }
    Ok(outputs)
}
