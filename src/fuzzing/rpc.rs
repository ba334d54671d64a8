//! The `rpc` target: requests for every command of every service, frontend and backend, built
//! from the fuzzer's bytes so that each parameter is sometimes right, sometimes missing, and
//! sometimes of any other JSON type; the envelope and the request around them are sometimes
//! malformed too. Requests come from several clients, which may also fall behind, leave and
//! come back; subscription tokens the backend hands out are fed back to the clients.

use arbitrary::{Result, Unstructured};
use serde_json::{json, Map, Value};

use super::gen;
use super::server::{request, run, Harness, ServiceCommands, BACKEND, FRONTEND};

/// The most steps of one input.
const MAX_STEPS: usize = 64;

/// Runs one input of the `rpc` target.
pub fn rpc(data: &[u8]) {
    let mut u = Unstructured::new(data);
    run(async move {
        let mut harness = Harness::new().await;
        let mut tokens = Vec::new();
        for _ in 0..MAX_STEPS {
            if u.is_empty() || step(&mut u, &mut harness, &mut tokens).await.is_err() {
                break;
            }
        }
        harness.finish().await;
    });
}

/// One step: a request from a client or from the backend, or something the transport does.
async fn step(u: &mut Unstructured<'_>, harness: &mut Harness, tokens: &mut Vec<String>) -> Result<()> {
    match u.choose_index(10)? {
        0..=4 => {
            let client = u.choose_index(harness.clients())?;
            let text = envelope(u, FRONTEND, tokens)?;
            harness.frame(client, &text).await;
        }
        5..=7 => {
            let body = envelope(u, BACKEND, tokens)?;
            let (_, answer) = harness.backend(body, u.ratio(1, 64)?, None).await;
            if answer["service"] == "datasync_backend" {
                if let Some(token) = answer["message"]["data"].as_str() {
                    tokens.push(token.to_owned());
                }
            }
        }
        8 => {
            let client = u.choose_index(harness.clients())?;
            harness.drain(client);
        }
        _ => {
            let client = u.choose_index(harness.clients())?;
            if u.arbitrary()? {
                harness.close(client).await;
            } else {
                harness.reconnect(client).await;
            }
        }
    }
    Ok(())
}

/// A request envelope for one of `services`, as text: usually a known command with its
/// parameters each right, missing or mistyped; sometimes an unknown service or command, params
/// that are not an object, or a request without command or params.
fn envelope(u: &mut Unstructured<'_>, services: &[ServiceCommands], tokens: &[String]) -> Result<Vec<u8>> {
    let &(service, commands) = u.choose(services)?;
    let service = if u.ratio(1, 64)? { gen::string(u)? } else { service.to_owned() };
    let &(command, names) = u.choose(commands)?;
    let command = match u.choose_index(64)? {
        0 => gen::value(u, 1)?,
        1 => Value::String(gen::string(u)?),
        _ => Value::from(command),
    };
    let mut params = Map::new();
    for &name in names {
        match u.choose_index(16)? {
            0 => {}
            1..=3 => {
                params.insert(name.to_owned(), gen::value(u, gen::DEPTH)?);
            }
            _ => {
                params.insert(name.to_owned(), parameter(u, name, tokens)?);
            }
        }
    }
    if u.ratio(1, 32)? {
        params.insert(gen::string(u)?, gen::value(u, 1)?);
    }
    let params = if u.ratio(1, 32)? { gen::value(u, 1)? } else { Value::Object(params) };
    let call_id = if u.ratio(3, 4)? { Some(gen::value(u, 1)?) } else { None };
    if u.ratio(1, 32)? {
        // Without command or params: "Invalid message" when there is a callId.
        let mut message = json!({});
        if u.arbitrary()? {
            message["command"] = command;
        } else {
            message["params"] = params;
        }
        if let Some(call_id) = call_id {
            message["callId"] = call_id;
        }
        return Ok(serde_json::to_vec(&json!({"service": service, "message": message})).unwrap_or_default());
    }
    Ok(request(&service, &command, &params, call_id.as_ref()))
}

/// A value of the type parameter `name` expects, most of the time one the services already
/// know (a token they handed out, a taken name).
fn parameter(u: &mut Unstructured<'_>, name: &str, tokens: &[String]) -> Result<Value> {
    Ok(match name {
        "token" if !tokens.is_empty() && u.ratio(3, 4)? => Value::from(u.choose(tokens)?.clone()),
        "token" | "name" | "sender" | "dest" => Value::String(gen::string(u)?),
        "identity" => match u.choose_index(4)? {
            0 => Value::Null,
            _ => Value::String(gen::string(u)?),
        },
        "key" => match u.choose_index(4)? {
            0 => Value::Null,
            1 => Value::String("k".repeat(u.int_in_range(200..=300)?)),
            _ => Value::String(gen::string(u)?),
        },
        // Offsets are decimal strings on one server; the stream of an input has a few dozen.
        "offsets" if u.ratio(7, 8)? => Value::Bool(u.arbitrary()?),
        "after" if u.ratio(3, 4)? => Value::String(u.int_in_range(0..=64_u8)?.to_string()),
        "items" => gen::items(u)?,
        "deltas" => gen::deltas(u)?,
        "newData" => {
            let mut update = Map::new();
            for field in ["position", "status"] {
                if u.arbitrary()? {
                    update.insert(field.to_owned(), gen::value(u, 1)?);
                }
            }
            Value::Object(update)
        }
        // channel, document, message, body, position, status, privateHandle, value: any JSON.
        _ => gen::value(u, gen::DEPTH)?,
    })
}
