//! Deltas: parsing what `publishDeltas` receives, translating an update per
//! subscription, and serialising the `{"type": "delta", "delta": ...}` frame.
//!
//! Parsing checks fields in the order 0.1 did, so the first problem of a delta gets the
//! same error text: `type` present, `model` present, `model` a string, `type` known,
//! then the data fields. The error texts are docs/protocol.md's. `"Missing field"` has no field
//! name, exactly as docs/protocol.md lists it for `publishDeltas` (0.1 sent the same); the
//! name is kept in the error value for logs. Data (`data`, `newData`, `oldData`) may be
//! any JSON value, `null` included ("present, not missing"); a non-object simply has no
//! fields for dealers to look at. For compatibility with backends written against 0.1,
//! whose server read `new_data`/`old_data`, those spellings are accepted when the
//! camelCase key is absent; subscribers always receive `newData`/`oldData`.

use serde::Serialize;
use serde_json::{Map, Value};

/// A change to one object of a model, as published by the backend.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Delta {
    /// An object was created.
    Insert {
        /// The model (what dealers are declared for).
        model: String,
        /// The new object.
        data: Value,
    },
    /// An object changed.
    Update {
        /// The model.
        model: String,
        /// The object after the change.
        #[serde(rename = "newData")]
        new_data: Value,
        /// The object before the change.
        #[serde(rename = "oldData")]
        old_data: Value,
    },
    /// An object was deleted.
    Delete {
        /// The model.
        model: String,
        /// The object as it was.
        data: Value,
    },
}

/// The type of delta a subscription receives. An update may reach a subscription as an
/// insert or a delete when the object enters or leaves what it may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeltaShape {
    /// `{"type": "insert", "model", "data"}` carrying the new object.
    Insert,
    /// The update as published.
    Update,
    /// `{"type": "delete", "model", "data"}` carrying the old object.
    Delete,
}

/// Why a batch of deltas is refused. Display texts are docs/protocol.md's reply texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// `deltas` is not a list, or one of its elements is not an object: a wrongly typed
    /// parameter, for which docs/protocol.md has no specific text.
    #[error("Invalid params")]
    InvalidParams,
    /// A required field of a delta is absent (the name is for logs only; docs/protocol.md's text
    /// has none).
    #[error("Missing field")]
    MissingField(&'static str),
    /// `type` is not `"insert"`, `"update"` or `"delete"` (or not a string).
    #[error("Invalid delta type")]
    InvalidType,
    /// `model` is not a string.
    #[error("model must be string")]
    ModelNotString,
    /// No dealer handles `model` (raised by [`Delta::parse_batch`]).
    #[error("Unknown model")]
    UnknownModel(String),
}

impl Delta {
    /// Parses one delta, taking ownership so the (possibly large) data is moved, not copied.
    ///
    /// # Errors
    ///
    /// [`DeltaError`] for a missing field, an invalid type, a non-string model, or a delta
    /// that is not an object, checked in the order the module documentation gives.
    pub fn parse(delta: Value) -> Result<Self, DeltaError> {
        let Value::Object(mut fields) = delta else {
            return Err(DeltaError::InvalidParams);
        };
        let kind = fields.get("type").ok_or(DeltaError::MissingField("type"))?;
        let model = fields.get("model").ok_or(DeltaError::MissingField("model"))?;
        let model = model.as_str().ok_or(DeltaError::ModelNotString)?.to_owned();
        let kind = match kind.as_str() {
            Some("insert") => DeltaShape::Insert,
            Some("update") => DeltaShape::Update,
            Some("delete") => DeltaShape::Delete,
            _ => return Err(DeltaError::InvalidType),
        };
        Ok(match kind {
            DeltaShape::Insert => Self::Insert { model, data: take(&mut fields, "data", None)? },
            DeltaShape::Delete => Self::Delete { model, data: take(&mut fields, "data", None)? },
            DeltaShape::Update => {
                // Check both before moving either, so the error does not depend on
                // which one happens to be taken first.
                let new_key = pick(&fields, "newData", "new_data")?;
                let old_key = pick(&fields, "oldData", "old_data")?;
                Self::Update {
                    model,
                    new_data: take(&mut fields, new_key, Some("newData"))?,
                    old_data: take(&mut fields, old_key, Some("oldData"))?,
                }
            }
        })
    }

