//! JSON value semantics shared by filters, Simple dealer keys and hash indexes.
//!
//! docs/protocol.md ("Precise rules", `DataSync`) fixes how values compare: numbers by numeric
//! value (`1` equals `1.0`), every other type strictly (`"1"` is not `1`, `true` is not
//! `1`), arrays and objects structurally (objects ignoring key order), strings ordered by
//! Unicode code point, and any other ordering pair (a number against a string included)
//! not comparable. This module owns those rules, the dotted-path lookup into nested
//! objects, and [`ValueKey`], the hashable form of a value that lets the router (and
//! `pubsub` channels) find equal values with a hash map instead of a scan.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// Finds the value at a dotted `path` (`"owner.id"`) inside nested objects.
///
/// Each `.`-separated segment is an object key, so a key containing a dot cannot be
/// addressed. Returns `None` ("missing field") when a key is absent or when the path goes
/// through anything that is not an object: arrays are not indexed, because docs/protocol.md says
/// a path through a non-object is a missing field.
#[must_use]
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |current, segment| current.as_object()?.get(segment))
}

/// An estimate of the bytes `value` takes as JSON: exact for strings' contents and keys,
/// approximate for numbers and punctuation. Cheap (no allocation), for bounds on memory.
#[must_use]
pub fn json_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 12,
        Value::String(text) => text.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|item| json_size(item) + 1).sum::<usize>(),
        Value::Object(fields) => 2 + fields.iter().map(|(key, item)| key.len() + 4 + json_size(item)).sum::<usize>(),
    }
}

/// Whether two values are equal under docs/protocol.md's rules.
///
/// Numbers compare by numeric value, exactly (no rounding through `f64`: `2^53 + 1` is not
/// `2^53`); everything else is type-strict; arrays compare element by element; objects
/// compare as key → value maps, ignoring key order. Never allocates, because filters call
/// it once per candidate subscription.
#[must_use]
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => Num::of(x) == Num::of(y),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| values_equal(v, w)),
        (Value::Object(x), Value::Object(y)) => {
            // Keys are unique within an object, so equal sizes plus "every key of x is in y
            // with an equal value" is map equality.
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => false,
    }
}

/// Orders two values, or returns `None` when docs/protocol.md says they are not comparable.
///
/// Two numbers order numerically (exactly, as in [`values_equal`]); two strings order by
/// Unicode code point (Rust's byte order on UTF-8 is code-point order). Every other pair —
/// number against string, booleans, null, arrays, objects — is not comparable, so an
/// ordering filter on them is false rather than an arbitrary answer.
#[must_use]
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Num::of(x).partial_cmp_num(Num::of(y)),
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        _ => None,
    }
}

/// A hashable, canonical form of a JSON value: `ValueKey::of(a) == ValueKey::of(b)`
/// exactly when [`values_equal`]`(a, b)`.
///
/// It lets equal values meet in a `HashMap` (Simple dealer keys, the Filter equality
/// index, `pubsub` channels) although `serde_json::Value` is neither `Hash` nor compares
/// `1` equal to `1.0`. Numbers are normalised (integral values become integers), and
/// object entries are sorted by key so key order does not matter.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ValueKey(Repr);

/// The canonical tree behind [`ValueKey`]; private so the encoding can change freely.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Repr {
    Null,
    Bool(bool),
    Num(Num),
    Str(Box<str>),
    Array(Box<[Repr]>),
    /// Entries sorted by key; keys are unique, so the order is total.
    Object(Box<[(Box<str>, Repr)]>),
}

impl ValueKey {
    /// Computes the key of `value` (named like the placeholder `crate::value_key`, which
    /// this replaces).
    #[must_use]
    pub fn of(value: &Value) -> Self {
        Self(Repr::of(value))
    }
}

impl ValueKey {
    /// A name for the value that equal values share and others do not (32 hex digits of a
    /// SHA-256 of a canonical encoding): for naming shared state after a value, such as a
    /// broker channel per PubSub channel.
    #[must_use]
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        self.0.feed(&mut hasher);
        let hash = hasher.finalize();
        hash.iter().take(16).fold(String::with_capacity(32), |mut text, byte| {
            use std::fmt::Write as _;
            let _ = write!(text, "{byte:02x}");
            text
        })
    }
}

