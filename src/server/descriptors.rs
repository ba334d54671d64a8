//! The process's open-file limit, against `max_connections`.
//!
//! Every connection is a file descriptor. With a soft limit below the cap, the limit is the real
//! cap, and what happens at it is worse than the cap's 503: accepting fails, for every client and
//! for `/metrics` alike. At start the soft limit is raised to the hard one, as Go's runtime does
//! (a low soft limit protects programs that use `select()`, which the server does not), and a cap
//! that the limit still cannot hold is logged.

/// Descriptors kept for what is not a client connection: the listeners, the broker's connections,
/// the web application's keep-alive connections to the backend, the host process's own files.
const RESERVED: u64 = 256;

/// Raises the soft open-file limit to the hard one and says so when `max_connections` is more
/// than it allows; `chosen` is whether the cap was configured (a default above the limit is only
/// mentioned).
pub fn raise_for(max_connections: usize, chosen: bool) {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(err) => {
            log::debug!("could not read or raise the open-file limit: {err}");
            return;
        }
    };
    let Some(needed) = u64::try_from(max_connections).ok().and_then(|cap| cap.checked_add(RESERVED)) else {
        return;
    };
    if needed <= soft {
        return;
    }
    let room = soft.saturating_sub(RESERVED);
    let text = format!(
        "max_connections is {max_connections}, but this process may open only {soft} files: past about \
         {room} connections, accepting fails for every client instead of answering 503. Raise the limit \
         (ulimit -n, systemd's LimitNOFILE=) or lower max_connections."
    );
    if chosen {
        log::warn!("{text}");
    } else {
        log::info!("{text}");
    }
}
