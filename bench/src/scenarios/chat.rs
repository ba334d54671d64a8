//! `chat`: `serve-snorky --mode chat` with a token secret; members (each connected with its
//! own connection token) join one room, and one more member sends messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{cpu_per_delivery, wait_window, DRAIN_IDLE, DRAIN_MAX, MESSAGE_SIZE};
use super::services::{clean, record, ServiceSizes, SERVICE_OPEN_MAX};
use crate::client::{self, Clock, Join, Subscribers};
use crate::procs::ServerProcess;
use crate::report::{format_number, Report};
use crate::stats::Deliveries;

/// The secret of the Chat server's connection tokens (loopback only).
const TOKEN_SECRET: &str = "snorky-bench-token-secret";

/// `chat`: one room, `conns` members, one more member sends `chat_msgs` messages (each `send`
/// awaited, at most `window` messages ahead of the slowest member).
pub(super) async fn chat(sizes: &ServiceSizes, clock: Clock, report: &mut Report) -> Result<(), String> {
    let server = ServerProcess::start_snorky_with(&["--mode", "chat", "--token-secret", TOKEN_SECRET]).await?;
    let outcome = chat_run(sizes, clock, &server, report).await;
    server.stop().await;
    outcome
}

pub(super) fn connection_token(identity: &str) -> String {
    snorky::tokens::issue(identity, TOKEN_SECRET.as_bytes(), Duration::from_secs(3600), None).expect("a short token")
}

pub(super) async fn chat_run(
    sizes: &ServiceSizes,
    clock: Clock,
    server: &ServerProcess,
    report: &mut Report,
) -> Result<(), String> {
    let members = sizes.conns.max(1);
    let msgs = sizes.chat_msgs;
    let room = json!("room");
    let channels = Arc::new(vec![room.clone()]);
    let tokens: Vec<String> = (0..members).map(|i| connection_token(&format!("member-{i}"))).collect();
    let subscribers = Subscribers::open_with(
        &server.target,
        &channels,
        &vec![0; members],
        clock,
        sizes.open_options(msgs),
        &Join::Chat(Arc::new(tokens)),
    );
    let (ready, failed) = subscribers.wait_ready(SERVICE_OPEN_MAX).await;
    if failed > 0 || ready == 0 {
        let results = subscribers.finish().await;
        let reason = results.iter().find_map(|r| r.setup_error.clone()).unwrap_or_default();
        return Err(format!("{failed} of {members} members did not join: {reason}"));
    }
    let url = format!("{}?token={}", server.target.ws_url, connection_token("sender"));
    let mut sender = client::connect_url(&server.target, None, &url).await?;
    client::call_service(&mut sender, "chat", "join", json!({"channel": room}), 1).await?;
    let everyone: Vec<usize> = (0..members).collect();
    let cpu_before = server.cpu_time();
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    for seq in 0..msgs {
        if seq >= sizes.window && !wait_window(&subscribers, &everyone, seq + 1 - sizes.window).await {
            report.notes.push("chat: members stopped making progress".into());
            break;
        }
        let params = json!({"channel": room, "body": client::payload(seq, clock.micros(), MESSAGE_SIZE)});
        match client::call_service(&mut sender, "chat", "send", params, seq + 2).await {
            Ok(_) => sent += 1,
            Err(err) => {
                if errors == 0 {
                    report.notes.push(format!("chat send failed: {err}"));
                }
                errors += 1;
            }
        }
    }
    let sending = start.elapsed().as_secs_f64();
    subscribers.wait_drained(sent * members as u64, DRAIN_IDLE, Instant::now() + DRAIN_MAX).await;
    let cpu_after = server.cpu_time();
    let results = subscribers.finish().await;
    drop(sender);
    let mut summary = Deliveries::summarize(results, &[sent], errors, start);
    summary.server_cpu_us_per_delivery = cpu_per_delivery(cpu_before, cpu_after, summary.received);
    let prefix = format!(
        "chat 1 room × {} members, {} msgs from one member",
        format_number(members as f64, 0),
        format_number(msgs as f64, 0)
    );
    record(report, &prefix, &summary, &[("messages sent/s", sent as f64 / sending.max(1e-9), 0)]);
    clean(&summary)
}
