//! The receiving transports: polling (`xhr`, `jsonp`) answers once per request; streaming
//! (`xhr_streaming`, `eventsource`, `htmlfile`) keeps the response open and writes each frame as
//! it comes, up to the response limit.
//!
//! Each receiving request first finds or opens its session ([`start`]), which is where a new
//! session goes through the same checks as a WebSocket handshake: the origin and the connection
//! token.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;

use super::framing::{self, Wrapping};
use super::http::{self, Refused, RequestInfo};
use super::path::Transport;
use super::session::{self, Event, Receiver, Refusal};
use super::{adapter, Shared};

/// How a receiving request begins.
enum Start {
    /// It opened the session: it sends `o` first.
    Opened(Receiver),
    /// It receives for an existing session.
    Attached(Receiver),
    /// It only gets a close frame: the session closed, or another request is receiving.
    Refused(String),
}

/// How long a request finding another one receiving waits for it to go before answering 2010.
/// A client that aborts a request and at once opens another (what sockjs-client does when it
/// gives up on one) would otherwise race the server noticing the abort.
const BUSY_GRACE: Duration = Duration::from_millis(100);

/// Finds or opens session `id` and attaches this request; an error is the HTTP answer.
async fn start(
    shared: &Shared,
    info: &RequestInfo,
    remote: SocketAddr,
    id: &str,
    transport: Transport,
) -> Result<Start, Response> {
    let app = &shared.app;
    let endpoint = &shared.endpoint;
    let (session, admission) = endpoint
        .sessions
        .get_or_insert(id, info.token.as_deref(), || {
            let (identity, mut admission) = super::admit(app, info, remote)?;
            let (connection, outbox) = adapter::open(app, identity, remote, transport, &mut admission);
            Ok::<_, Refused>((connection, outbox, admission))
        })
        .map_err(Refused::into_response)?;
    let opened = admission.is_some();
    if !opened {
        super::may_use(app, &session, info).map_err(Refused::into_response)?;
    }
    if let Some(admission) = admission {
        session::spawn(Arc::clone(app), Arc::clone(endpoint), Arc::clone(&session), admission);
    }
    let mut attached = session.attach();
    if matches!(attached, Err(Refusal::Busy)) && session.wait_idle(BUSY_GRACE).await {
        attached = session.attach();
    }
    match attached {
        Ok(receiver) if opened => Ok(Start::Opened(receiver)),
        Ok(receiver) => Ok(Start::Attached(receiver)),
        Err(Refusal::Closed(frame)) => Ok(Start::Refused(frame)),
        Err(Refusal::Busy) => Ok(Start::Refused(framing::close_frame(framing::ANOTHER_CONNECTION))),
    }
}

/// The headers every receiving response carries.
fn receiving_response(shared: &Shared, info: &RequestInfo, content_type: &'static str, body: Body) -> Response {
    let mut response = http::response(StatusCode::OK, Some(content_type), body);
    let headers = response.headers_mut();
    http::no_cache(headers);
    http::cors(headers, info);
    http::session_cookie(headers, info, shared.endpoint.options.cookie_needed);
    response
}

/// `xhr` and `jsonp`: answers with what is queued, or waits for it (a heartbeat interval at
/// most).
pub async fn poll(shared: &Shared, info: &RequestInfo, remote: SocketAddr, id: &str, transport: Transport) -> Response {
    let (wrapping, content_type) = match transport {
        Transport::Jsonp => match callback(info) {
            Ok(callback) => (Wrapping::Jsonp(callback), http::JAVASCRIPT),
            Err(refused) => return refused.into_response(),
        },
        _ => (Wrapping::Newline, http::JAVASCRIPT),
    };
    let frames = match start(shared, info, remote, id, transport).await {
        Err(response) => return response,
        Ok(Start::Opened(mut receiver)) => {
            receiver.finish();
            vec![framing::OPEN.to_owned()]
        }
        Ok(Start::Attached(mut receiver)) => {
            // If the client goes away while this waits, the future is dropped with the
            // receiver unfinished, which closes the session (see `Receiver`).
            let frames = match receiver.next_event(shared.endpoint.options.heartbeat).await {
                Event::Messages(frame) => vec![frame],
                Event::Heartbeat => vec![framing::HEARTBEAT.to_owned()],
                Event::Closed(frames) => frames,
            };
            receiver.finish();
            frames
        }
        Ok(Start::Refused(frame)) => vec![frame],
    };
    let body: String = frames.iter().map(|frame| wrapping.wrap(frame)).collect();
    receiving_response(shared, info, content_type, Body::from(body))
}

