//! The *ceiling*: the least a server can do to speak the PubSub subset the benchmark uses.
//!
//! tokio + tokio-tungstenite (the WebSocket crate axum uses), one task per connection, a channel
//! map behind one mutex, one serialization per publish shared by every subscriber, and a
//! minimal hyper HTTP/1 backend for `POST /backend`. Nothing else: no metrics, no pings, no
//! origin check, no queue bound, no per-connection writer task. Its frames are byte-for-byte the
//! ones Snorky sends (same field order, same compact JSON).
//!
//! Buffers are sized like Snorky's (2 KiB initial read buffer, 16 KiB write batching) so the
//! idle-memory comparison is about everything else.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::ServeArgs;

const READ_BUFFER: usize = 2 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;
const MAX_FRAME: usize = 1024 * 1024;
const FRONTEND: &str = "pubsub";

type Outbox = mpsc::UnboundedSender<Utf8Bytes>;

#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, Vec<(u64, Outbox)>>>,
    next_id: AtomicU64,
}

impl Hub {
    fn publish(&self, key: &str, frame: &Utf8Bytes) -> usize {
        let channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(subscribers) = channels.get(key) else {
            return 0;
        };
        subscribers.iter().filter(|(_, outbox)| outbox.send(frame.clone()).is_ok()).count()
    }

    fn subscribe(&self, key: &str, id: u64, outbox: &Outbox) -> bool {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let subscribers = channels.entry(key.to_owned()).or_default();
        if subscribers.iter().any(|(other, _)| *other == id) {
            return false;
        }
        subscribers.push((id, outbox.clone()));
        true
    }

    fn unsubscribe(&self, key: &str, id: u64) -> bool {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(subscribers) = channels.get_mut(key) else {
            return false;
        };
        let Some(index) = subscribers.iter().position(|(other, _)| *other == id) else {
            return false;
        };
        subscribers.swap_remove(index);
        if subscribers.is_empty() {
            channels.remove(key);
        }
        true
    }
}

#[derive(Serialize)]
struct Envelope<'a, M: Serialize> {
    service: &'a str,
    message: M,
}

#[derive(Serialize)]
struct Delivery<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a Value,
    message: &'a Value,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Reply<'a> {
    Response {
        #[serde(rename = "callId", skip_serializing_if = "Option::is_none")]
        call_id: Option<&'a Value>,
        data: Value,
    },
    Error {
        #[serde(rename = "callId", skip_serializing_if = "Option::is_none")]
        call_id: Option<&'a Value>,
        message: &'a str,
    },
}

#[derive(Deserialize)]
struct IncomingEnvelope {
    service: String,
    message: RequestMessage,
}

#[derive(Deserialize)]
struct RequestMessage {
    command: String,
    params: Map<String, Value>,
    #[serde(rename = "callId")]
    call_id: Option<Value>,
}

fn reply(service: &str, call_id: Option<&Value>, error: Option<&str>) -> String {
    let message = match error {
        None => Reply::Response { call_id, data: Value::Null },
        Some(message) => Reply::Error { call_id, message },
    };
    serde_json::to_string(&Envelope { service, message }).unwrap_or_default()
}

fn channel_key(channel: &Value) -> String {
    serde_json::to_string(channel).unwrap_or_default()
}

