//! SockJS frames and the JSON quoting they need; no I/O.
//!
//! The server sends four frames: `o` (the session opened), `h` (heartbeat), `a[...]` (an array
//! of messages, each a JSON string) and `c[code,"reason"]` (the session closed). Each transport
//! wraps them differently ([`Wrapping`]): a newline for the XHR transports, `data: ...\r\n\r\n`
//! for EventSource, a `<script>` call for htmlfile, a JavaScript call for JSONP.
//!
//! Messages are quoted by hand rather than with `serde_json`, because SockJS needs more than
//! JSON's escaping: characters that browsers or proxies mangle (the zero-width and bidirectional
//! marks U+200C–U+200F, the line and paragraph separators and U+2028–U+202F, the invisible
//! operators U+2060–U+206F and the specials U+FFF0–U+FFFF) must travel as `\uXXXX` escapes.
//! Doing both in one pass keeps a delivery to one copy of its text.

use crate::protocol::codes;

/// The open frame.
pub const OPEN: &str = "o";
/// The heartbeat frame.
pub const HEARTBEAT: &str = "h";

/// The close code sent to a second receiver of one session.
pub const ANOTHER_CONNECTION: u16 = 2010;
/// The close code of a session whose receiving request was cut by the network.
pub const INTERRUPTED: u16 = 1002;
/// The close code of the protocol test application's `/close` service.
pub const GO_AWAY: u16 = 3000;

/// The text SockJS clients show for a close code.
pub fn close_reason(code: u16) -> &'static str {
    match code {
        codes::NORMAL => "Normal closure",
        codes::GOING_AWAY => "Going away",
        INTERRUPTED => "Connection interrupted",
        codes::INVALID_PAYLOAD => "Invalid payload",
        codes::POLICY_VIOLATION => "Client stopped reading",
        codes::MESSAGE_TOO_BIG => "Message too big",
        codes::REVOKED => "Revoked",
        ANOTHER_CONNECTION => "Another connection still open",
        GO_AWAY => "Go away!",
        _ => "Closed",
    }
}

/// The close frame `c[code,"reason"]`.
pub fn close_frame(code: u16) -> String {
    let mut frame = format!("c[{code},");
    quote_into(&mut frame, close_reason(code));
    frame.push(']');
    frame
}

/// The message frame `a[...]` for `messages` (each a message's text).
pub fn message_frame<'a>(messages: impl IntoIterator<Item = &'a str>) -> String {
    let mut frame = String::from("a[");
    for (index, message) in messages.into_iter().enumerate() {
        if index > 0 {
            frame.push(',');
        }
        quote_into(&mut frame, message);
    }
    frame.push(']');
    frame
}

/// Appends `text` to `out` as a JSON string, with the extra escapes SockJS requires.
pub fn quote_into(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    // Copy runs of characters that need no escape in one go.
    let mut run_start = 0;
    for (index, ch) in text.char_indices() {
        let escape: Option<&str> = match ch {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        if escape.is_none() && !needs_unicode_escape(ch) {
            continue;
        }
        out.push_str(&text[run_start..index]);
        match escape {
            Some(short) => out.push_str(short),
            None => push_unicode_escape(out, ch),
        }
        run_start = index + ch.len_utf8();
    }
    out.push_str(&text[run_start..]);
    out.push('"');
}

/// Whether `ch` must be sent as `\uXXXX`: control characters, and what browsers mangle.
fn needs_unicode_escape(ch: char) -> bool {
    matches!(ch,
        '\u{0}'..='\u{1f}'
        | '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}')
}

fn push_unicode_escape(out: &mut String, ch: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Every escaped character is in the Basic Multilingual Plane, so one `\uXXXX` suffices.
    let code = u32::from(ch);
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(char::from(HEX[((code >> shift) & 0xf) as usize]));
    }
}

/// How a transport wraps each frame on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wrapping {
    /// `frame\n`: xhr polling and xhr streaming.
    Newline,
    /// `data: frame\r\n\r\n`: EventSource.
    EventSource,
    /// `<script>\np("frame");\n</script>\r\n`: htmlfile.
    HtmlFile,
    /// `/**/callback("frame");\r\n`: JSONP polling, with the client's callback name.
    Jsonp(String),
}

