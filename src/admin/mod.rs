//! The roof: the admin HTTP endpoint, config reload and the `status` view. These read every
//! stage below them; nothing below imports them.

pub mod backlog;
pub mod http;
pub mod reload;
pub mod shard_for;
pub mod status;
