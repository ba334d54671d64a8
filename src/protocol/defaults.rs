//! The wire's fixed names and the listeners' default addresses, defined once. The Python
//! package reads the addresses from the extension (`snorky._core.DEFAULT_FRONTEND_ADDRESS`,
//! `DEFAULT_BACKEND_ADDRESS`), so Rust, the `snorky` command and Django agree.

/// The header carrying the backend's API key.
pub const KEY_HEADER: &str = "x-backend-key";

/// Where browsers connect by default: every interface, port 5001.
pub const FRONTEND_ADDRESS: &str = "0.0.0.0:5001";

/// Where the web application posts by default: loopback only, port 5002.
pub const BACKEND_ADDRESS: &str = "127.0.0.1:5002";
