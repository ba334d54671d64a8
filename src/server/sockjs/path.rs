//! The URL scheme under a SockJS prefix, and which methods each path takes; no I/O.
//!
//! ```text
//! <prefix>                         greeting          GET
//! <prefix>/info                    capabilities      GET, OPTIONS
//! <prefix>/iframe[-version].html   iframe page       GET
//! <prefix>/websocket               raw WebSocket     GET
//! <prefix>/<server>/<session>/<transport>
//! ```
//!
//! `server` and `session` are any non-empty text without `/` or `.`; the server id is for load
//! balancers and is ignored here. Ids longer than [`MAX_ID_LEN`] are refused (404) so that a
//! client cannot make the session table hold arbitrarily long keys.

use axum::http::Method;

/// The longest server or session id accepted. SockJS clients send 3 and 8 characters; a UUID
/// is 36.
pub const MAX_ID_LEN: usize = 128;

/// A path under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `<prefix>` or `<prefix>/`: "Welcome to SockJS!".
    Greeting,
    /// `/info`: what the server supports.
    Info,
    /// `/iframe.html` and its versioned names.
    Iframe,
    /// `/websocket`: WebSocket without SockJS framing.
    RawWebSocket,
    /// `/<server>/<session>/<transport>`.
    Session {
        /// The client-chosen session id.
        session: String,
        /// The transport the request uses.
        transport: Transport,
    },
    /// Anything else.
    NotFound,
}

/// The session transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `websocket`: WebSocket with SockJS framing.
    WebSocket,
    /// `xhr`: long polling.
    Xhr,
    /// `xhr_send`: messages from the client for the XHR, EventSource and htmlfile transports.
    XhrSend,
    /// `xhr_streaming`: a long-lived POST response.
    XhrStreaming,
    /// `eventsource`: server-sent events.
    EventSource,
    /// `htmlfile`: a long-lived HTML page of `<script>` calls.
    HtmlFile,
    /// `jsonp`: polling with a JavaScript callback.
    Jsonp,
    /// `jsonp_send`: messages from the client for JSONP (a form post).
    JsonpSend,
}

impl Transport {
    fn parse(name: &str) -> Option<Transport> {
        Some(match name {
            "websocket" => Transport::WebSocket,
            "xhr" => Transport::Xhr,
            "xhr_send" => Transport::XhrSend,
            "xhr_streaming" => Transport::XhrStreaming,
            "eventsource" => Transport::EventSource,
            "htmlfile" => Transport::HtmlFile,
            "jsonp" => Transport::Jsonp,
            "jsonp_send" => Transport::JsonpSend,
            _ => return None,
        })
    }

    /// The transport's name in URLs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Xhr => "xhr",
            Transport::XhrSend => "xhr_send",
            Transport::XhrStreaming => "xhr_streaming",
            Transport::EventSource => "eventsource",
            Transport::HtmlFile => "htmlfile",
            Transport::Jsonp => "jsonp",
            Transport::JsonpSend => "jsonp_send",
        }
    }
}

impl Route {
    /// Parses the part of the path after the prefix (`""`, `"/info"`, `"/000/abc/xhr"`).
    pub fn parse(rest: &str) -> Route {
        if rest.is_empty() || rest == "/" {
            return Route::Greeting;
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Route::NotFound;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["info"] => Route::Info,
            ["websocket"] => Route::RawWebSocket,
            [page] if is_iframe_page(page) => Route::Iframe,
            [server, session, transport] if valid_id(server) && valid_id(session) => {
                match Transport::parse(transport) {
                    Some(transport) => Route::Session { session: (*session).to_owned(), transport },
                    None => Route::NotFound,
                }
            }
            _ => Route::NotFound,
        }
    }

    /// The methods the route answers; anything else gets 405 with this list in `Allow`.
    pub fn methods(&self) -> &'static [Method] {
        const GET: &[Method] = &[Method::GET];
        const GET_OPTIONS: &[Method] = &[Method::OPTIONS, Method::GET];
        const POST: &[Method] = &[Method::POST];
        const POST_OPTIONS: &[Method] = &[Method::OPTIONS, Method::POST];
        match self {
            Route::Info => GET_OPTIONS,
            Route::Session { transport, .. } => match transport {
                Transport::Xhr | Transport::XhrSend | Transport::XhrStreaming => POST_OPTIONS,
                Transport::JsonpSend => POST,
                Transport::WebSocket | Transport::EventSource | Transport::HtmlFile | Transport::Jsonp => GET,
            },
            Route::Greeting | Route::Iframe | Route::RawWebSocket | Route::NotFound => GET,
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && !id.contains('.')
}

/// `iframe.html`, `iframe-<version>.html`: the version is lowercase letters, digits, `.`, `-`, `_`.
fn is_iframe_page(name: &str) -> bool {
    name.strip_prefix("iframe").and_then(|rest| rest.strip_suffix(".html")).is_some_and(|version| {
        version.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, transport: Transport) -> Route {
        Route::Session { session: id.to_owned(), transport }
    }

    #[test]
    fn static_paths() {
        assert_eq!(Route::parse(""), Route::Greeting);
        assert_eq!(Route::parse("/"), Route::Greeting);
        assert_eq!(Route::parse("/info"), Route::Info);
        assert_eq!(Route::parse("/websocket"), Route::RawWebSocket);
        for page in ["/iframe.html", "/iframe-a.html", "/iframe-.html", "/iframe-0.1.2abc-dirty.2144.html"] {
            assert_eq!(Route::parse(page), Route::Iframe, "{page}");
        }
        for missing in ["/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/iframe.htm", "/IFRAME.HTML", "/iframe-/.html"]
        {
            assert_eq!(Route::parse(missing), Route::NotFound, "{missing}");
        }
    }

    #[test]
    fn session_paths() {
        assert_eq!(Route::parse("/000/abc/xhr"), session("abc", Transport::Xhr));
        assert_eq!(Route::parse("/a/b%20c/jsonp_send"), session("b%20c", Transport::JsonpSend));
        for bad in ["//xhr", "/a./a/xhr", "/a/a./xhr", "/./././xhr", "/a/a/xhr/", "/a/a/nope", "////xhr"] {
            assert_eq!(Route::parse(bad), Route::NotFound, "{bad}");
        }
        let long = format!("/000/{}/xhr", "x".repeat(MAX_ID_LEN + 1));
        assert_eq!(Route::parse(&long), Route::NotFound);
    }

    #[test]
    fn methods_per_transport() {
        assert_eq!(session("a", Transport::WebSocket).methods(), &[Method::GET]);
        assert!(session("a", Transport::XhrSend).methods().contains(&Method::OPTIONS));
        assert!(Route::Info.methods().contains(&Method::OPTIONS));
    }
}
