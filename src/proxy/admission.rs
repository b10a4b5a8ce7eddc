//! Which connections the proxy takes: at most `listener.max_connections` in all, at most
//! `listener.max_connections_per_ip` from one source address, and never more than the process's
//! file descriptors allow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors a client connection costs: its own socket and its upstream socket.
const DESCRIPTORS_PER_CONNECTION: u64 = 2;
/// Descriptors for everything else: listeners, the admin endpoint, spool and log files, the
/// Kinesis client's connections.
const DESCRIPTORS_RESERVED: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("listener.max_connections ({0}) reached")]
    Total(usize),
    #[error("listener.max_connections_per_ip ({0}) reached for this address")]
    PerIp(usize),
}

pub struct Admission {
    slots: Arc<Semaphore>,
    max_connections: usize,
    per_ip: Option<PerIp>,
}

/// Connections open now, by source address.
type OpenByIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

struct PerIp {
    max: usize,
    open: OpenByIp,
}

/// A taken connection slot; dropping it frees the slot.
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    per_ip: Option<(IpAddr, OpenByIp)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((ip, open)) = &self.per_ip {
            let mut open = open.lock().expect("per-ip lock");
            if let Some(count) = open.get_mut(ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(ip);
                }
            }
        }
    }
}

impl Admission {
    pub fn new(max_connections: usize, max_connections_per_ip: Option<usize>) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            per_ip: max_connections_per_ip.map(|max| PerIp {
                max,
                open: Arc::default(),
            }),
        }
    }

    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refusal> {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total(self.max_connections))?;
        let per_ip = match &self.per_ip {
            None => None,
            Some(limit) => {
                let mut open = limit.open.lock().expect("per-ip lock");
                let count = open.entry(ip).or_insert(0);
                if *count >= limit.max {
                    return Err(Refusal::PerIp(limit.max));
                }
                *count += 1;
                Some((ip, limit.open.clone()))
            }
        };
        Ok(Admitted {
            _slot: slot,
            per_ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }
}

/// Raises the soft open-files limit to the hard limit, as Go's runtime does for every program:
/// the soft default (often 1,024) would cap the proxy near 500 connections. Warns when
/// `max_connections` needs more descriptors than the limit allows.
pub fn raise_open_files_limit(max_connections: usize) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return;
        }
    };
    let needed = max_connections as u64 * DESCRIPTORS_PER_CONNECTION + DESCRIPTORS_RESERVED;
    if limit < needed {
        tracing::warn!(
            open_files_limit = limit,
            needed,
            max_connections,
            "the open-files limit is below what listener.max_connections needs (two descriptors per client connection); raise the hard limit (LimitNOFILE= in systemd, ulimit -Hn) or lower listener.max_connections"
        );
    } else {
        tracing::debug!(open_files_limit = limit, "open-files limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_each_address_and_frees_on_drop() {
        let admission = Admission::new(10, Some(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerIp(2)));
        let _other = admission.admit(b).unwrap();
        drop(first);
        let _again = admission.admit(a).unwrap();
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn total_limit_refuses_and_frees() {
        let admission = Admission::new(1, None);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let held = admission.admit(ip).unwrap();
        assert_eq!(admission.admit(ip).err(), Some(Refusal::Total(1)));
        drop(held);
        assert!(admission.admit(ip).is_ok());
    }
}
