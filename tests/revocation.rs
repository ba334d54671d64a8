//! Revoking an identity through the `connections` backend service: its open connections close
//! with 4501 at once, its older connection tokens are refused, others are untouched.

mod collab;
mod common;

use std::time::Duration;

use common::{backend_call, TestServer};
use serde_json::json;
use snorky::service::AnyService;
use snorky::services::connections::ConnectionsBackend;
use snorky::services::pubsub::{PubSubBackend, PubSubService};
use snorky::tokens;

async fn start() -> TestServer {
    let pubsub = PubSubService::new("pubsub");
    let backend = PubSubBackend::new("pubsub_backend", &pubsub);
    TestServer::start_services(
        collab::config(),
        vec![AnyService::PubSub(pubsub)],
        vec![AnyService::PubSubBackend(backend), AnyService::Connections(ConnectionsBackend::new("connections"))],
    )
    .await
}

#[tokio::test]
async fn revoking_an_identity_closes_its_connections_and_refuses_its_older_tokens() {
    let server = start().await;
    let alice_token = collab::token("alice");
    let query = format!("?token={alice_token}");
    let mut tab1 = collab::try_connect_query(&server, &query).await.expect("alice connects");
    let mut tab2 = collab::connect_as(&server, "alice").await;
    let mut bob = collab::connect_as(&server, "bob").await;
    bob.subscribe(json!("news")).await;

    let answer = backend_call(&server, "connections", "disconnect", json!({"identity": "alice"})).await;
    assert_eq!(answer["message"]["data"], json!({"disconnected": 2}), "{answer}");
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(collab::close_code(tab).await, 4501, "closed for good");
    }
    // Her token is refused from now on; bob is untouched.
    let (status, body) = collab::refusal(collab::try_connect_query(&server, &query).await);
    assert_eq!((status, body.as_str()), (401, "Invalid connection token: revoked"));
    common::backend_publish(&server, &json!("news"), &json!("still here")).await;
    assert_eq!(bob.recv().await["message"]["message"], "still here");

    // A token issued after the revocation is good (it was issued in a later second).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    let later = now + 2;
    let fresh = tokens::issue_at("alice", collab::SECRET.as_bytes(), later, Duration::from_secs(3600), None)
        .expect("a short token");
    let mut again = collab::try_connect_query(&server, &format!("?token={fresh}")).await.expect("a fresh token");
    again.subscribe(json!("news")).await;
}

#[tokio::test]
async fn disconnect_checks_its_parameter() {
    let server = start().await;
    let answer = backend_call(&server, "connections", "disconnect", json!({"identity": 5})).await;
    assert_eq!(answer["message"]["message"], "identity must be string");
    let answer = backend_call(&server, "connections", "disconnect", json!({"identity": "x", "also": 1})).await;
    assert_eq!(answer["message"]["message"], "Invalid params");
    // Nobody connected: nothing closed, the identity is still revoked for its older tokens.
    let answer = backend_call(&server, "connections", "disconnect", json!({"identity": "carol"})).await;
    assert_eq!(answer["message"]["data"], json!({"disconnected": 0}));
    let (status, _) =
        collab::refusal(collab::try_connect_query(&server, &format!("?token={}", collab::token("carol"))).await);
    assert_eq!(status, 401);
}