impl Wrapping {
    /// `frame` as this transport sends it.
    pub fn wrap(&self, frame: &str) -> String {
        match self {
            Wrapping::Newline => {
                let mut out = String::with_capacity(frame.len() + 1);
                out.push_str(frame);
                out.push('\n');
                out
            }
            Wrapping::EventSource => format!("data: {frame}\r\n\r\n"),
            Wrapping::HtmlFile => {
                let mut out = String::from("<script>\np(");
                quote_into(&mut out, frame);
                out.push_str(");\n</script>\r\n");
                out
            }
            Wrapping::Jsonp(callback) => {
                // The leading comment defeats "Rosetta Flash"-style attacks that make a JSONP
                // response start with attacker-chosen bytes.
                let mut out = format!("/**/{callback}(");
                quote_into(&mut out, frame);
                out.push_str(");\r\n");
                out
            }
        }
    }
}

/// Whether a JSONP/htmlfile callback name is acceptable: letters, digits, `-`, `_` and `.`
/// only, so it cannot inject script.
pub fn valid_callback(callback: &str) -> bool {
    !callback.is_empty()
        && callback.len() <= 256
        && callback.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a client's payload was refused; the texts are the ones SockJS clients and its protocol
/// suite expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// No body, or an empty `d` form field.
    #[error("Payload expected.")]
    Missing,
    /// Not JSON, or JSON that is not a string or an array of strings.
    #[error("Broken JSON encoding.")]
    Broken,
}

/// The messages a client sent: a JSON array of strings, or (WebSocket transport) one string.
pub fn parse_messages(payload: &[u8]) -> Result<Vec<String>, PayloadError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Missing);
    }
    match serde_json::from_slice::<Messages>(payload) {
        Ok(Messages::Many(messages)) => Ok(messages),
        Ok(Messages::One(message)) => Ok(vec![message]),
        Err(_) => Err(PayloadError::Broken),
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Messages {
    Many(Vec<String>),
    One(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_have_the_protocol_shape() {
        assert_eq!(message_frame(["a", "b\"c"]), r#"a["a","b\"c"]"#);
        assert_eq!(message_frame(std::iter::empty()), "a[]");
        assert_eq!(close_frame(3000), r#"c[3000,"Go away!"]"#);
        assert_eq!(close_frame(2010), r#"c[2010,"Another connection still open"]"#);
    }

    #[test]
    fn transports_wrap_frames() {
        let frame = message_frame(["x"]);
        assert_eq!(Wrapping::Newline.wrap(&frame), "a[\"x\"]\n");
        assert_eq!(Wrapping::EventSource.wrap(&frame), "data: a[\"x\"]\r\n\r\n");
        assert_eq!(Wrapping::HtmlFile.wrap(&frame), "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n");
        assert_eq!(Wrapping::Jsonp("cb".into()).wrap(OPEN), "/**/cb(\"o\");\r\n");
    }

    #[test]
    fn mangled_characters_are_escaped_in_lowercase_hex() {
        let mut out = String::new();
        quote_into(&mut out, "\u{200c}\u{2028}\u{2060}\u{fff0}\u{ffff}\u{1}é");
        assert_eq!(out, "\"\\u200c\\u2028\\u2060\\ufff0\\uffff\\u0001é\"");
    }

    #[test]
    fn callbacks_are_restricted() {
        assert!(valid_callback("callback"));
        assert!(valid_callback("a.b-c_1"));
        for bad in ["", " ", "*", "abc(", "a b", "x;alert(1)"] {
            assert!(!valid_callback(bad), "{bad:?}");
        }
    }

    #[test]
    fn payloads_are_parsed_or_refused() {
        assert_eq!(parse_messages(br#"["a","b"]"#), Ok(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(parse_messages(br#""a""#), Ok(vec!["a".to_owned()]));
        assert_eq!(parse_messages(b"[]"), Ok(vec![]));
        assert_eq!(parse_messages(b""), Err(PayloadError::Missing));
        assert_eq!(parse_messages(br#"["x"#), Err(PayloadError::Broken));
        assert_eq!(parse_messages(b"[1]"), Err(PayloadError::Broken));
        assert_eq!(parse_messages(b"{}"), Err(PayloadError::Broken));
    }

    proptest! {
        #[test]
        fn quoting_round_trips_and_leaves_nothing_mangleable(text in "\\PC*|[\u{0}-\u{2f}\u{2000}-\u{2070}\u{fff0}-\u{ffff}]*") {
            let mut out = String::new();
            quote_into(&mut out, &text);
            let back: String = serde_json::from_str(&out).expect("quoted text is JSON");
            prop_assert_eq!(&back, &text);
            prop_assert!(!out.chars().any(needs_unicode_escape));
        }
    }
}
