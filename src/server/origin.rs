//! The WebSocket `Origin` check: browsers may connect only from configured origins.

/// Whether an upgrade with this `Origin` header value may proceed.
///
/// No header means a non-browser client (browsers always send one), which the protocol accepts.
/// Comparison ignores ASCII case and a trailing slash, since origins are case-insensitive in
/// scheme and host. An entry ending in `:*` (`http://localhost:*`) allows any port of that
/// scheme and host, for development servers whose port varies.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim_end_matches('/');
    allowed.iter().any(|entry| entry == "*" || entry_matches(entry.trim_end_matches('/'), origin))
}

fn entry_matches(entry: &str, origin: &str) -> bool {
    match entry.strip_suffix(":*") {
        Some(scheme_and_host) => origin
            .rsplit_once(':')
            .filter(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
            .is_some_and(|(base, _)| base.eq_ignore_ascii_case(scheme_and_host)),
        None => entry.eq_ignore_ascii_case(origin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&allowed, Some("https://app.example.com")));
        assert!(origin_allowed(&allowed, Some("HTTPS://APP.example.com/")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example.com")));
        assert!(!origin_allowed(&allowed, Some("http://app.example.com")));
        assert!(!origin_allowed(&[], Some("https://app.example.com")));
        assert!(origin_allowed(&["*".to_owned()], Some("https://anything.test")));
    }

    #[test]
    fn a_port_wildcard_allows_any_port_of_that_host() {
        let allowed = vec!["http://localhost:*".to_owned()];
        assert!(origin_allowed(&allowed, Some("http://localhost:8000")));
        assert!(origin_allowed(&allowed, Some("http://LOCALHOST:5173")));
        assert!(!origin_allowed(&allowed, Some("http://localhost")));
        assert!(!origin_allowed(&allowed, Some("https://localhost:8000")));
        assert!(!origin_allowed(&allowed, Some("http://localhost.evil.test:8000")));
        assert!(!origin_allowed(&allowed, Some("http://localhost:80x")));
    }
}
