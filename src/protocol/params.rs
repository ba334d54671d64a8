//! Extraction of RPC parameters with docs/protocol.md's rules: missing, extra or wrongly typed
//! parameters are "Invalid params" unless the protocol names a specific error, and `null` is a
//! present value.

use serde_json::{Map, Value};

use super::rpc::RpcError;

/// The `params` object of a request, consumed one parameter at a time.
///
/// A service takes each parameter it knows, then calls [`Params::finish`], which refuses
/// leftovers (extra parameters).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params(Map<String, Value>);

impl Params {
    /// Wraps a parameters object.
    pub fn new(map: Map<String, Value>) -> Params {
        Params(map)
    }

    /// Takes a required parameter of any JSON type (`null` included).
    pub fn take(&mut self, name: &str) -> Result<Value, RpcError> {
        self.0.shift_remove(name).ok_or(RpcError::InvalidParams)
    }

    /// Takes the one parameter a command has, refusing any other ("Invalid params").
    pub fn only(mut self, name: &str) -> Result<Value, RpcError> {
        let value = self.take(name)?;
        self.finish()?;
        Ok(value)
    }

    /// Takes an optional parameter.
    pub fn take_optional(&mut self, name: &str) -> Option<Value> {
        self.0.shift_remove(name)
    }

    /// Takes a required string parameter; a missing one is "Invalid params", a present one of
    /// another type gets `type_error`.
    pub fn take_string(&mut self, name: &str, type_error: RpcError) -> Result<String, RpcError> {
        match self.take(name)? {
            Value::String(text) => Ok(text),
            _ => Err(type_error),
        }
    }

    /// Refuses any parameter that was not taken.
    pub fn finish(self) -> Result<(), RpcError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RpcError::InvalidParams)
        }
    }

    /// The remaining parameters (for services that validate them elsewhere, e.g. Python ones).
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: Value) -> Params {
        match value {
            Value::Object(map) => Params::new(map),
            _ => unreachable!("tests pass objects"),
        }
    }

    #[test]
    fn null_is_present() {
        let mut p = params(json!({"message": null}));
        assert_eq!(p.take("message"), Ok(Value::Null));
        assert_eq!(p.finish(), Ok(()));
    }

    #[test]
    fn missing_and_extra_are_invalid_params() {
        let mut p = params(json!({"other": 1}));
        assert_eq!(p.take("channel"), Err(RpcError::InvalidParams));
        assert_eq!(p.finish(), Err(RpcError::InvalidParams));
    }

    #[test]
    fn a_wrong_type_gets_the_named_error() {
        let mut p = params(json!({"token": 5}));
        let err = RpcError::service("token must be string");
        assert_eq!(p.take_string("token", err.clone()), Err(err));
        let mut p = params(json!({"token": null}));
        let err = RpcError::service("token must be string");
        assert_eq!(p.take_string("token", err.clone()), Err(err));
    }
}
