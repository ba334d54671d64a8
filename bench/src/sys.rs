//! The little OS glue the benchmark needs: file-descriptor limit, a process's RSS, signals,
//! and a description of the machine.

use std::time::Duration;

/// Raises the soft open-files limit to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// How many file descriptors `pid` has open (the entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a pid we started; a stale pid at worst gets ESRCH.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Resolves when stdin reaches end of file (the parent went away) or SIGTERM/SIGINT arrives.
pub async fn parent_gone_or_signal() {
    use tokio::io::AsyncReadExt;
    use tokio::signal::unix::{signal, SignalKind};
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        stdin_closed.await;
        return;
    };
    tokio::select! {
        () = stdin_closed => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// One line about the machine: CPUs, memory, CPU model, kernel.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs (nproc), {:.1} GiB memory, {model}, Linux {}", mem_kib as f64 / 1024.0 / 1024.0, kernel.trim())
}

/// `/proc/loadavg`'s first three numbers.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Process CPU time (user + system) of `pid`, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|hz| *hz > 0)?;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// With `--alloc-stats`: starts counting allocations and prints a snapshot on every SIGUSR1.
pub fn serve_alloc_stats(enabled: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    if !enabled {
        return;
    }
    crate::alloc::enable();
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else { return };
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
            println!("{}", crate::alloc::line(tasks));
        }
    });
}

/// Sends SIGUSR1 to `pid`.
pub fn signal_usr1(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) with a pid we started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGUSR1);
    }
}

/// How many of `pid`'s connected TCP sockets have `TCP_NODELAY` set: (with, total), looking at
/// no more than `limit` sockets. Uses pidfd_getfd(2) (Linux ≥ 5.6, needs ptrace rights over the
/// process, which the parent running as the same user has); `None` when that is not possible.
pub fn nodelay_sockets(pid: u32, limit: usize) -> Option<(usize, usize)> {
    let pid_c = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: plain syscalls on integers; every descriptor obtained is closed below.
    #[allow(unsafe_code)]
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid_c, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = libc::c_int::try_from(pidfd).ok()?;
        let (mut with, mut total) = (0usize, 0usize);
        let mut failed = false;
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for entry in entries.flatten() {
                if total >= limit {
                    break;
                }
                let is_socket = std::fs::read_link(entry.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
                let Some(target_fd) = entry.file_name().to_str().and_then(|name| name.parse::<libc::c_int>().ok())
                else {
                    continue;
                };
                if !is_socket {
                    continue;
                }
                let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, target_fd, 0);
                if fd < 0 {
                    failed = true;
                    break;
                }
                let fd = libc::c_int::try_from(fd).unwrap_or(-1);
                let mut value: libc::c_int = 0;
                let mut len = socklen_of::<libc::c_int>();
                let listening = {
                    let mut accepting: libc::c_int = 0;
                    let mut alen = len;
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ACCEPTCONN,
                        (&raw mut accepting).cast(),
                        &raw mut alen,
                    ) == 0
                        && accepting != 0
                };
                let mut peer: libc::sockaddr_storage = std::mem::zeroed();
                let mut peer_len = socklen_of::<libc::sockaddr_storage>();
                let connected = libc::getpeername(fd, (&raw mut peer).cast(), &raw mut peer_len) == 0
                    && i32::from(peer.ss_family) == libc::AF_INET;
                if !listening
                    && connected
                    && libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut value).cast(), &raw mut len)
                        == 0
                {
                    total += 1;
                    if value != 0 {
                        with += 1;
                    }
                }
                libc::close(fd);
            }
        }
        libc::close(pidfd);
        (!failed && total > 0).then_some((with, total))
    }
}

/// The Snorky revision measured: `git` commit, and whether the server sources differ from it.
pub fn revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else { return "unknown (not a git checkout)".into() };
    match git(&["status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"]) {
        Some(changes) if !changes.is_empty() => format!("{commit} with uncommitted changes in src/ or Cargo.*"),
        _ => commit,
    }
}

/// Context switches (voluntary + involuntary) of every thread of `pid` so far.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|line| {
                line.starts_with("voluntary_ctxt_switches:") || line.starts_with("nonvoluntary_ctxt_switches:")
            })
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// The size of `T` as a socket-address length (the structs passed are a few hundred bytes).
#[allow(clippy::cast_possible_truncation)]
const fn socklen_of<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}
