//! The built-in services, one file each.

pub mod chat;
pub mod cluster;
pub mod connections;
pub mod cursors;
pub mod external;
pub mod limits;
pub mod messaging;
pub mod pubsub;
