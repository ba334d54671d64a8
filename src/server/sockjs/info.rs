//! The static answers: the greeting, `/info` and the iframe page.

use std::fmt::Write;

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::http::{self, RequestInfo};
use super::Options;

/// `GET <prefix>`: the greeting clients and people can check the endpoint with.
pub fn greeting() -> Response {
    http::response(StatusCode::OK, Some(http::TEXT), "Welcome to SockJS!\n")
}

/// `GET <prefix>/info`: what the endpoint supports, and fresh entropy (clients use it for
/// session ids). Never cached: clients also time this request to pick a transport.
pub fn info(info: &RequestInfo, options: &Options) -> Response {
    let body = serde_json::json!({
        "websocket": options.websocket,
        "cookie_needed": options.cookie_needed,
        "origins": ["*:*"],
        "entropy": rand::random::<u32>(),
    });
    let mut response = http::response(StatusCode::OK, Some(http::JSON), body.to_string());
    let headers = response.headers_mut();
    http::no_cache(headers);
    http::cors(headers, info);
    response
}

/// The iframe page of the iframe-based transports, with its ETag.
#[derive(Debug)]
pub struct IframePage {
    body: String,
    etag: HeaderValue,
}

impl IframePage {
    /// The page loading sockjs-client from `client_url` (validated by the configuration: no
    /// quote or angle bracket can reach the HTML).
    pub fn new(client_url: &str) -> IframePage {
        let body = format!(
            "<!DOCTYPE html>\n\
             <html>\n\
             <head>\n  \
               <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
               <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n  \
               <script src=\"{client_url}\"></script>\n  \
               <script>\n    \
                 document.domain = document.domain;\n    \
                 SockJS.bootstrap_iframe();\n  \
               </script>\n\
             </head>\n\
             <body>\n  \
               <h2>Don't panic!</h2>\n  \
               <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>\n\
             </body>\n\
             </html>"
        );
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest.iter().take(12).fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        });
        let etag = HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        IframePage { body, etag }
    }

    /// `GET <prefix>/iframe*.html`: the page, or 304 when the client has it.
    pub fn respond(&self, info: &RequestInfo) -> Response {
        if info.if_none_match.as_ref() == Some(&self.etag) {
            let mut response = http::response(StatusCode::NOT_MODIFIED, None, Body::empty());
            response.headers_mut().insert(header::ETAG, self.etag.clone());
            return response;
        }
        let mut response = http::response(StatusCode::OK, Some(http::HTML), self.body.clone());
        let headers = response.headers_mut();
        http::cache_for_a_year(headers);
        headers.insert(header::ETAG, self.etag.clone());
        response
    }
}
