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
            "{name} must be a positive number of seconds no larger than {MAX_SECONDS} (a year), not {seconds}"
        )))
    }
}
