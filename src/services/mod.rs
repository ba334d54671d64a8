//! The built-in services, one file each.

pub mod pubsub;
