//! Dealers: the named rules that decide which subscription items a delta of their model
//! concerns, and the validation of an item's `query` for each kind.
//!
//! A dealer is data (name, model, kind); the [`Router`](super::Router) keeps the index of
//! items per dealer. The three kinds are a closed set, dispatched by [`DealerKind`]:
//! - Broadcast: every item matches every delta of the model; the query is ignored (it
//!   must still be present, and may be `null`).
//! - Simple: an item matches when its query equals a key computed from the object, by a
//!   field path or by an external [`KeyFunction`] (a Python method, through the bindings).
//! - Filter: the query is a [`Filter`] expression evaluated against the object.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::filter::{Filter, FilterError, FilterLimits};
use crate::value::{lookup, ValueKey};

/// Computes the key of an object for a Simple dealer declared with a function (the Python
/// bindings implement it with the dealer's method).
///
/// Guarantees an implementor must keep: it is deterministic for a given object while the
/// router uses it (the router calls it once per object per delta, and a test compares
/// against a second, naive evaluation); it does not call back into the router (the
/// router may be locked while it runs); and it reports failure as `Err` rather than
/// panicking. An `Err` (a Python exception) is logged with the dealer's name and the
/// delta reaches none of that dealer's items; other dealers are unaffected.
pub trait KeyFunction: Send + Sync {
    /// The key of `data`; its value is compared with items' queries by docs/protocol.md's rules.
    ///
    /// # Errors
    ///
    /// A description of the failure (for a Python method, the exception), which the
    /// router logs with the dealer's name.
    fn key(&self, data: &Value) -> Result<Value, String>;
}

/// How a Simple dealer computes an object's key.
#[derive(Clone)]
pub enum SimpleKey {
    /// The value at a dotted field path; an object where it is missing matches no item.
    Field(String),
    /// An external function.
    Function(Arc<dyn KeyFunction>),
}

impl fmt::Debug for SimpleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(path) => f.debug_tuple("Field").field(path).finish(),
            Self::Function(_) => f.write_str("Function(..)"),
        }
    }
}

/// The kind of a dealer.
#[derive(Clone, Debug)]
pub enum DealerKind {
    /// Every item matches every delta of the model.
    Broadcast,
    /// Items match when their query equals the object's key.
    Simple(SimpleKey),
    /// Items' queries are filter expressions.
    Filter,
}

/// A dealer: what `items[].dealer` names, the model it handles, and how it matches.
#[derive(Clone, Debug)]
pub struct Dealer {
    /// The name subscription items refer to; unique within a router.
    pub name: String,
    /// The model whose deltas it receives (`delta.model`).
    pub model: String,
    /// How items match deltas.
    pub kind: DealerKind,
}

/// An item's query after validation for its dealer, in the form the router indexes.
#[derive(Clone, Debug, PartialEq)]
pub enum PreparedQuery {
    /// A Broadcast item (the query was ignored).
    Broadcast,
    /// A Simple item: the key its query stands for.
    Simple(ValueKey),
    /// A Filter item: the parsed expression and the conditions it may be indexed under.
    Filter(Box<PreparedFilter>),
}

/// The most required equalities of a filter considered as its index condition.
pub const MAX_INDEX_CANDIDATES: usize = 8;

/// A Filter item's query, parsed, with the equality conditions every match requires (the
/// router indexes the item under the one whose bucket is smallest).
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedFilter {
    /// The expression.
    pub filter: Filter,
    /// Up to [`MAX_INDEX_CANDIDATES`] `(path, key)` conditions the filter requires.
    pub candidates: Vec<(String, ValueKey)>,
}

/// A key function failed; the delta is not delivered through this dealer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key function of dealer {dealer:?} failed: {message}")]
pub struct KeyFunctionError {
    /// The dealer's name.
    pub dealer: String,
    /// What the function reported.
    pub message: String,
}

impl Dealer {
    /// A Broadcast dealer.
    pub fn broadcast(name: impl Into<String>, model: impl Into<String>) -> Self {
        Self::new(name, model, DealerKind::Broadcast)
    }

    /// A Simple dealer keyed by the value at a dotted field path (`"owner.id"`).
    pub fn simple_field(name: impl Into<String>, model: impl Into<String>, path: impl Into<String>) -> Self {
        Self::new(name, model, DealerKind::Simple(SimpleKey::Field(path.into())))
    }

    /// A Simple dealer keyed by an external function.
    pub fn simple_fn(name: impl Into<String>, model: impl Into<String>, key: Arc<dyn KeyFunction>) -> Self {
        Self::new(name, model, DealerKind::Simple(SimpleKey::Function(key)))
    }

    /// A Filter dealer.
    pub fn filter(name: impl Into<String>, model: impl Into<String>) -> Self {
        Self::new(name, model, DealerKind::Filter)
    }

