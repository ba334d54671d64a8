//! The filter language of Filter dealers: parsing, evaluation, and the equality
//! conditions the router indexes on.
//!
//! An expression is a JSON array: `["==", field, value]`, `["<", ...]`, `["<=", ...]`,
//! `[">", ...]`, `[">=", ...]`, `["and", expr, ...]`, `["or", expr, ...]`,
//! `["not", expr]`. `field` is a dotted path ([`lookup`]); `value` is any JSON value,
//! compared with docs/protocol.md's rules ([`values_equal`], [`compare`]) and never read as an
//! expression.
//!
//! Decisions docs/protocol.md leaves open, fixed here:
//! - A comparison whose field is missing is false, so `["not", ["==", "x", 1]]` is *true*
//!   for an object without `x` (as in 0.1). Ordering comparisons between values that are
//!   not comparable (number vs string, booleans, null, arrays, objects) are false too,
//!   including `<=`/`>=` between two equal such values.
//! - `and` and `or` accept zero operands, as 0.1 did: `["and"]` matches everything and
//!   `["or"]` nothing (the identities of the two operators). Backends that build
//!   `["and", *conditions]` from a possibly empty list keep working.
//! - Expressions are bounded ([`FilterLimits`]): at most `max_depth` levels of nesting, so a
//!   hostile or buggy query cannot overflow the stack when it is parsed, evaluated or dropped,
//!   and at most `max_size` expressions in all, so authorizing it and evaluating it per delta
//!   costs a bounded time. Every operation on a parsed filter is linear in its size (times its
//!   depth for `or`), so the bound on size is a bound on time.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::Value;

use crate::value::{compare, lookup, values_equal, ValueKey};

/// How deeply expressions may nest by default (`["not", ["not", ...]]` counts one level per
/// array).
pub const MAX_DEPTH: usize = 32;

/// How many expressions (arrays) one filter may have in all, by default.
pub const MAX_SIZE: usize = 1_000;

/// The bounds a filter must respect to be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterLimits {
    /// The deepest nesting allowed.
    pub max_depth: usize,
    /// The most expressions allowed in one filter.
    pub max_size: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits { max_depth: MAX_DEPTH, max_size: MAX_SIZE }
    }
}

/// A parsed, valid filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// `[op, field, value]`: compares the value at `field` with `value`.
    Compare {
        /// Which comparison.
        op: CompareOp,
        /// The dotted path of the field in the object.
        field: String,
        /// The literal to compare with; any JSON value.
        value: Value,
    },
    /// `["and", expr, ...]`: every operand matches (true when there are none).
    And(Vec<Filter>),
    /// `["or", expr, ...]`: some operand matches (false when there are none).
    Or(Vec<Filter>),
    /// `["not", expr]`: the operand does not match.
    Not(Box<Filter>),
}

/// The comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CompareOp {
    /// The operator as written in an expression.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "==",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }

    fn from_str(op: &str) -> Option<Self> {
        Some(match op {
            "==" => Self::Eq,
            "<" => Self::Lt,
            "<=" => Self::Le,
            ">" => Self::Gt,
            ">=" => Self::Ge,
            _ => return None,
        })
    }

    /// Applies the operator to a present field value and the literal.
    fn holds(self, field_value: &Value, literal: &Value) -> bool {
        if self == Self::Eq {
            return values_equal(field_value, literal);
        }
        let Some(ordering) = compare(field_value, literal) else {
            return false;
        };
        match self {
            Self::Lt => ordering == Ordering::Less,
            Self::Le => ordering != Ordering::Greater,
            Self::Gt => ordering == Ordering::Greater,
            Self::Ge => ordering != Ordering::Less,
            Self::Eq => unreachable!("handled above"),
        }
    }
}

/// Why a query is not a valid filter expression. The text is shown to the backend
/// developer (inside `"Invalid query ..."`), so it says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not an array, or an empty one.
    #[error("an expression must be a non-empty array such as [\"==\", \"field\", value]")]
    NotAnExpression,
    /// The first element is not a string.
    #[error("the operator (first element of an expression) must be a string")]
    OperatorNotString,
    /// The operator is none of the known ones.
    #[error("unknown operator {0:?} (expected ==, <, <=, >, >=, and, or, not)")]
    UnknownOperator(String),
    /// A comparison without exactly a field and a value.
    #[error("{op:?} takes exactly a field and a value")]
    CompareArity {
        /// The operator.
        op: &'static str,
    },
    /// `not` without exactly one operand.
    #[error("\"not\" takes exactly one expression")]
    NotArity,
    /// A comparison whose field is not a string.
    #[error("the field of {op:?} must be a string (a dotted path)")]
    FieldNotString {
        /// The operator.
        op: &'static str,
    },
    /// Nested deeper than the limit.
    #[error("expression nested deeper than {0} levels")]
    TooDeep(usize),
    /// More expressions than the limit.
    #[error("expression has more than {0} parts")]
    TooLarge(usize),
}