    /// Parses a whole `deltas` parameter and checks that some dealer handles each model
    /// (`known_model`); fails on the first bad delta, so the caller delivers nothing unless
    /// the entire batch is valid.
    ///
    /// # Errors
    ///
    /// The first delta's [`DeltaError`] (a parse error, or `UnknownModel`), or
    /// `InvalidParams` when `deltas` is not a list.
    pub fn parse_batch(deltas: Value, known_model: impl Fn(&str) -> bool) -> Result<Vec<Self>, DeltaError> {
        let Value::Array(deltas) = deltas else {
            return Err(DeltaError::InvalidParams);
        };
        deltas
            .into_iter()
            .map(|delta| {
                let delta = Self::parse(delta)?;
                if known_model(delta.model()) {
                    Ok(delta)
                } else {
                    Err(DeltaError::UnknownModel(delta.model().to_owned()))
                }
            })
            .collect()
    }

    /// The model the delta concerns.
    #[must_use]
    pub fn model(&self) -> &str {
        match self {
            Self::Insert { model, .. } | Self::Update { model, .. } | Self::Delete { model, .. } => model,
        }
    }

    /// The type of this delta as published.
    #[must_use]
    pub fn shape(&self) -> DeltaShape {
        match self {
            Self::Insert { .. } => DeltaShape::Insert,
            Self::Update { .. } => DeltaShape::Update,
            Self::Delete { .. } => DeltaShape::Delete,
        }
    }

    /// The object before the change: `oldData` of an update, `data` of a delete, none for
    /// an insert (the object did not exist).
    #[must_use]
    pub fn old_object(&self) -> Option<&Value> {
        match self {
            Self::Insert { .. } => None,
            Self::Update { old_data, .. } => Some(old_data),
            Self::Delete { data, .. } => Some(data),
        }
    }

    /// The object after the change: `newData` of an update, `data` of an insert, none for
    /// a delete.
    #[must_use]
    pub fn new_object(&self) -> Option<&Value> {
        match self {
            Self::Insert { data, .. } => Some(data),
            Self::Update { new_data, .. } => Some(new_data),
            Self::Delete { .. } => None,
        }
    }

    /// What a subscription receives, given whether it may see the object before
    /// (`sees_old`) and after (`sees_new`) the change: both → the update itself, only the
    /// new → an insert of the new object, only the old → a delete of the old object,
    /// neither → nothing. Inserts and deletes have a single object and pass through
    /// unchanged when it is visible (an absent object is never "seen").
    #[must_use]
    pub fn shape_for(&self, sees_old: bool, sees_new: bool) -> Option<DeltaShape> {
        let sees_old = sees_old && self.old_object().is_some();
        let sees_new = sees_new && self.new_object().is_some();
        match (sees_old, sees_new) {
            (true, true) => Some(DeltaShape::Update),
            (false, true) => Some(DeltaShape::Insert),
            (true, false) => Some(DeltaShape::Delete),
            (false, false) => None,
        }
    }

    /// The delta translated to `shape`, borrowing the data. `None` when the shape needs
    /// an object this delta does not have (an update shape of an insert, a delete of an
    /// insert, ...); shapes from [`shape_for`](Self::shape_for) always work.
    #[must_use]
    pub fn view(&self, shape: DeltaShape) -> Option<DeltaView<'_>> {
        let model = self.model();
        Some(match (shape, self) {
            (DeltaShape::Insert, _) => DeltaView::Insert { model, data: self.new_object()? },
            (DeltaShape::Delete, _) => DeltaView::Delete { model, data: self.old_object()? },
            (DeltaShape::Update, Self::Update { new_data, old_data, .. }) => {
                DeltaView::Update { model, new_data, old_data }
            }
            (DeltaShape::Update, _) => return None,
        })
    }

    /// The message pushed to a subscriber, `{"type": "delta", "delta": <delta>}`, for
    /// `shape`; see [`view`](Self::view) for when it is `None`. Build it once per shape
    /// and share the serialised text among the subscriptions that receive it.
    #[must_use]
    pub fn frame(&self, shape: DeltaShape) -> Option<DeltaFrame<'_>> {
        Some(DeltaFrame { kind: FrameType::Delta, delta: self.view(shape)? })
    }
}

/// Takes `key` out of a delta, or reports it missing under the name `report` (defaults
/// to `key`).
fn take(fields: &mut Map<String, Value>, key: &'static str, report: Option<&'static str>) -> Result<Value, DeltaError> {
    fields.remove(key).ok_or(DeltaError::MissingField(report.unwrap_or(key)))
}

/// Which spelling of a field is present: docs/protocol.md's `newData` spelling first, 0.1's
/// `new_data` spelling as a fallback.
fn pick(fields: &Map<String, Value>, key: &'static str, legacy: &'static str) -> Result<&'static str, DeltaError> {
    if fields.contains_key(key) {
        Ok(key)
    } else if fields.contains_key(legacy) {
        Ok(legacy)
    } else {
        Err(DeltaError::MissingField(key))
    }
}

