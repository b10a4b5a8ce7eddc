//! Operating the proxy: configuration, logging, metrics and the admin HTTP endpoint.

pub mod admin;
pub mod config;
pub mod dual_write;
pub mod inventory;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod status;
