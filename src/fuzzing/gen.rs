//! Values built from the fuzzer's bytes: JSON of every type, filter expressions, subscription
//! items and deltas.
//!
//! Each generator mostly picks from the names and values the services give a meaning to (so
//! that two requests of one input meet on the same channel, dealer or field) and otherwise
//! takes arbitrary text and numbers; every generator can also produce something of the wrong
//! type. Nesting and lengths are bounded so a generated value costs a bounded time to build
//! and to drop. When the bytes run out, `arbitrary` answers with the smallest choice, so every
//! generator terminates.

use arbitrary::{Result, Unstructured};
use serde_json::{json, Map, Value};

/// How deeply generated JSON nests.
pub const DEPTH: usize = 3;

/// The most elements of a generated array or object.
const WIDTH: usize = 4;

/// Text the services give a meaning to: field paths, dealer and model names, identities,
/// operators, delta types, and a few awkward strings.
const WORDS: &[&str] = &[
    "",
    "a",
    "b",
    "k",
    "id",
    "owner",
    "owner.id",
    "owner.k",
    "a.b",
    "missing",
    "Task",
    "Player",
    "all_tasks",
    "tasks_by_owner",
    "tasks_by_fn",
    "tasks",
    "players",
    "alice",
    "bob",
    "revoked",
    "explode",
    "==",
    "<",
    "<=",
    ">",
    ">=",
    "and",
    "or",
    "not",
    "insert",
    "update",
    "delete",
    "data",
    "newData",
    "oldData",
    ".",
    "a..b",
    "\u{0}",
    "é",
];

/// Numbers where equality and ordering rules have edges: `1 == 1.0`, `-0.0`, integers beyond
/// 2^53 that no `f64` holds, the extremes of `u64` and `i64`.
const NUMBERS: &[f64] = &[0.0, -0.0, 1.0, 2.0, 2.5, -1.0, 0.1, 1e300, -1e300, 9_007_199_254_740_992.0];

/// The operators of the filter language.
pub const OPERATORS: &[&str] = &["==", "<", "<=", ">", ">="];

/// A string: usually one of [`WORDS`], otherwise arbitrary text.
pub fn string(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(WORDS)?).to_owned())
    } else {
        Ok(u.arbitrary::<&str>()?.to_owned())
    }
}

/// A number: an edge case, a small integer, or any `i64`, `u64` or finite `f64`.
pub fn number(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.choose_index(6)? {
        0 => Value::from(*u.choose(NUMBERS)?),
        1 => Value::from(u.int_in_range(0..=3_u8)?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => Value::from(u.arbitrary::<u64>()?),
        4 => Value::from(*u.choose(&[u64::MAX, 9_007_199_254_740_993, 1])?),
        // Non-finite numbers have no JSON form: `Value::from` makes them `null`.
        _ => Value::from(u.arbitrary::<f64>()?),
    })
}

/// Any JSON value, nested at most `depth` levels.
pub fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.choose_index(kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 | 4 => Value::String(string(u)?),
        5 => Value::Array(list(u, depth)?),
        _ => object(u, depth)?,
    })
}

/// An array of up to [`WIDTH`] values nested below `depth`.
fn list(u: &mut Unstructured<'_>, depth: usize) -> Result<Vec<Value>> {
    let length = u.int_in_range(0..=WIDTH)?;
    (0..length).map(|_| value(u, depth.saturating_sub(1))).collect()
}

/// An object of up to [`WIDTH`] fields (mostly named from [`WORDS`]) nested below `depth`.
pub fn object(u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    let length = u.int_in_range(0..=WIDTH)?;
    let mut fields = Map::new();
    for _ in 0..length {
        fields.insert(string(u)?, value(u, depth.saturating_sub(1))?);
    }
    Ok(Value::Object(fields))
}

