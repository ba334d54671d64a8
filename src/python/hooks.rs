//! Python hooks that the server starts without waiting for them (`client_disconnected`, a
//! request's cancel callbacks), counted per server so that its graceful stop lets them run.
//!
//! Each runs on a blocking thread of the server's runtime. When the runtime shuts down, tokio
//! drops the blocking tasks that no thread has picked up yet: a stop right after the last clients
//! left (every stop closes all connections) would lose their `client_disconnected` calls. So the
//! hooks are spawned on the server's [`TaskTracker`], which the server's thread waits for, within
//! a bound, before it shuts the runtime down. The tracker is found through a thread-local that each
//! thread of the server's runtime (and the thread driving it) holds: the hooks are started by the
//! server's own tasks, which only run there.

use std::cell::RefCell;

use tokio_util::task::TaskTracker;

thread_local! {
    static SERVER_HOOKS: RefCell<Option<TaskTracker>> = const { RefCell::new(None) };
}

/// Makes the calling thread (one of a server's) spawn its hooks on `tracker`.
pub fn track_on_this_thread(tracker: &TaskTracker) {
    SERVER_HOOKS.with(|hooks| *hooks.borrow_mut() = Some(tracker.clone()));
}

/// Runs `hook` on a blocking thread, on the calling server's tracker when it has one.
pub fn spawn<R: Send + 'static>(hook: impl FnOnce() -> R + Send + 'static) -> tokio::task::JoinHandle<R> {
    match SERVER_HOOKS.with(|hooks| hooks.borrow().clone()) {
        Some(tracker) => tracker.spawn_blocking(hook),
        None => tokio::task::spawn_blocking(hook),
    }
}
