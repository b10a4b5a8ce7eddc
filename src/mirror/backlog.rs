//! What the admin endpoint shows of the mirror's durability.

use super::Mirror;

impl Mirror {
    /// Whether Produce exchanges are written ahead to the log. False in `memory` mode, and when
    /// the configured log could not be opened (then a crash loses what waits in memory).
    pub fn write_ahead_log_open(&self) -> bool {
        self.wal.is_some()
    }
}