/// A filter expression nested at most `depth` levels (each `and`, `or`, `not` a level), valid
/// or not: wrong arities, unknown operators, non-string fields and plain values occur too.
pub fn expression(u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    let kinds = if depth == 0 { 3 } else { 8 };
    Ok(match u.choose_index(kinds)? {
        0 | 1 => {
            let op = if u.ratio(15, 16)? { (*u.choose(OPERATORS)?).to_owned() } else { string(u)? };
            let field = if u.ratio(15, 16)? { Value::String(string(u)?) } else { value(u, 1)? };
            json!([op, field, value(u, 1)?])
        }
        2 => {
            // Something that is not an expression, or one of the wrong arity.
            if u.arbitrary()? {
                value(u, 1)?
            } else {
                let op = if u.arbitrary()? { (*u.choose(OPERATORS)?).to_owned() } else { "not".to_owned() };
                let mut parts = vec![Value::String(op)];
                parts.extend(list(u, 1)?);
                Value::Array(parts)
            }
        }
        3 | 4 => operation("and", u, depth)?,
        5 => operation("or", u, depth)?,
        6 => json!(["not", expression(u, depth - 1)?]),
        _ => {
            // A chain of `not`s deeper than any limit, built without recursion.
            let mut chain = expression(u, 0)?;
            for _ in 0..u.int_in_range(0..=40_u8)? {
                chain = json!(["not", chain]);
            }
            chain
        }
    })
}

fn operation(op: &str, u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    let mut parts = vec![Value::from(op)];
    for _ in 0..u.int_in_range(0..=WIDTH)? {
        parts.push(expression(u, depth - 1)?);
    }
    Ok(Value::Array(parts))
}

/// The dealers of the fuzzed DataSync services: (name, what its queries are).
pub const DEALERS: &[(&str, QueryKind)] = &[
    ("all_tasks", QueryKind::Broadcast),
    ("tasks_by_owner", QueryKind::Key),
    ("tasks_by_fn", QueryKind::Key),
    ("tasks", QueryKind::Filter),
    ("players", QueryKind::Filter),
];

/// What a dealer expects as a query.
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    /// Anything (ignored).
    Broadcast,
    /// A key value.
    Key,
    /// A filter expression.
    Filter,
}

/// The `items` parameter of `authorizeSubscription`: usually a list of items naming the known
/// dealers with a query of the kind each expects; sometimes missing fields, unknown dealers,
/// or something that is not a list at all.
pub fn items(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 16)? {
        return value(u, 2);
    }
    let mut items = Vec::new();
    for _ in 0..u.int_in_range(0..=WIDTH)? {
        items.push(item(u)?);
    }
    Ok(Value::Array(items))
}

/// One subscription item.
pub fn item(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 16)? {
        return value(u, 2);
    }
    let &(name, kind) = u.choose(DEALERS)?;
    let mut fields = Map::new();
    if u.ratio(15, 16)? {
        let dealer = if u.ratio(15, 16)? { Value::from(name) } else { value(u, 1)? };
        fields.insert("dealer".to_owned(), dealer);
    }
    if u.ratio(15, 16)? {
        let query = match kind {
            QueryKind::Filter if u.ratio(7, 8)? => expression(u, 4)?,
            _ => value(u, 2)?,
        };
        fields.insert("query".to_owned(), query);
    }
    Ok(Value::Object(fields))
}

/// The `deltas` parameter of `publishDeltas`: usually a list of deltas of the known models;
/// sometimes with a missing or mistyped field, an unknown model or type, or not a list.
pub fn deltas(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 16)? {
        return value(u, 2);
    }
    let mut deltas = Vec::new();
    for _ in 0..u.int_in_range(0..=WIDTH)? {
        deltas.push(delta(u)?);
    }
    Ok(Value::Array(deltas))
}

/// One delta, as the web application would send it.
pub fn delta(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 32)? {
        return value(u, 2);
    }
    let mut fields = Map::new();
    let kind = *u.choose(&["insert", "update", "delete"])?;
    let malformed = u.ratio(1, 8)?;
    let mut field = |u: &mut Unstructured<'_>, name: &str, good: Value| -> Result<()> {
        if !malformed || u.arbitrary()? {
            let given = if malformed && u.arbitrary()? { value(u, 1)? } else { good };
            fields.insert(name.to_owned(), given);
        }
        Ok(())
    };
    field(u, "type", Value::from(kind))?;
    let model = if u.ratio(3, 4)? { "Task" } else { "Player" };
    field(u, "model", Value::from(model))?;
    if kind == "update" {
        let snake = u.ratio(1, 8)?;
        let new = object(u, DEPTH)?;
        field(u, if snake { "new_data" } else { "newData" }, new)?;
        let old = object(u, DEPTH)?;
        field(u, if snake { "old_data" } else { "oldData" }, old)?;
    } else {
        let data = object(u, DEPTH)?;
        field(u, "data", data)?;
    }
    Ok(Value::Object(fields))
}
