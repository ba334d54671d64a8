//! Placeholder canonical key for JSON values (replaced by the DataSync value module).

use serde_json::Value;

/// A hashable key such that two JSON values get the same key exactly when they are equal by
/// value (numbers numerically, objects ignoring key order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValueKey(String);

impl ValueKey {
    /// The key of `value`.
    pub fn of(value: &Value) -> ValueKey {
        let mut out = String::new();
        write(value, &mut out);
        ValueKey(out)
    }
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (key, value) in entries {
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write(value, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for item in items {
                write(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Number(number) => match number.as_f64() {
            Some(float) if float.fract() == 0.0 && float.abs() < 9.0e15 => out.push_str(&format!("n{float:.0}")),
            _ => out.push_str(&format!("n{number}")),
        },
        other => out.push_str(&other.to_string()),
    }
}
