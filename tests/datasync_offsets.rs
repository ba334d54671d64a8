//! DataSync offsets over the wire (docs/protocol.md "Offsets"): clients that opt in get the
//! position of every delta and resume exactly after the last one they applied, even when the
//! network dropped their connection in the middle of a large batch; clients that do not opt in
//! see exactly 0.1's frames.

mod common;
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use common::{backend_call, test_config, within, Client, TestServer, WAIT};
use proxy::CutProxy;
use serde_json::{json, Value};
use snorky::datasync::{DataSyncBackend, DataSyncHub, DataSyncService, Dealer, Limits};
use snorky::service::AnyService;

async fn start(limits: Limits) -> (TestServer, Arc<DataSyncHub>) {
    let datasync = DataSyncService::with_limits("datasync", vec![Dealer::broadcast("all", "Task")], limits)
        .expect("distinct dealer names");
    let backend = DataSyncBackend::new("datasync_backend", &datasync);
    let hub = Arc::clone(datasync.hub());
    let server = TestServer::start_services(
        test_config(),
        vec![AnyService::DataSync(datasync)],
        vec![AnyService::DataSyncBackend(backend)],
    )
    .await;
    (server, hub)
}

async fn connect_to(url: &str) -> Client {
    let (ws, _) = within(WAIT, "the WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("the server accepts the connection");
    Client { ws, pings: 0 }
}

async fn authorize(server: &TestServer) -> String {
    let reply = backend_call(
        server,
        "datasync_backend",
        "authorizeSubscription",
        json!({"items": [{"dealer": "all", "query": null}]}),
    )
    .await;
    reply["message"]["data"].as_str().unwrap_or_else(|| panic!("authorized: {reply}")).to_owned()
}

fn inserts(ids: std::ops::RangeInclusive<u64>) -> Value {
    ids.map(|id| json!({"type": "insert", "model": "Task", "data": {"id": id}})).collect()
}

async fn publish(server: &TestServer, deltas: Value) {
    let reply = backend_call(server, "datasync_backend", "publishDeltas", json!({"deltas": deltas})).await;
    assert_eq!(reply["message"]["type"], "response", "{reply}");
}

/// What a client applies: the id of each delta, and the offset of the last.
#[derive(Default)]
struct Applied {
    ids: Vec<u64>,
    last: Option<String>,
}

impl Applied {
    /// Applies an opted-in delta frame of subscription `token`.
    fn apply(&mut self, frame: &Value, token: &str) {
        let message = &frame["message"];
        assert_eq!(message["type"], "delta", "{frame}");
        assert_eq!(message["subscription"], token, "{frame}");
        self.ids.push(message["delta"]["data"]["id"].as_u64().expect("an id"));
        self.last = Some(message["offset"].as_str().expect("an offset").to_owned());
    }
}

/// Sends an opted-in `acquireSubscription` and applies the deltas that come before its reply;
/// returns the reply.
async fn acquire(client: &mut Client, token: &str, after: Option<&str>, applied: &mut Applied) -> Value {
    let mut params = json!({"token": token, "offsets": true});
    if let Some(after) = after {
        params["after"] = json!(after);
    }
    client.request("datasync", "acquireSubscription", params, json!("acquire")).await;
    loop {
        let frame = client.recv().await;
        if frame["message"]["callId"] == "acquire" {
            return frame;
        }
        applied.apply(&frame, token);
    }
}

/// Reads (and applies) deltas until `applied` holds `total`.
async fn read_until(client: &mut Client, token: &str, applied: &mut Applied, total: usize) {
    while applied.ids.len() < total {
        let frame = client.recv().await;
        applied.apply(&frame, token);
    }
}

/// A request the server answers at once: its reply being the next frame proves nothing else
/// was queued before it.
async fn barrier(client: &mut Client) {
    let reply = client.call("datasync", "noSuchCommand", json!({}), json!("barrier")).await;
    assert_eq!(reply["message"]["callId"], "barrier", "nothing more arrived: {reply}");
}

#[tokio::test]
async fn a_0_1_client_sees_exactly_todays_frames_and_one_that_opts_in_sees_offsets() {
    let (server, _hub) = start(Limits::default()).await;
    let (old_token, new_token) = (authorize(&server).await, authorize(&server).await);
    let mut old = server.connect().await;
    let reply = old.call("datasync", "acquireSubscription", json!({"token": old_token}), json!(1)).await;
    assert_eq!(reply["message"]["data"], Value::Null);
    let mut new = server.connect().await;
    let reply =
        new.call("datasync", "acquireSubscription", json!({"token": new_token, "offsets": true}), json!(1)).await;
    assert_eq!(reply["message"]["data"], json!({"offset": "0"}));
    publish(&server, inserts(1..=2)).await;
    assert_eq!(
        old.recv_text().await,
        r#"{"service":"datasync","message":{"type":"delta","delta":{"type":"insert","model":"Task","data":{"id":1}}}}"#
    );
    assert_eq!(
        new.recv_text().await,
        format!(
            r#"{{"service":"datasync","message":{{"type":"delta","delta":{{"type":"insert","model":"Task","data":{{"id":1}}}},"subscription":"{new_token}","offset":"1"}}}}"#
        )
    );
    assert!(old.recv_text().await.ends_with(r#""data":{"id":2}}}}"#));
    assert!(new.recv_text().await.ends_with(r#""offset":"2"}}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_without_a_close_frame_mid_batch_resumes_with_exactly_the_missing_deltas() {
    const TOTAL: u64 = 20_000;
    let (server, _hub) = start(Limits::default()).await;
    let token = authorize(&server).await;
    let proxy = CutProxy::start(server.frontend).await;
    let mut client = connect_to(&proxy.ws_url()).await;
    let mut applied = Applied::default();
    let reply = acquire(&mut client, &token, None, &mut applied).await;
    assert_eq!(reply["message"]["data"], json!({"offset": "0"}));
    publish(&server, inserts(1..=TOTAL)).await;
    read_until(&mut client, &token, &mut applied, 50).await;
    // The network goes: what the server wrote into it is lost, and nobody sends a close frame.
    proxy.cut();
    drop(client);
    let mut again = server.connect().await;
    let after = applied.last.clone().expect("an offset");
    let reply = acquire(&mut again, &token, Some(&after), &mut applied).await;
    assert_eq!(reply["message"]["data"], json!({"offset": after}), "{reply}");
    read_until(&mut again, &token, &mut applied, usize::try_from(TOTAL).expect("small")).await;
    assert_eq!(applied.ids, (1..=TOTAL).collect::<Vec<_>>(), "every delta once, in order");
    assert_eq!(applied.last.as_deref(), Some("20000"));
    barrier(&mut again).await;
}

#[tokio::test]
async fn a_resume_after_an_offset_waits_briefly_for_an_open_holder_then_refuses() {
    let (server, _hub) = start(Limits::default()).await;
    let token = authorize(&server).await;
    let mut holder = server.connect().await;
    let mut applied = Applied::default();
    acquire(&mut holder, &token, None, &mut applied).await;
    let mut other = server.connect().await;
    let started = tokio::time::Instant::now();
    let reply = acquire(&mut other, &token, Some("0"), &mut applied).await;
    assert_eq!(reply["message"]["message"], "No such subscription", "{reply}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "it gave the holder time to go");
    // The holder keeps it.
    publish(&server, inserts(1..=1)).await;
    read_until(&mut holder, &token, &mut applied, 1).await;
}

#[tokio::test]
async fn a_resume_right_after_the_holder_went_takes_over_at_once() {
    let (server, _hub) = start(Limits::default()).await;
    let token = authorize(&server).await;
    let mut first = server.connect().await;
    let mut applied = Applied::default();
    acquire(&mut first, &token, None, &mut applied).await;
    publish(&server, inserts(1..=3)).await;
    read_until(&mut first, &token, &mut applied, 3).await;
    let after = applied.last.clone().expect("an offset");
    // Resumed from another connection while the first is still open: the server waits for
    // it, and it goes.
    let mut second = server.connect().await;
    let resume = tokio::spawn(async move {
        let mut applied = Applied::default();
        let reply = acquire(&mut second, &token, Some(&after), &mut applied).await;
        (second, reply, applied, token)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.close().await;
    let (mut second, reply, mut applied, token) = within(WAIT, "the resume", resume).await.expect("no panic");
    assert_eq!(reply["message"]["data"], json!({"offset": "3"}), "{reply}");
    publish(&server, inserts(4..=4)).await;
    read_until(&mut second, &token, &mut applied, 1).await;
    assert_eq!(applied.ids, vec![4]);
}