impl From<&Value> for ValueKey {
    fn from(value: &Value) -> Self {
        Self::of(value)
    }
}

impl Repr {
    /// Feeds a canonical, unambiguous encoding (a tag per node, lengths before contents).
    fn feed(&self, hasher: &mut sha2::Sha256) {
        use sha2::Digest;
        match self {
            Self::Null => hasher.update([0]),
            Self::Bool(b) => hasher.update([1, u8::from(*b)]),
            Self::Num(Num::Int(i)) => {
                hasher.update([2]);
                hasher.update(i.to_be_bytes());
            }
            Self::Num(Num::Float(bits)) => {
                hasher.update([3]);
                hasher.update(bits.to_be_bytes());
            }
            Self::Str(text) => {
                hasher.update([4]);
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
            Self::Array(items) => {
                hasher.update([5]);
                hasher.update((items.len() as u64).to_be_bytes());
                items.iter().for_each(|item| item.feed(hasher));
            }
            Self::Object(entries) => {
                hasher.update([6]);
                hasher.update((entries.len() as u64).to_be_bytes());
                for (key, item) in entries {
                    hasher.update((key.len() as u64).to_be_bytes());
                    hasher.update(key.as_bytes());
                    item.feed(hasher);
                }
            }
        }
    }

    fn of(value: &Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Num(Num::of(n)),
            Value::String(s) => Self::Str(s.as_str().into()),
            Value::Array(items) => Self::Array(items.iter().map(Self::of).collect()),
            Value::Object(map) => {
                let mut entries: Vec<(Box<str>, Self)> =
                    map.iter().map(|(k, v)| (k.as_str().into(), Self::of(v))).collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Self::Object(entries.into_boxed_slice())
            }
        }
    }
}

/// 2^127 as an `f64` (exactly representable): every integral `f64` strictly inside
/// `(-2^127, 2^127)` converts to `i128` without loss.
const I128_LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

/// A JSON number in canonical form, used both for equality and for [`ValueKey`].
///
/// Every number that has an exact integer value within `i128` is `Int` — JSON integers
/// (`i64`/`u64`) and integral floats such as `1.0` or `-0.0` alike — so `1 == 1.0` falls
/// out of plain structural equality. `Float` holds the rest: non-integral values (all of
/// magnitude below 2^52), values of magnitude at least 2^127, and the non-finite values a
/// JSON parser with `arbitrary_precision` might produce. Storing the bits keeps `Eq` and
/// `Hash` lawful; no two distinct finite non-integral floats share bits, and `-0.0` never
/// lands here, so bit equality is numeric equality.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Num {
    Int(i128),
    Float(u64),
}

impl Num {
    fn of(n: &Number) -> Self {
        if let Some(i) = n.as_i64() {
            return Self::Int(i.into());
        }
        if let Some(u) = n.as_u64() {
            return Self::Int(u.into());
        }
        // Without `arbitrary_precision` every other number is an f64; with it, a number
        // that does not parse cannot be compared meaningfully, and NaN says exactly that.
        Self::of_f64(n.as_f64().unwrap_or(f64::NAN))
    }

    // Exact comparison of a float with zero is the point: we need to know whether the
    // value is integral, and `as` is exact for integral values inside the limit.
    #[allow(clippy::float_cmp, clippy::cast_possible_truncation)]
    fn of_f64(f: f64) -> Self {
        if f.fract() == 0.0 && f.abs() < I128_LIMIT {
            Self::Int(f as i128)
        } else {
            Self::Float(f.to_bits())
        }
    }

    fn partial_cmp_num(self, other: Self) -> Option<Ordering> {
        match (self, other) {
            (Self::Int(x), Self::Int(y)) => Some(x.cmp(&y)),
            (Self::Float(x), Self::Float(y)) => f64::from_bits(x).partial_cmp(&f64::from_bits(y)),
            (Self::Int(i), Self::Float(f)) => cmp_int_float(i, f64::from_bits(f)),
            (Self::Float(f), Self::Int(i)) => cmp_int_float(i, f64::from_bits(f)).map(Ordering::reverse),
        }
    }
}

