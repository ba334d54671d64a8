//! What every SockJS answer shares: CORS, caching, the `JSESSIONID` cookie, error pages, and
//! the few request headers and query parameters the transports read.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::Response;

/// How long cacheable answers (the iframe page, CORS preflights) may be cached: a year.
const ONE_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const NOT_CACHED: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";

/// `text/plain;charset=UTF-8`.
pub const TEXT: &str = "text/plain; charset=UTF-8";
/// `application/javascript;charset=UTF-8`.
pub const JAVASCRIPT: &str = "application/javascript; charset=UTF-8";
/// `application/json;charset=UTF-8`.
pub const JSON: &str = "application/json; charset=UTF-8";
/// `text/html;charset=UTF-8`.
pub const HTML: &str = "text/html; charset=UTF-8";
/// `text/event-stream`.
pub const EVENT_STREAM: &str = "text/event-stream";

/// The parts of a request the transports read.
#[derive(Debug, Default)]
pub struct RequestInfo {
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// The client's `JSESSIONID` cookie, if any.
    pub jsessionid: Option<String>,
    /// `Access-Control-Request-Headers` of a preflight.
    pub request_headers: Option<HeaderValue>,
    /// `If-None-Match`.
    pub if_none_match: Option<HeaderValue>,
    /// The `c` query parameter: the JSONP/htmlfile callback.
    pub callback: Option<String>,
    /// The `token` query parameter: the connection token.
    pub token: Option<String>,
    /// The query string repeats `token`: it cannot be trusted to carry one token.
    pub token_repeated: bool,
    /// The request's `Content-Type` says the body is a form.
    pub form_body: bool,
}

impl RequestInfo {
    /// Reads what the transports need from the request head.
    pub fn from_parts(parts: &Parts) -> RequestInfo {
        let headers = &parts.headers;
        let text = |name: HeaderName| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let mut info = RequestInfo {
            origin: text(header::ORIGIN),
            jsessionid: headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|cookies| cookies.split(';'))
                .filter_map(|cookie| cookie.trim().strip_prefix("JSESSIONID="))
                .find(|value| cookie_value_ok(value))
                .map(str::to_owned),
            request_headers: headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
            if_none_match: headers.get(header::IF_NONE_MATCH).cloned(),
            form_body: text(header::CONTENT_TYPE)
                .is_some_and(|value| value.trim_start().starts_with("application/x-www-form-urlencoded")),
            ..RequestInfo::default()
        };
        for (name, value) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
            match &*name {
                "c" => info.callback = Some(value.into_owned()),
                "token" if info.token.is_some() => info.token_repeated = true,
                "token" => info.token = Some(value.into_owned()),
                _ => {}
            }
        }
        info
    }
}

/// A cookie value we can echo back without building a broken header.
fn cookie_value_ok(value: &str) -> bool {
    !value.is_empty() && value.len() <= 256 && value.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
}

/// A response with a status, an optional content type and a body.
pub fn response(status: StatusCode, content_type: Option<&'static str>, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// `404 Not Found`.
pub fn not_found() -> Response {
    response(StatusCode::NOT_FOUND, Some(TEXT), "Not found")
}

/// `405 Method Not Allowed` with `Allow` and, as the protocol asks, no body and no type.
pub fn method_not_allowed(methods: &[Method]) -> Response {
    let mut response = response(StatusCode::METHOD_NOT_ALLOWED, None, Body::empty());
    let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    if let Ok(allow) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// A plain-text error page.
pub fn error(status: StatusCode, text: impl Into<String>) -> Response {
    response(status, Some(TEXT), text.into())
}

/// A refused request: the status and text of its plain-text error page.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status.
    pub status: StatusCode,
    /// What the client is told.
    pub text: String,
}

impl Refused {
    /// A refusal with `status` and `text`.
    pub fn new(status: StatusCode, text: impl Into<String>) -> Refused {
        Refused { status, text: text.into() }
    }

    /// The error page.
    pub fn into_response(self) -> Response {
        error(self.status, self.text)
    }
}

/// Adds the CORS headers: the request's origin with credentials allowed, or `*` without an
/// origin.
pub fn cors(headers: &mut HeaderMap, info: &RequestInfo) {
    match info.origin.as_deref().and_then(|origin| HeaderValue::from_str(origin).ok()) {
        Some(origin) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        None => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
    }
}

/// Forbids caching: answers to GETs and POSTs that carry session data.
pub fn no_cache(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NOT_CACHED));
}

/// Allows caching for a year: the iframe page, CORS preflights.
pub fn cache_for_a_year(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000"));
    let expires = httpdate::fmt_http_date(SystemTime::now() + ONE_YEAR);
    if let Ok(expires) = HeaderValue::from_str(&expires) {
        headers.insert(header::EXPIRES, expires);
    }
}

/// Sets `JSESSIONID` (the client's own, or `dummy`) when the endpoint asks for the cookie.
pub fn session_cookie(headers: &mut HeaderMap, info: &RequestInfo, cookie_needed: bool) {
    if !cookie_needed {
        return;
    }
    let value = format!("JSESSIONID={}; path=/", info.jsessionid.as_deref().unwrap_or("dummy"));
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(header::SET_COOKIE, value);
    }
}

/// The answer to a CORS preflight for a path taking `methods`.
pub fn preflight(info: &RequestInfo, methods: &[Method], cookie_needed: bool) -> Response {
    let mut response = response(StatusCode::NO_CONTENT, None, Body::empty());
    let headers = response.headers_mut();
    cache_for_a_year(headers);
    cors(headers, info);
    session_cookie(headers, info, cookie_needed);
    let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    if let Ok(allow) = HeaderValue::from_str(&allow) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, allow);
    }
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(ONE_YEAR.as_secs()));
    if let Some(requested) = info.request_headers.as_ref().filter(|value| !value.is_empty()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    response
}