/// A delta as a subscriber receives it, borrowing from the published [`Delta`];
/// serialises to exactly docs/protocol.md's fields.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DeltaView<'a> {
    /// `{"type": "insert", "model", "data"}`
    Insert {
        /// The model.
        model: &'a str,
        /// The object now visible.
        data: &'a Value,
    },
    /// `{"type": "update", "model", "newData", "oldData"}`
    Update {
        /// The model.
        model: &'a str,
        /// The object after the change.
        #[serde(rename = "newData")]
        new_data: &'a Value,
        /// The object before the change.
        #[serde(rename = "oldData")]
        old_data: &'a Value,
    },
    /// `{"type": "delete", "model", "data"}`
    Delete {
        /// The model.
        model: &'a str,
        /// The object no longer visible.
        data: &'a Value,
    },
}

/// The pushed message `{"type": "delta", "delta": <delta>}` (the `message` of the
/// envelope the server sends under its frontend `datasync` service name).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DeltaFrame<'a> {
    /// Always `"delta"`.
    #[serde(rename = "type")]
    pub kind: FrameType,
    /// The translated delta.
    pub delta: DeltaView<'a>,
}

/// The `type` of a [`DeltaFrame`]; a one-value enum so a frame cannot carry another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameType {
    /// `"delta"`
    Delta,
}