/// `xhr_streaming`, `eventsource` and `htmlfile`: a response that stays open.
pub async fn stream(
    shared: &Shared,
    info: &RequestInfo,
    remote: SocketAddr,
    id: &str,
    transport: Transport,
) -> Response {
    let (wrapping, prelude, content_type) = match transport {
        Transport::EventSource => (Wrapping::EventSource, "\r\n".to_owned(), http::EVENT_STREAM),
        Transport::HtmlFile => match callback(info) {
            Ok(callback) => (Wrapping::HtmlFile, htmlfile_head(&callback), http::HTML),
            Err(refused) => return refused.into_response(),
        },
        // Browsers hand an XHR's data to scripts only after some amount has arrived: 2 KiB of
        // padding gets the open frame through at once.
        _ => (Wrapping::Newline, format!("{}\n", "h".repeat(2048)), http::JAVASCRIPT),
    };
    let mut stream = Streaming {
        receiver: None,
        wrapping,
        pending: VecDeque::from([Bytes::from(prelude)]),
        sent: 0,
        limit: shared.endpoint.options.response_limit,
        heartbeat: shared.endpoint.options.heartbeat,
    };
    match start(shared, info, remote, id, transport).await {
        Err(response) => return response,
        Ok(Start::Opened(receiver)) => {
            stream.push(framing::OPEN);
            stream.receiver = Some(receiver);
        }
        Ok(Start::Attached(receiver)) => stream.receiver = Some(receiver),
        Ok(Start::Refused(frame)) => stream.push(&frame),
    }
    let body = futures_util::stream::unfold(stream, Streaming::step);
    receiving_response(shared, info, content_type, Body::from_stream(body))
}

/// The state of a streaming response.
struct Streaming {
    /// `None` once the response must end after `pending`.
    receiver: Option<Receiver>,
    wrapping: Wrapping,
    /// Chunks to write before waiting again; each becomes one HTTP chunk.
    pending: VecDeque<Bytes>,
    /// Bytes of frames sent (the prelude does not count).
    sent: usize,
    limit: usize,
    heartbeat: Duration,
}

impl Streaming {
    fn push(&mut self, frame: &str) {
        let chunk = self.wrapping.wrap(frame);
        self.sent += chunk.len();
        self.pending.push_back(Bytes::from(chunk));
    }

    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Streaming)> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some((Ok(chunk), self));
            }
            let receiver = self.receiver.as_mut()?;
            if self.sent >= self.limit {
                // Enough for one response: the client opens the next one and frees this one's
                // memory. The session goes on.
                self.end();
                continue;
            }
            match receiver.next_event(self.heartbeat).await {
                Event::Messages(frame) => self.push(&frame),
                Event::Heartbeat => self.push(framing::HEARTBEAT),
                Event::Closed(frames) => {
                    for frame in &frames {
                        self.push(frame);
                    }
                    self.end();
                }
            }
        }
    }

    /// Ends the response after what is pending, leaving the session to the next request.
    fn end(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.finish();
        }
    }
}

/// The `c` parameter, checked: a 500 with the protocol's text when missing or unsafe.
fn callback(info: &RequestInfo) -> Result<String, Refused> {
    match info.callback.as_deref() {
        None | Some("") => Err(Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "\"callback\" parameter required")),
        Some(callback) if framing::valid_callback(callback) => Ok(callback.to_owned()),
        Some(_) => Err(Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "invalid \"callback\" parameter")),
    }
}

/// The htmlfile page's head, padded past 1 KiB so that browsers start running it at once.
fn htmlfile_head(callback: &str) -> String {
    let mut head = format!(
        "<!doctype html>\n\
         <html><head>\n  \
           <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
           <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n\
         </head><body><h2>Don't panic!</h2>\n  \
           <script>\n    \
             document.domain = document.domain;\n    \
             var c = parent.{callback};\n    \
             c.start();\n    \
             function p(d) {{c.message(d);}};\n    \
             window.onload = function() {{c.stop();}};\n  \
           </script>\n"
    );
    let padding = 1025usize.saturating_sub(head.len());
    head.push_str(&" ".repeat(padding));
    head.push_str("\r\n\r\n");
    head
}