impl Filter {
    /// Parses and validates an expression; nothing invalid gets through, so evaluation
    /// never has to deal with malformed input.
    ///
    /// # Errors
    ///
    /// A [`FilterError`] saying what is wrong with the first invalid part found.
    pub fn parse(expr: &Value) -> Result<Self, FilterError> {
        Self::parse_within(expr, FilterLimits::default())
    }

    /// [`parse`](Self::parse) with explicit bounds.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse), plus [`FilterError::TooDeep`] and [`FilterError::TooLarge`].
    pub fn parse_within(expr: &Value, limits: FilterLimits) -> Result<Self, FilterError> {
        let mut budget = limits.max_size;
        Self::parse_at(expr, 1, limits, &mut budget)
    }

    fn parse_at(expr: &Value, depth: usize, limits: FilterLimits, budget: &mut usize) -> Result<Self, FilterError> {
        if depth > limits.max_depth {
            return Err(FilterError::TooDeep(limits.max_depth));
        }
        let Some((op, args)) = expr.as_array().and_then(|a| a.split_first()) else {
            return Err(FilterError::NotAnExpression);
        };
        *budget = budget.checked_sub(1).ok_or(FilterError::TooLarge(limits.max_size))?;
        let op = op.as_str().ok_or(FilterError::OperatorNotString)?;
        let mut operands =
            || args.iter().map(|a| Self::parse_at(a, depth + 1, limits, budget)).collect::<Result<Vec<_>, _>>();
        match op {
            "and" => Ok(Self::And(operands()?)),
            "or" => Ok(Self::Or(operands()?)),
            "not" => match args {
                [inner] => Ok(Self::Not(Box::new(Self::parse_at(inner, depth + 1, limits, budget)?))),
                _ => Err(FilterError::NotArity),
            },
            _ => {
                let op = CompareOp::from_str(op).ok_or_else(|| FilterError::UnknownOperator(op.to_owned()))?;
                let [field, value] = args else {
                    return Err(FilterError::CompareArity { op: op.as_str() });
                };
                let field = field.as_str().ok_or(FilterError::FieldNotString { op: op.as_str() })?;
                Ok(Self::Compare { op, field: field.to_owned(), value: value.clone() })
            }
        }
    }

    /// Whether `object` satisfies the expression.
    #[must_use]
    pub fn matches(&self, object: &Value) -> bool {
        match self {
            Self::Compare { op, field, value } => lookup(object, field).is_some_and(|found| op.holds(found, value)),
            Self::And(operands) => operands.iter().all(|f| f.matches(object)),
            Self::Or(operands) => operands.iter().any(|f| f.matches(object)),
            Self::Not(inner) => !inner.matches(object),
        }
    }

    /// Equality conditions that every matching object satisfies: for each `(path, key)`,
    /// an object can match only if the value at `path` is present and has key `key`.
    ///
    /// Collected from `==` at the top level and inside `and` (at any depth), from
    /// `["not", ["not", e]]` (which is `e`), and from `or` when every operand requires the
    /// same condition. Other `not` and `or` forms contribute nothing: they can match
    /// objects where the field is missing or different. The router indexes an item under
    /// one of these, which is sound exactly because the list never claims too much.
    #[must_use]
    pub fn required_equalities(&self) -> Vec<(&str, ValueKey)> {
        let mut out = Vec::new();
        self.collect_required(&mut out);
        dedup(&mut out);
        out
    }

    fn collect_required<'a>(&'a self, out: &mut Vec<(&'a str, ValueKey)>) {
        match self {
            Self::Compare { op: CompareOp::Eq, field, value } => out.push((field, ValueKey::of(value))),
            Self::Compare { .. } => {}
            Self::And(operands) => {
                for operand in operands {
                    operand.collect_required(out);
                }
            }
            Self::Not(inner) => {
                if let Self::Not(inner) = inner.as_ref() {
                    inner.collect_required(out);
                }
            }
            Self::Or(operands) => {
                let Some((first, rest)) = operands.split_first() else {
                    // `["or"]` never matches; claiming nothing is still sound.
                    return;
                };
                let mut common = first.required_equalities();
                for operand in rest {
                    if common.is_empty() {
                        break;
                    }
                    let theirs: HashSet<(&str, ValueKey)> = operand.required_equalities().into_iter().collect();
                    common.retain(|c| theirs.contains(c));
                }
                out.extend(common);
            }
        }
    }
}