    fn new(name: impl Into<String>, model: impl Into<String>, kind: DealerKind) -> Self {
        Self { name: name.into(), model: model.into(), kind }
    }

    /// Validates an authorization item's `query` for this dealer. Only a Filter dealer
    /// can refuse one (a query that is not a valid expression); Simple accepts any JSON
    /// value and Broadcast ignores it.
    ///
    /// # Errors
    ///
    /// The [`FilterError`] of a Filter dealer's query that is not a valid expression.
    pub fn prepare_query(&self, query: &Value, limits: FilterLimits) -> Result<PreparedQuery, FilterError> {
        Ok(match &self.kind {
            DealerKind::Broadcast => PreparedQuery::Broadcast,
            DealerKind::Simple(_) => PreparedQuery::Simple(ValueKey::of(query)),
            DealerKind::Filter => {
                let filter = Filter::parse_within(query, limits)?;
                let mut candidates: Vec<(String, ValueKey)> =
                    filter.required_equalities().into_iter().map(|(path, key)| (path.to_owned(), key)).collect();
                // Any required equality is a sound index; a few are enough to pick a small
                // bucket, and keep the choice (made under the router's lock) cheap.
                candidates.truncate(MAX_INDEX_CANDIDATES);
                PreparedQuery::Filter(Box::new(PreparedFilter { filter, candidates }))
            }
        })
    }

    /// The key of `object` for a Simple dealer: `Ok(None)` when the keyed field is
    /// missing (or for a dealer that is not Simple).
    ///
    /// # Errors
    ///
    /// [`KeyFunctionError`] when the dealer's key function failed.
    pub fn simple_key(&self, object: &Value) -> Result<Option<ValueKey>, KeyFunctionError> {
        match &self.kind {
            DealerKind::Simple(SimpleKey::Field(path)) => Ok(lookup(object, path).map(ValueKey::of)),
            DealerKind::Simple(SimpleKey::Function(function)) => function
                .key(object)
                .map(|key| Some(ValueKey::of(&key)))
                .map_err(|message| KeyFunctionError { dealer: self.name.clone(), message }),
            DealerKind::Broadcast | DealerKind::Filter => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Upper;
    impl KeyFunction for Upper {
        fn key(&self, data: &Value) -> Result<Value, String> {
            match data.get("name").and_then(Value::as_str) {
                Some(name) => Ok(Value::from(name.to_uppercase())),
                None => Err("KeyError: 'name'".to_owned()),
            }
        }
    }

    #[test]
    fn queries_are_validated_per_kind() {
        let b = Dealer::broadcast("all", "Task");
        let limits = FilterLimits::default();
        assert_eq!(b.prepare_query(&Value::Null, limits), Ok(PreparedQuery::Broadcast));
        assert_eq!(b.prepare_query(&json!(["garbage"]), limits), Ok(PreparedQuery::Broadcast));
        let s = Dealer::simple_field("by_owner", "Task", "owner.id");
        assert_eq!(s.prepare_query(&json!(1.0), limits), Ok(PreparedQuery::Simple(ValueKey::of(&json!(1)))));
        assert!(s.prepare_query(&json!(["==", "not", "parsed"]), limits).is_ok());
        let f = Dealer::filter("filtered", "Task");
        assert!(matches!(f.prepare_query(&json!(["==", "a", 1]), limits), Ok(PreparedQuery::Filter(_))));
        assert_eq!(f.prepare_query(&Value::Null, limits), Err(FilterError::NotAnExpression));
        assert_eq!(f.prepare_query(&json!(["=", "a", 1]), limits), Err(FilterError::UnknownOperator("=".into())));
    }

    #[test]
    fn simple_keys_from_paths_and_functions() {
        let s = Dealer::simple_field("by_owner", "Task", "owner.id");
        assert_eq!(s.simple_key(&json!({"owner": {"id": 3}})), Ok(Some(ValueKey::of(&json!(3.0)))));
        assert_eq!(s.simple_key(&json!({"owner": 3})), Ok(None));
        assert_eq!(s.simple_key(&json!({"owner": {"id": null}})), Ok(Some(ValueKey::of(&Value::Null))));
        let f = Dealer::simple_fn("by_name", "Task", Arc::new(Upper));
        assert_eq!(f.simple_key(&json!({"name": "ann"})), Ok(Some(ValueKey::of(&json!("ANN")))));
        let e = f.simple_key(&json!({})).expect_err("function fails");
        assert_eq!(e.to_string(), "key function of dealer \"by_name\" failed: KeyError: 'name'");
        assert_eq!(format!("{:?}", f.kind), "Simple(Function(..))");
    }
}
