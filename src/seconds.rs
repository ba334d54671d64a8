//! Durations as users write them in configuration (seconds, as floats), checked once so that a
//! value that would overflow a clock later is refused at start-up with its name.

use crate::error::Error;

/// The longest duration any setting may have (a year), so that adding it to a clock reading can
/// never overflow.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Checks a duration setting: a positive, finite number of seconds no longer than a year.
///
/// # Errors
///
/// [`Error::Config`] naming the setting.
pub fn check_seconds(name: &str, seconds: f64) -> Result<(), Error> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{name} must be a positive number of seconds no larger than {MAX_SECONDS} (a year), not {}",
            shown(seconds)
        )))
    }
}

/// A number as an error message quotes it: a huge one in exponent form (`1e300`, not its 301
/// digits).
fn shown(seconds: f64) -> String {
    if seconds.is_finite() && seconds.abs() >= 1e15 {
        format!("{seconds:e}")
    } else {
        format!("{seconds}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seconds: f64) -> String {
        match check_seconds("ping_interval", seconds) {
            Err(Error::Config(text)) => text,
            other => panic!("{seconds} was not refused: {other:?}"),
        }
    }

    #[test]
    fn a_refused_duration_is_quoted_short_and_named() {
        assert!(check_seconds("ping_interval", MAX_SECONDS).is_ok());
        assert!(message(1e300).ends_with("(a year), not 1e300"), "{}", message(1e300));
        assert!(message(-2.5).ends_with("not -2.5"));
        assert!(message(0.0).starts_with("ping_interval must be a positive number"));
        assert!(message(f64::NAN).ends_with("not NaN"));
        assert!(message(f64::INFINITY).ends_with("not inf"));
    }
}