/// Removes repeated conditions, keeping the first of each, in linear time.
fn dedup<T: Eq + std::hash::Hash>(items: &mut Vec<T>) {
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(items.len());
        items.iter().map(|item| seen.insert(item)).collect()
    };
    let mut keep = keep.into_iter();
    items.retain(|_| keep.next().unwrap_or(false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(expr: &Value) -> Filter {
        Filter::parse(expr).expect("test expression is valid")
    }

    fn m(expr: &Value, object: &Value) -> bool {
        parse(expr).matches(object)
    }

    #[test]
    fn comparisons() {
        let o = json!({"age": 21, "name": "bob", "player": {"color": "blue"}});
        assert!(m(&json!(["==", "age", 21]), &o));
        assert!(m(&json!(["==", "age", 21.0]), &o), "1 == 1.0");
        assert!(!m(&json!(["==", "age", "21"]), &o), "\"21\" is not 21");
        assert!(m(&json!(["<", "age", 22]), &o));
        assert!(!m(&json!(["<", "age", 21]), &o));
        assert!(m(&json!(["<=", "age", 21.0]), &o));
        assert!(m(&json!([">", "age", 20.5]), &o));
        assert!(!m(&json!([">", "age", 21]), &o));
        assert!(m(&json!([">=", "age", 21]), &o));
        assert!(m(&json!(["==", "player.color", "blue"]), &o));
        assert!(m(&json!(["<", "name", "bobby"]), &o));
        assert!(m(&json!([">", "name", "Zed"]), &o), "code point order: 'b' > 'Z'");
    }

    #[test]
    fn booleans_equal_only_booleans() {
        let o = json!({"done": true, "n": 1, "z": 0, "f": false});
        assert!(m(&json!(["==", "done", true]), &o));
        assert!(!m(&json!(["==", "done", 1]), &o));
        assert!(!m(&json!(["==", "n", true]), &o));
        assert!(!m(&json!(["==", "z", false]), &o));
        assert!(!m(&json!(["==", "f", 0]), &o));
        assert!(!m(&json!(["<", "f", true]), &o), "booleans are not ordered");
    }

    #[test]
    fn number_vs_string_ordering_is_false_both_ways() {
        let o = json!({"n": 5, "s": "5"});
        for op in ["<", "<=", ">", ">="] {
            assert!(!m(&json!([op, "n", "5"]), &o), "{op} number vs string");
            assert!(!m(&json!([op, "s", 5]), &o), "{op} string vs number");
            assert!(!m(&json!([op, "n", "10"]), &o));
            assert!(!m(&json!([op, "s", 10]), &o));
        }
        // and so their negations are true
        assert!(m(&json!(["not", ["<", "n", "10"]]), &o));
        assert!(m(&json!(["not", [">=", "n", "1"]]), &o));
    }

    #[test]
    fn null_array_and_object_literals_compare_structurally() {
        let o = json!({"a": null, "tags": ["x", 1], "meta": {"k": 1, "j": [true]}});
        assert!(m(&json!(["==", "a", null]), &o));
        assert!(!m(&json!(["==", "missing", null]), &o), "missing is not null");
        assert!(m(&json!(["==", "tags", ["x", 1.0]]), &o));
        assert!(!m(&json!(["==", "tags", [1, "x"]]), &o));
        assert!(m(&json!(["==", "meta", {"j": [true], "k": 1}]), &o));
        assert!(!m(&json!(["==", "meta", {"k": 1}]), &o));
        // A literal that looks like an expression is still a literal.
        let e = json!({"f": ["==", "a", 1]});
        assert!(m(&json!(["==", "f", ["==", "a", 1]]), &e));
        assert!(!m(&json!(["==", "f", ["==", "a", 2]]), &e));
        // Ordering on null/arrays/objects is false, even against an equal value.
        assert!(!m(&json!(["<=", "a", null]), &o));
        assert!(!m(&json!([">=", "tags", ["x", 1]]), &o));
        assert!(!m(&json!(["<", "meta", {}]), &o));
    }

    #[test]
    fn missing_fields_make_comparisons_false() {
        let o = json!({"player": {"color": "red"}, "n": 3, "list": [{"a": 1}]});
        for op in ["==", "<", "<=", ">", ">="] {
            assert!(!m(&json!([op, "nope", 1]), &o));
            assert!(!m(&json!([op, "player.size", 1]), &o));
            assert!(!m(&json!([op, "n.x", 1]), &o), "path through a number");
            assert!(!m(&json!([op, "list.a", 1]), &o), "path through an array");
            assert!(!m(&json!([op, "list.0", {"a": 1}]), &o), "arrays are not indexed");
        }
        // Documented consequence: `not` of a comparison on a missing field is true.
        assert!(m(&json!(["not", ["==", "nope", 1]]), &o));
        assert!(m(&json!(["not", ["<", "nope", 1]]), &o));
        // 0.1 ignored all but the last segment; "color" at the top must not be used.
        assert!(!m(&json!(["==", "owner.color", "red"]), &json!({"color": "red"})));
    }

    #[test]
    fn boolean_connectives() {
        let o = json!({"service": "prosody", "severity": 4});
        assert!(m(&json!(["and", ["==", "service", "prosody"], [">=", "severity", 3]]), &o));
        assert!(!m(&json!(["and", ["==", "service", "prosody"], [">=", "severity", 5]]), &o));
        assert!(m(&json!(["or", ["not", ["==", "service", "java"]], [">=", "severity", 9]]), &o));
        assert!(!m(&json!(["or", ["==", "service", "java"], [">=", "severity", 9]]), &o));
        assert!(m(&json!(["and", ["==", "service", "prosody"]]), &o));
        assert!(!m(&json!(["not", ["and"]]), &o));
        assert!(m(&json!(["and"]), &o), "empty and is true");
        assert!(!m(&json!(["or"]), &o), "empty or is false");
        assert!(m(&json!(["not", ["not", ["==", "severity", 4.0]]]), &o));
    }

    #[test]
    fn non_object_data_has_no_fields() {
        for data in [json!(null), json!(5), json!("x"), json!([1])] {
            assert!(!m(&json!(["==", "a", 1]), &data));
            assert!(m(&json!(["not", ["==", "a", 1]]), &data));
        }
    }

    #[test]
    fn invalid_expressions_are_refused() {
        let cases = [
            (json!(null), FilterError::NotAnExpression),
            (json!("=="), FilterError::NotAnExpression),
            (json!({"op": "=="}), FilterError::NotAnExpression),
            (json!([]), FilterError::NotAnExpression),
            (json!([1, "a", 1]), FilterError::OperatorNotString),
            (json!([null]), FilterError::OperatorNotString),
            (json!(["!=", "a", 1]), FilterError::UnknownOperator("!=".into())),
            (json!(["AND", ["==", "a", 1]]), FilterError::UnknownOperator("AND".into())),
            (json!(["=="]), FilterError::CompareArity { op: "==" }),
            (json!(["==", "a"]), FilterError::CompareArity { op: "==" }),
            (json!(["<", "a", 1, 2]), FilterError::CompareArity { op: "<" }),
            (json!(["==", 1, 1]), FilterError::FieldNotString { op: "==" }),
            (json!([">=", null, 1]), FilterError::FieldNotString { op: ">=" }),
            (json!([">", ["a"], 1]), FilterError::FieldNotString { op: ">" }),
            (json!(["not"]), FilterError::NotArity),
            (json!(["not", ["==", "a", 1], ["==", "b", 1]]), FilterError::NotArity),
            (json!(["and", ["==", "a", 1], "b"]), FilterError::NotAnExpression),
            (json!(["or", ["==", "a", 1], ["~", "b", 1]]), FilterError::UnknownOperator("~".into())),
            (json!(["not", []]), FilterError::NotAnExpression),
            (json!(["and", ["not", ["==", 5, 1]]]), FilterError::FieldNotString { op: "==" }),
        ];
        for (expr, expected) in cases {
            assert_eq!(Filter::parse(&expr), Err(expected), "{expr}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut expr = json!(["==", "a", 1]);
        for _ in 1..MAX_DEPTH {
            expr = json!(["not", expr]);
        }
        assert!(Filter::parse(&expr).is_ok(), "exactly MAX_DEPTH levels are fine");
        let too_deep = json!(["not", expr]);
        assert_eq!(Filter::parse(&too_deep), Err(FilterError::TooDeep(MAX_DEPTH)));
        let limits = FilterLimits { max_depth: 3, max_size: 100 };
        assert!(Filter::parse_within(&json!(["not", ["not", ["==", "a", 1]]]), limits).is_ok());
        assert_eq!(
            Filter::parse_within(&json!(["not", ["not", ["not", ["==", "a", 1]]]]), limits),
            Err(FilterError::TooDeep(3))
        );
    }

    #[test]
    fn size_is_bounded() {
        let conditions = |n: usize| -> Value {
            let mut expr = vec![json!("and")];
            expr.extend((0..n).map(|i| json!(["==", format!("f{i}"), i])));
            Value::Array(expr)
        };
        // `and` plus 999 comparisons: exactly the default bound.
        assert!(Filter::parse(&conditions(MAX_SIZE - 1)).is_ok());
        assert_eq!(Filter::parse(&conditions(MAX_SIZE)), Err(FilterError::TooLarge(MAX_SIZE)));
        assert_eq!(
            Filter::parse(&conditions(MAX_SIZE)).expect_err("too large").to_string(),
            "expression has more than 1000 parts"
        );
    }

    #[test]
    fn required_equalities_take_linear_time() {
        // 50,000 distinct and 50,000 repeated conditions: quadratic deduplication would take
        // minutes here; this must finish in well under a second even unoptimized.
        let mut expr = vec![json!("and")];
        expr.extend((0..50_000).map(|i| json!(["==", "f", i % 25_000])));
        let filter =
            Filter::parse_within(&Value::Array(expr.clone()), FilterLimits { max_depth: 4, max_size: 200_000 })
                .expect("valid");
        assert_eq!(filter.required_equalities().len(), 25_000);
        let or = json!(["or", Value::Array(expr.clone()), Value::Array(expr)]);
        let filter = Filter::parse_within(&or, FilterLimits { max_depth: 4, max_size: 200_000 }).expect("valid");
        assert_eq!(filter.required_equalities().len(), 25_000);
    }

    #[test]
    fn error_texts_are_clear() {
        let text = |e: Value| Filter::parse(&e).expect_err("invalid").to_string();
        assert_eq!(text(json!(["~", "a", 1])), "unknown operator \"~\" (expected ==, <, <=, >, >=, and, or, not)");
        assert_eq!(text(json!(["==", "a"])), "\"==\" takes exactly a field and a value");
        assert_eq!(text(json!(["<", 3, 1])), "the field of \"<\" must be a string (a dotted path)");
        assert_eq!(text(json!(["not"])), "\"not\" takes exactly one expression");
    }

    fn required(expr: &Value) -> Vec<(String, ValueKey)> {
        parse(expr).required_equalities().into_iter().map(|(p, k)| (p.to_owned(), k)).collect()
    }

    fn cond(path: &str, value: &Value) -> (String, ValueKey) {
        (path.to_owned(), ValueKey::of(value))
    }

    #[test]
    fn required_equalities_from_eq_and_and() {
        assert_eq!(required(&json!(["==", "a", 1])), vec![cond("a", &json!(1.0))]);
        assert_eq!(required(&json!(["<", "a", 1])), vec![]);
        assert_eq!(
            required(&json!(["and", ["==", "a", 1], ["<", "b", 2], ["and", ["==", "c.d", "x"]], ["==", "a", 1.0]])),
            vec![cond("a", &json!(1)), cond("c.d", &json!("x"))]
        );
        assert_eq!(required(&json!(["and"])), vec![]);
    }

    #[test]
    fn required_equalities_from_or_and_not() {
        assert_eq!(required(&json!(["not", ["==", "a", 1]])), vec![]);
        assert_eq!(required(&json!(["not", ["not", ["==", "a", 1]]])), vec![cond("a", &json!(1))]);
        assert_eq!(required(&json!(["or", ["==", "a", 1], ["==", "b", 1]])), vec![]);
        assert_eq!(required(&json!(["or"])), vec![]);
        assert_eq!(
            required(&json!([
                "or",
                ["and", ["==", "a", 1], ["==", "b", 2]],
                ["and", ["==", "b", 2.0], ["==", "c", 3]]
            ])),
            vec![cond("b", &json!(2))]
        );
        assert_eq!(required(&json!(["or", ["==", "a", 1]])), vec![cond("a", &json!(1))]);
    }
}