/// Orders an integer against a `Num::Float` value exactly. Such a float is either
/// non-integral (so it lies strictly between two integers and is never equal to `i`) or
/// of magnitude at least 2^127 (beyond every `i128`), or NaN (not comparable).
#[allow(clippy::cast_possible_truncation)]
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f.abs() >= I128_LIMIT {
        return Some(if f > 0.0 { Ordering::Less } else { Ordering::Greater });
    }
    // floor(f) < f < floor(f) + 1 and the cast is exact, so comparing with the floor
    // decides without rounding `i` to f64.
    let floor = f.floor() as i128;
    Some(if i <= floor { Ordering::Less } else { Ordering::Greater })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn eq(a: &Value, b: &Value) -> bool {
        let by_value = values_equal(a, b);
        assert_eq!(by_value, ValueKey::of(a) == ValueKey::of(b), "key and equality disagree on {a} / {b}");
        by_value
    }

    #[test]
    fn lookup_follows_dotted_paths() {
        let v = json!({"owner": {"id": 7, "team": {"name": "x"}}, "id": 1, "list": [{"a": 1}]});
        assert_eq!(lookup(&v, "id"), Some(&json!(1)));
        assert_eq!(lookup(&v, "owner.id"), Some(&json!(7)));
        assert_eq!(lookup(&v, "owner.team.name"), Some(&json!("x")));
        assert_eq!(lookup(&v, "owner"), Some(&json!({"id": 7, "team": {"name": "x"}})));
    }

    #[test]
    fn lookup_missing_and_through_non_objects() {
        let v = json!({"owner": {"id": 7}, "n": 3, "s": "str", "list": [{"a": 1}], "nul": null});
        assert_eq!(lookup(&v, "nope"), None);
        assert_eq!(lookup(&v, "owner.nope"), None);
        assert_eq!(lookup(&v, "n.x"), None);
        assert_eq!(lookup(&v, "s.len"), None);
        assert_eq!(lookup(&v, "list.0"), None, "arrays are not indexed");
        assert_eq!(lookup(&v, "list.a"), None);
        assert_eq!(lookup(&v, "nul.x"), None);
        assert_eq!(lookup(&v, "nul"), Some(&Value::Null), "null is present, not missing");
        assert_eq!(lookup(&json!(5), "a"), None, "a non-object root has no fields");
        // 0.1 looked only at the last segment: "id" at the top level must not be found
        // through "owner.id" when owner has no id.
        assert_eq!(lookup(&json!({"owner": {}, "id": 1}), "owner.id"), None);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(eq(&json!(1), &json!(1.0)));
        assert!(eq(&json!(-0.0), &json!(0)));
        assert!(eq(&json!(0.0), &json!(-0.0)));
        assert!(eq(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(eq(&json!(-5), &json!(-5.0)));
        assert!(!eq(&json!(1), &json!(1.5)));
        assert!(!eq(&json!(i64::MAX), &json!(u64::MAX)));
        // 2^53 + 1 is not representable in f64; an exact comparison keeps them apart.
        assert!(!eq(&json!(9_007_199_254_740_993_u64), &json!(9_007_199_254_740_992.0)));
        assert!(eq(&json!(9_007_199_254_740_992_u64), &json!(9_007_199_254_740_992.0)));
        assert!(eq(&json!(1e20), &json!(100_000_000_000_000_000_000.0)));
        assert!(!eq(&json!(u64::MAX), &json!(1e20)));
    }

    #[test]
    fn other_types_are_strict() {
        assert!(!eq(&json!("1"), &json!(1)));
        assert!(!eq(&json!(true), &json!(1)));
        assert!(!eq(&json!(false), &json!(0)));
        assert!(!eq(&json!(null), &json!(0)));
        assert!(!eq(&json!(null), &json!(false)));
        assert!(!eq(&json!(""), &json!(null)));
        assert!(!eq(&json!([]), &json!({})));
        assert!(eq(&json!(null), &json!(null)));
        assert!(eq(&json!(true), &json!(true)));
        assert!(eq(&json!("é"), &json!("é")));
    }

    #[test]
    fn arrays_and_objects_compare_structurally() {
        assert!(eq(&json!([1, "a", null]), &json!([1.0, "a", null])));
        assert!(!eq(&json!([1, 2]), &json!([2, 1])));
        assert!(!eq(&json!([1]), &json!([1, 1])));
        assert!(eq(&json!({"a": 1, "b": [2]}), &json!({"b": [2.0], "a": 1})));
        assert!(!eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!eq(&json!({"a": 1}), &json!({"b": 1})));
        assert!(!eq(&json!({"a": "1"}), &json!({"a": 1})));
        assert!(eq(&json!({"a": {"x": 1, "y": 2}}), &json!({"a": {"y": 2, "x": 1.0}})));
    }

    #[test]
    fn ordering_numbers_and_strings_only() {
        use Ordering::{Equal, Greater, Less};
        assert_eq!(compare(&json!(1), &json!(2)), Some(Less));
        assert_eq!(compare(&json!(1.0), &json!(1)), Some(Equal));
        assert_eq!(compare(&json!(1.5), &json!(1)), Some(Greater));
        assert_eq!(compare(&json!(-1.5), &json!(-1)), Some(Less));
        assert_eq!(compare(&json!(-1.5), &json!(-2)), Some(Greater));
        assert_eq!(compare(&json!(u64::MAX), &json!(1e300)), Some(Less));
        assert_eq!(compare(&json!(i64::MIN), &json!(-1e300)), Some(Greater));
        assert_eq!(compare(&json!(9_007_199_254_740_993_u64), &json!(9_007_199_254_740_992.0)), Some(Greater));
        assert_eq!(compare(&json!("a"), &json!("b")), Some(Less));
        assert_eq!(compare(&json!("b"), &json!("B")), Some(Greater));
        assert_eq!(compare(&json!("abc"), &json!("abc")), Some(Equal));
        assert_eq!(compare(&json!(1), &json!("1")), None);
        assert_eq!(compare(&json!("2"), &json!(1)), None);
        assert_eq!(compare(&json!(true), &json!(false)), None);
        assert_eq!(compare(&json!(null), &json!(null)), None);
        assert_eq!(compare(&json!([1]), &json!([2])), None);
        assert_eq!(compare(&json!({}), &json!({})), None);
    }

    #[test]
    fn strings_order_by_code_point() {
        // U+FF5E (3 bytes in UTF-8, 1 unit in UTF-16) vs U+1F600 (4 bytes, a surrogate
        // pair in UTF-16): code-point order puts U+FF5E first, UTF-16 order would not.
        assert_eq!(compare(&json!("\u{FF5E}"), &json!("\u{1F600}")), Some(Ordering::Less));
        assert_eq!(compare(&json!("Z"), &json!("a")), Some(Ordering::Less));
        assert_eq!(compare(&json!("é"), &json!("z")), Some(Ordering::Greater));
        assert_eq!(compare(&json!(""), &json!("a")), Some(Ordering::Less));
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..3).prop_map(Value::from),
            (-3i32..3).prop_map(|i| json!(f64::from(i))),
            prop::sample::select(vec![0.5, -0.5, -0.0, 1e20, 2.5, 9_007_199_254_740_992.0]).prop_map(Value::from),
            prop::sample::select(vec![u64::MAX, 9_007_199_254_740_993, 1 << 53]).prop_map(Value::from),
            prop::sample::select(vec!["", "a", "b", "1", "é", "\u{1F600}"]).prop_map(Value::from),
        ]
    }

    pub(crate) fn any_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(vec!["a", "b", "c"]), inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn key_equality_is_value_equality(a in any_value(), b in any_value()) {
            prop_assert_eq!(values_equal(&a, &b), ValueKey::of(&a) == ValueKey::of(&b));
            prop_assert!(values_equal(&a, &a));
            prop_assert_eq!(values_equal(&a, &b), values_equal(&b, &a));
        }

        #[test]
        fn ordering_agrees_with_equality(a in leaf(), b in leaf()) {
            if let Some(ord) = compare(&a, &b) {
                prop_assert_eq!(ord == Ordering::Equal, values_equal(&a, &b));
                prop_assert_eq!(compare(&b, &a), Some(ord.reverse()));
            }
        }

        #[test]
        fn reordered_objects_are_equal(entries in prop::collection::vec((any::<u8>(), leaf()), 0..6)) {
            let forward: serde_json::Map<String, Value> =
                entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            let backward: serde_json::Map<String, Value> =
                forward.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
            let (a, b) = (Value::Object(forward), Value::Object(backward));
            prop_assert!(values_equal(&a, &b));
            prop_assert_eq!(ValueKey::of(&a), ValueKey::of(&b));
        }
    }
}
