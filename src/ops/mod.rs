//! Operating the proxy: configuration and logging.

pub mod config;
pub mod logging;