impl DeltaFrame<'_> {
    /// The frame as a JSON value (copies the data).
    ///
    /// # Panics
    ///
    /// Never: every part of a frame is a string or a `serde_json::Value`, which always
    /// serialise.
    #[must_use]
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a frame of JSON values always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        Delta::parse(v).expect_err("invalid delta").to_string()
    }

    #[test]
    fn parses_the_three_types() {
        assert_eq!(
            Delta::parse(json!({"type": "insert", "model": "Task", "data": {"id": 1}})),
            Ok(Delta::Insert { model: "Task".into(), data: json!({"id": 1}) })
        );
        assert_eq!(
            Delta::parse(json!({"type": "update", "model": "Task", "newData": {"id": 2}, "oldData": {"id": 1}})),
            Ok(Delta::Update { model: "Task".into(), new_data: json!({"id": 2}), old_data: json!({"id": 1}) })
        );
        assert_eq!(
            Delta::parse(json!({"type": "delete", "model": "Task", "data": null, "extra": 1})),
            Ok(Delta::Delete { model: "Task".into(), data: Value::Null }),
            "null data is present; unknown keys are ignored"
        );
    }

    #[test]
    fn accepts_legacy_update_spelling() {
        let d = Delta::parse(json!({"type": "update", "model": "T", "new_data": 2, "old_data": 1}));
        assert_eq!(d, Ok(Delta::Update { model: "T".into(), new_data: json!(2), old_data: json!(1) }));
        let d = Delta::parse(json!({"type": "update", "model": "T", "newData": 3, "new_data": 2, "oldData": 1}));
        assert_eq!(d, Ok(Delta::Update { model: "T".into(), new_data: json!(3), old_data: json!(1) }));
    }

    #[test]
    fn error_texts_are_protocols() {
        assert_eq!(err(json!({"model": "T", "data": {}})), "Missing field");
        assert_eq!(err(json!({"type": "insert", "data": {}})), "Missing field");
        assert_eq!(err(json!({"type": "insert", "model": "T"})), "Missing field");
        assert_eq!(err(json!({"type": "delete", "model": "T"})), "Missing field");
        assert_eq!(err(json!({"type": "update", "model": "T", "newData": {}})), "Missing field");
        assert_eq!(err(json!({"type": "update", "model": "T", "oldData": {}})), "Missing field");
        assert_eq!(err(json!({"type": "update", "model": "T", "data": {}})), "Missing field");
        assert_eq!(err(json!({"type": "upsert", "model": "T", "data": {}})), "Invalid delta type");
        assert_eq!(err(json!({"type": 1, "model": "T", "data": {}})), "Invalid delta type");
        assert_eq!(err(json!({"type": null, "model": "T", "data": {}})), "Invalid delta type");
        assert_eq!(err(json!({"type": "INSERT", "model": "T", "data": {}})), "Invalid delta type");
        assert_eq!(err(json!({"type": "insert", "model": 5, "data": {}})), "model must be string");
        assert_eq!(err(json!({"type": "insert", "model": null, "data": {}})), "model must be string");
        assert_eq!(err(json!(["insert", "T", {}])), "Invalid params");
        assert_eq!(err(json!("insert")), "Invalid params");
    }

    #[test]
    fn errors_come_in_0_1_order() {
        // type present → model present → model a string → type known → data fields
        assert_eq!(Delta::parse(json!({})), Err(DeltaError::MissingField("type")));
        assert_eq!(Delta::parse(json!({"type": "bogus"})), Err(DeltaError::MissingField("model")));
        assert_eq!(Delta::parse(json!({"type": "bogus", "model": 1})), Err(DeltaError::ModelNotString));
        assert_eq!(Delta::parse(json!({"type": "bogus", "model": "T"})), Err(DeltaError::InvalidType));
        assert_eq!(Delta::parse(json!({"type": "update", "model": "T"})), Err(DeltaError::MissingField("newData")));
        assert_eq!(
            Delta::parse(json!({"type": "update", "model": "T", "newData": 1})),
            Err(DeltaError::MissingField("oldData"))
        );
    }

    #[test]
    fn batch_fails_on_any_bad_delta() {
        let good = json!({"type": "insert", "model": "T", "data": {}});
        assert_eq!(Delta::parse_batch(json!([good.clone(), good.clone()]), |_| true).map(|d| d.len()), Ok(2));
        assert_eq!(Delta::parse_batch(json!([]), |_| true), Ok(vec![]));
        assert_eq!(
            Delta::parse_batch(json!([good.clone(), {"type": "x", "model": "T"}, {"model": 3}]), |_| true),
            Err(DeltaError::InvalidType),
            "the first bad delta decides the error"
        );
        assert_eq!(Delta::parse_batch(json!([good.clone(), 5]), |_| true), Err(DeltaError::InvalidParams));
        assert_eq!(Delta::parse_batch(json!({"0": good}), |_| true), Err(DeltaError::InvalidParams));
        assert_eq!(Delta::parse_batch(Value::Null, |_| true), Err(DeltaError::InvalidParams));
    }

    fn update() -> Delta {
        Delta::Update { model: "Task".into(), new_data: json!({"v": 2}), old_data: json!({"v": 1}) }
    }

    #[test]
    fn update_translation() {
        let d = update();
        assert_eq!(d.shape_for(true, true), Some(DeltaShape::Update));
        assert_eq!(d.shape_for(false, true), Some(DeltaShape::Insert));
        assert_eq!(d.shape_for(true, false), Some(DeltaShape::Delete));
        assert_eq!(d.shape_for(false, false), None);
        let frame = |s| d.frame(s).expect("valid shape").to_value();
        assert_eq!(
            frame(DeltaShape::Update),
            json!({"type": "delta", "delta": {"type": "update", "model": "Task", "newData": {"v": 2}, "oldData": {"v": 1}}})
        );
        assert_eq!(
            frame(DeltaShape::Insert),
            json!({"type": "delta", "delta": {"type": "insert", "model": "Task", "data": {"v": 2}}})
        );
        assert_eq!(
            frame(DeltaShape::Delete),
            json!({"type": "delta", "delta": {"type": "delete", "model": "Task", "data": {"v": 1}}})
        );
    }

    #[test]
    fn inserts_and_deletes_pass_through() {
        let ins = Delta::Insert { model: "T".into(), data: json!({"a": 1}) };
        assert_eq!(ins.shape_for(true, true), Some(DeltaShape::Insert));
        assert_eq!(ins.shape_for(false, true), Some(DeltaShape::Insert));
        assert_eq!(ins.shape_for(true, false), None);
        assert!(ins.view(DeltaShape::Update).is_none());
        assert!(ins.view(DeltaShape::Delete).is_none());
        let del = Delta::Delete { model: "T".into(), data: json!({"a": 1}) };
        assert_eq!(del.shape_for(true, true), Some(DeltaShape::Delete));
        assert_eq!(del.shape_for(false, true), None);
        assert!(del.view(DeltaShape::Insert).is_none());
    }

    #[test]
    fn frame_has_exactly_the_protocol_fields_in_order() {
        let d =
            Delta::parse(json!({"extra": 1, "oldData": {"b": 1}, "newData": {"a": 1}, "model": "T", "type": "update"}))
                .expect("valid delta");
        let text = serde_json::to_string(&d.frame(DeltaShape::Update).expect("update")).expect("serialises");
        assert_eq!(
            text,
            r#"{"type":"delta","delta":{"type":"update","model":"T","newData":{"a":1},"oldData":{"b":1}}}"#
        );
        let ins = Delta::parse(json!({"data": [1], "model": "T", "type": "insert"})).expect("valid delta");
        let text = serde_json::to_string(&ins.frame(DeltaShape::Insert).expect("insert")).expect("serialises");
        assert_eq!(text, r#"{"type":"delta","delta":{"type":"insert","model":"T","data":[1]}}"#);
        assert_eq!(
            serde_json::to_value(&d).expect("serialises"),
            json!({"type": "update", "model": "T", "newData": {"a": 1}, "oldData": {"b": 1}})
        );
    }
}