/// Runs the ceiling server in its own runtime until the parent goes away or a signal arrives.
pub fn main(args: &ServeArgs) -> Result<(), String> {
    crate::sys::raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build().map_err(|err| format!("runtime: {err}"))?;
    runtime.block_on(async {
        let frontend =
            TcpListener::bind(&args.frontend).await.map_err(|err| format!("bind {}: {err}", args.frontend))?;
        let backend = TcpListener::bind(&args.backend).await.map_err(|err| format!("bind {}: {err}", args.backend))?;
        let ws_addr = frontend.local_addr().map_err(|err| err.to_string())?;
        let backend_addr = backend.local_addr().map_err(|err| err.to_string())?;
        crate::sys::serve_alloc_stats(args.alloc_stats);
        let hub = Arc::new(Hub::default());
        tokio::spawn(accept_frontend(frontend, Arc::clone(&hub)));
        tokio::spawn(accept_backend(backend, hub, Arc::from(args.key.as_str())));
        println!("READY ws=ws://{ws_addr}/ws backend=http://{backend_addr}/backend");
        crate::sys::parent_gone_or_signal().await;
        Ok::<(), String>(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

async fn accept_frontend(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, Arc::clone(&hub)));
    }
}

async fn connection(stream: TcpStream, hub: Arc<Hub>) {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let (outbox, mut frames) = mpsc::unbounded_channel::<Utf8Bytes>();
    let mut subscriptions: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(answer) = request(&hub, id, &outbox, &mut subscriptions, text.as_str()) {
                        if ws.send(Message::text(answer)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            Some(frame) = frames.recv() => {
                let mut written = ws.feed(Message::Text(frame)).await;
                while written.is_ok() {
                    match frames.try_recv() {
                        Ok(frame) => written = ws.feed(Message::Text(frame)).await,
                        Err(_) => break,
                    }
                }
                if written.is_err() || ws.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    for key in &subscriptions {
        hub.unsubscribe(key, id);
    }
}

/// Handles one frontend frame; returns the reply to send, if any.
fn request(hub: &Hub, id: u64, outbox: &Outbox, subscriptions: &mut Vec<String>, text: &str) -> Option<String> {
    let envelope: IncomingEnvelope = serde_json::from_str(text).ok()?;
    if envelope.service != FRONTEND {
        return None;
    }
    let RequestMessage { command, mut params, call_id } = envelope.message;
    let call_id = call_id.as_ref();
    let channel = params.remove("channel");
    let error = match (command.as_str(), channel) {
        ("subscribe", Some(channel)) if params.is_empty() => {
            let key = channel_key(&channel);
            if hub.subscribe(&key, id, outbox) {
                subscriptions.push(key);
                None
            } else {
                Some("Already subscribed")
            }
        }
        ("unsubscribe", Some(channel)) if params.is_empty() => {
            let key = channel_key(&channel);
            if hub.unsubscribe(&key, id) {
                subscriptions.retain(|other| *other != key);
                None
            } else {
                Some("Not subscribed")
            }
        }
        ("publish", Some(channel)) => match params.remove("message") {
            Some(message) if params.is_empty() => {
                publish(hub, &channel, &message);
                None
            }
            _ => Some("Invalid params"),
        },
        ("subscribe" | "unsubscribe", _) => Some("Invalid params"),
        _ => Some("Unknown command"),
    };
    Some(reply(FRONTEND, call_id, error))
}

fn publish(hub: &Hub, channel: &Value, message: &Value) -> usize {
    let frame =
        serde_json::to_string(&Envelope { service: FRONTEND, message: Delivery { kind: "message", channel, message } })
            .unwrap_or_default();
    hub.publish(&channel_key(channel), &Utf8Bytes::from(frame))
}

async fn accept_backend(listener: TcpListener, hub: Arc<Hub>, key: Arc<str>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let hub = Arc::clone(&hub);
        let key = Arc::clone(&key);
        tokio::spawn(async move {
            let service = service_fn(move |request| backend(Arc::clone(&hub), Arc::clone(&key), request));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

async fn backend(
    hub: Arc<Hub>,
    key: Arc<str>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/backend" {
        return Ok(json_response(StatusCode::NOT_FOUND, r#"{"error":"Not found"}"#.into()));
    }
    if request.method() != Method::POST {
        return Ok(json_response(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":"Method not allowed"}"#.into()));
    }
    if request.headers().get("x-backend-key").map(hyper::header::HeaderValue::as_bytes) != Some(key.as_bytes()) {
        return Ok(json_response(StatusCode::UNAUTHORIZED, r#"{"error":"Missing or wrong X-Backend-Key"}"#.into()));
    }
    let Ok(body) = Limited::new(request.into_body(), 16 * 1024 * 1024).collect().await else {
        return Ok(json_response(StatusCode::BAD_REQUEST, r#"{"error":"Unreadable body"}"#.into()));
    };
    let Ok(envelope) = serde_json::from_slice::<IncomingEnvelope>(&body.to_bytes()) else {
        return Ok(json_response(StatusCode::BAD_REQUEST, r#"{"error":"Invalid message"}"#.into()));
    };
    let RequestMessage { command, mut params, call_id } = envelope.message;
    let error = match (command.as_str(), params.remove("channel"), params.remove("message")) {
        ("publish", Some(channel), Some(message)) if params.is_empty() => {
            publish(&hub, &channel, &message);
            None
        }
        ("publish", _, _) => Some("Invalid params"),
        _ => Some("Unknown command"),
    };
    Ok(json_response(StatusCode::OK, reply(&envelope.service, call_id.as_ref(), error)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_match_snorky_byte_for_byte() {
        let frame = serde_json::to_string(&Envelope {
            service: FRONTEND,
            message: Delivery { kind: "message", channel: &json!("news"), message: &json!({"a": 1}) },
        })
        .expect("serializes");
        assert_eq!(frame, r#"{"service":"pubsub","message":{"type":"message","channel":"news","message":{"a":1}}}"#);
        assert_eq!(
            reply("pubsub", Some(&json!(7)), None),
            r#"{"service":"pubsub","message":{"type":"response","callId":7,"data":null}}"#
        );
        assert_eq!(
            reply("pubsub", None, Some("Not subscribed")),
            r#"{"service":"pubsub","message":{"type":"error","message":"Not subscribed"}}"#
        );
    }
}
