//! Operating the proxy: configuration, logging, metrics and the admin HTTP endpoint.

pub mod admin;
pub mod config;
pub mod logging;
pub mod metrics;
