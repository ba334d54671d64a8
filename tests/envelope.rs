//! The one-pass envelope reader (`Envelope::parse`) against the straightforward reading it
//! replaced: the whole frame into a `serde_json::Value`, then the envelope's and the request's
//! fields taken out of it. Both must accept and refuse the same frames, with the same error
//! texts and the same request, over every frame of the committed fuzz inputs (thousands of
//! malformed, truncated, oddly nested and oddly typed frames) and a few written by hand.

use std::fs;
use std::path::Path;

use serde_json::{Map, Value};
use snorky::protocol::{Envelope, EnvelopeError, RequestError, RpcError};

/// A request as both readers give it: command, params, callId.
type Fields = (Option<String>, Map<String, Value>, Option<Value>);
/// What a reader makes of a frame: the service and the request, or why not.
type Reading = Result<(String, Result<Fields, RequestError>), EnvelopeError>;

/// The reading `Envelope::parse` replaced (docs/protocol.md's rules, applied to a `Value`).
fn through_value(text: &[u8]) -> Reading {
    let value: Value = serde_json::from_slice(text).map_err(|err| EnvelopeError::NotJson(err.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(EnvelopeError::NotObject);
    };
    let Some(Value::String(service)) = object.remove("service") else {
        return Err(EnvelopeError::MissingService);
    };
    let message = object.remove("message").ok_or(EnvelopeError::MissingMessage)?;
    Ok((service, request_of(message)))
}

fn request_of(message: Value) -> Result<Fields, RequestError> {
    let Value::Object(mut object) = message else {
        return Err(RequestError::Unreadable("message is not an object"));
    };
    let call_id = object.remove("callId");
    let (Some(command), Some(params)) = (object.remove("command"), object.remove("params")) else {
        return match call_id {
            Some(call_id) => Err(RequestError::Reply { call_id: Some(call_id), error: RpcError::InvalidMessage }),
            None => Err(RequestError::Unreadable("request without command or params, and no callId")),
        };
    };
    let Value::Object(params) = params else {
        return Err(RequestError::Reply { call_id, error: RpcError::InvalidParams });
    };
    let command = match command {
        Value::String(command) => Some(command),
        _ => None,
    };
    Ok((command, params, call_id))
}

/// What `Envelope::parse` makes of a frame, in the same terms.
fn one_pass(text: &[u8]) -> Reading {
    let envelope = Envelope::parse(text)?;
    let request = envelope
        .request
        .map(|request| (request.command.map(std::borrow::Cow::into_owned), request.params.into_map(), request.call_id));
    Ok((envelope.service.into_owned(), request))
}

/// Every frame of the committed inputs of the `frame` fuzz target (frames separated by 0xFF,
/// each after a selector byte), and every whole input of the other targets as one frame.
fn corpus_frames() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut frames = Vec::new();
    for kind in ["corpus", "regressions"] {
        for target in ["frame", "rpc", "backend"] {
            let Ok(entries) = fs::read_dir(root.join(kind).join(target)) else { continue };
            for entry in entries {
                let data = fs::read(entry.expect("a readable directory").path()).expect("a readable input");
                if target == "frame" {
                    frames.extend(
                        data.split(|&byte| byte == 0xFF).filter_map(|chunk| chunk.get(1..)).map(<[u8]>::to_vec),
                    );
                }
                frames.push(data);
            }
        }
    }
    frames
}

#[test]
fn reads_every_fuzz_frame_as_through_a_value() {
    let frames = corpus_frames();
    assert!(frames.len() > 5_000, "the fuzz corpora are committed: {} frames", frames.len());
    let (mut requests, mut refused) = (0, 0);
    for frame in &frames {
        let expected = through_value(frame);
        assert_eq!(one_pass(frame), expected, "frame {:?}", String::from_utf8_lossy(frame));
        match expected {
            Ok((_, Ok(_))) => requests += 1,
            _ => refused += 1,
        }
    }
    // Both kinds are well represented, or the comparison proves little.
    assert!(requests > 1_000 && refused > 1_000, "{requests} requests, {refused} refused");
}

#[test]
fn reads_hand_written_edge_cases_as_through_a_value() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let frames = [
        r#"{"service": "pubsub", "message": {"command": "subscribe", "params": {"channel": "a"}, "callId": 1}}"#
            .to_owned(),
        r#"{"service": "pub\u0073ub", "message": {"command": "sub\nscribe", "params": {}, "callId": "\ud83d\ude00"}}"#
            .to_owned(),
        r#"{"service": 1, "service": "x", "message": 1, "message": {"params": {}, "callId": null}}"#.to_owned(),
        r#"{"service": "x", "service": [1], "message": {}}"#.to_owned(),
        r#"{"service": "x", "message": {"command": [1, {"a": 2}], "params": {"p": 1e10}, "callId": {"k": [1]}}}"#
            .to_owned(),
        r#"{"service": "x", "message": {"command": "a", "params": null, "callId": 1.5}}"#.to_owned(),
        r#"{"service": "x", "message": {"command": "a", "params": {}, "other": 1e400}}"#.to_owned(),
        r#"{"service": "x", "message": {"command": "a", "params": {}}, "extra": 1e400}"#.to_owned(),
        r#"{"service": "x", "message": "text"}"#.to_owned(),
        r#"{"service": "x", "message": [1e400]}"#.to_owned(),
        format!(r#"{{"service": "x", "message": {{"command": "a", "params": {{}}, "o": {deep}}}}}"#),
        format!(r#"{{"service": {deep}, "message": 1}}"#),
        r#"{"service": "x", "message": {"command": "a", "params": {}}} x"#.to_owned(),
        r#"{"service": "x", "message": {"command": "a\ud800", "params": {}}}"#.to_owned(),
        r#"{"service": "x", 1: 2}"#.to_owned(),
        " [1, 2] ".to_owned(),
        "null".to_owned(),
        String::new(),
    ];
    for frame in &frames {
        assert_eq!(one_pass(frame.as_bytes()), through_value(frame.as_bytes()), "frame {frame}");
    }
    let invalid_utf8 = b"{\"service\": \"\xC3\x28\", \"message\": {}}";
    assert_eq!(one_pass(invalid_utf8), through_value(invalid_utf8));
}
