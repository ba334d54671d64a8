//! The WebSocket `Origin` check: browsers may connect only from configured origins.

/// Whether an upgrade with this `Origin` header value may proceed.
///
/// No header means a non-browser client (browsers always send one), which the protocol accepts.
/// Comparison ignores ASCII case and a trailing slash, since origins are case-insensitive in
/// scheme and host.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim_end_matches('/');
    allowed.iter().any(|entry| entry == "*" || entry.trim_end_matches('/').eq_ignore_ascii_case(origin))
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
}
