//! `[listener]`: where clients connect, how broker node ids map to proxy ports, and the limits
//! on what one client can make the proxy hold.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::tls::{self, ListenerTlsConfig};
use super::{invalid, positive, Invalid};

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub bind: IpAddr,
    pub advertised_host: String,
    pub bootstrap_port: u16,
    pub broker_ports: BrokerPortMap,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// `None`: no limit per source address.
    pub max_connections_per_ip: Option<usize>,
    /// Clients must authenticate with SASL; until they have, frames are capped at
    /// `max_unauthenticated_frame_bytes`.
    pub sasl_required: bool,
    pub max_unauthenticated_frame_bytes: usize,
    /// Once a frame's first byte has arrived, the rest must arrive within this.
    pub frame_timeout: Duration,
    /// Request and response bytes all connections may hold together before the proxy stops
    /// reading requests.
    pub max_buffered_bytes: usize,
    /// `None`: clients speak plain TCP.
    pub tls: Option<ListenerTlsConfig>,
}

/// How upstream broker node ids map to proxy ports: an explicit entry wins, otherwise
/// `base + node_id`. Deterministic, so clients that cached metadata reconnect to the same ports
/// after a proxy restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPortMap {
    pub base: u16,
    pub explicit: BTreeMap<i32, u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortMapError {
    #[error("broker node id {node_id} maps to port {port}, outside 1..=65535; set listener.broker_ports = {{ {node_id} = PORT }} or lower listener.broker_port_base")]
    OutOfRange { node_id: i32, port: i64 },
    #[error("broker node id {node_id} maps to port {port}, which is already used by {other}; add listener.broker_ports = {{ {node_id} = PORT }}")]
    Collision {
        node_id: i32,
        port: u16,
        other: String,
    },
}

impl BrokerPortMap {
    /// The proxy port that serves `node_id`, checked against every other port the proxy owns.
    pub fn port_for(&self, node_id: i32, bootstrap_port: u16) -> Result<u16, PortMapError> {
        if let Some(port) = self.explicit.get(&node_id) {
            return Ok(*port);
        }
        let port = i64::from(self.base) + i64::from(node_id);
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(PortMapError::OutOfRange { node_id, port })?;
        if port == bootstrap_port {
            return Err(PortMapError::Collision {
                node_id,
                port,
                other: "listener.bootstrap_port".into(),
            });
        }
        if let Some((other, _)) = self.explicit.iter().find(|(_, p)| **p == port) {
            return Err(PortMapError::Collision {
                node_id,
                port,
                other: format!("listener.broker_ports entry for node {other}"),
            });
        }
        Ok(port)
    }
}

pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;
/// Kafka's own cap before authentication (`sasl.server.max.receive.size`).
pub const DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES: usize = 512 * 1024;
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 512 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    bind: Option<Spanned<String>>,
    advertised_host: Option<Spanned<String>>,
    bootstrap_port: Option<Spanned<u16>>,
    broker_port_base: Option<Spanned<u16>>,
    #[serde(default)]
    broker_ports: BTreeMap<Spanned<String>, Spanned<u16>>,
    max_frame_bytes: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_connections_per_ip: Option<Spanned<u64>>,
    sasl_required: Option<bool>,
    max_unauthenticated_frame_bytes: Option<Spanned<u64>>,
    frame_timeout_ms: Option<Spanned<u64>>,
    max_buffered_bytes: Option<Spanned<u64>>,
    tls: Option<tls::RawListenerTls>,
}

pub(super) fn validate_listener(
    raw: RawListener,
    section: Range<usize>,
) -> Result<ListenerConfig, Invalid> {
    let bind = match &raw.bind {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(b) => match b.get_ref().parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                return invalid(
                    b.span(),
                    format!("listener.bind: `{}` is not an IP address", b.get_ref()),
                )
            }
        },
    };
    let advertised_host = match raw.advertised_host {
        Some(h) if h.get_ref().trim().is_empty() => {
            return invalid(h.span(), "listener.advertised_host: must not be empty")
        }
        Some(h) => h.into_inner(),
        None if bind.is_unspecified() => {
            return invalid(
                section,
                format!("listener.advertised_host: required when listener.bind is {bind}, because clients cannot connect to that address"),
            )
        }
        None => bind.to_string(),
    };
    let bootstrap_port = positive_port(raw.bootstrap_port.as_ref(), 19092, "bootstrap_port")?;
    let base = positive_port(raw.broker_port_base.as_ref(), 19100, "broker_port_base")?;

    let mut explicit = BTreeMap::new();
    let mut owners: BTreeMap<u16, String> = BTreeMap::new();
    owners.insert(bootstrap_port, "listener.bootstrap_port".into());
    for (node, port) in &raw.broker_ports {
        let node_id = match node.get_ref().parse::<i32>() {
            Ok(id) if id >= 0 => id,
            _ => {
                return invalid(
                    node.span(),
                    format!(
                        "listener.broker_ports: key `{}` is not a broker node id (a non-negative integer)",
                        node.get_ref()
                    ),
                )
            }
        };
        let p = *port.get_ref();
        if p == 0 {
            return invalid(
                port.span(),
                format!("listener.broker_ports.{node_id}: port must be 1..=65535"),
            );
        }
        let owner = format!("listener.broker_ports.{node_id}");
        if let Some(previous) = owners.insert(p, owner.clone()) {
            return invalid(
                port.span(),
                format!("{owner}: port {p} collides with {previous}"),
            );
        }
        explicit.insert(node_id, p);
    }

    let max_frame_bytes = frame_size(
        raw.max_frame_bytes.as_ref(),
        DEFAULT_MAX_FRAME_BYTES,
        "listener.max_frame_bytes",
    )?;
    let max_unauthenticated_frame_bytes = frame_size(
        raw.max_unauthenticated_frame_bytes.as_ref(),
        DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES.min(max_frame_bytes),
        "listener.max_unauthenticated_frame_bytes",
    )?;
    if max_unauthenticated_frame_bytes > max_frame_bytes {
        let span = raw
            .max_unauthenticated_frame_bytes
            .as_ref()
            .map(Spanned::span);
        return Err((span, format!("listener.max_unauthenticated_frame_bytes: {max_unauthenticated_frame_bytes} is more than listener.max_frame_bytes ({max_frame_bytes})")));
    }
    let max_buffered_bytes = positive(
        raw.max_buffered_bytes.as_ref(),
        DEFAULT_MAX_BUFFERED_BYTES as u64,
        "listener.max_buffered_bytes",
    )?;
    if max_buffered_bytes < max_frame_bytes as u64 {
        let span = raw.max_buffered_bytes.as_ref().map(Spanned::span);
        return Err((span, format!("listener.max_buffered_bytes: {max_buffered_bytes} is less than listener.max_frame_bytes ({max_frame_bytes}), so the largest allowed request could never be read")));
    }
    let frame_timeout_ms = positive(
        raw.frame_timeout_ms.as_ref(),
        30_000,
        "listener.frame_timeout_ms",
    )?;
    let idle_timeout_secs = positive(
        raw.idle_timeout_secs.as_ref(),
        600,
        "listener.idle_timeout_secs",
    )?;
    let max_connections = positive(
        raw.max_connections.as_ref(),
        10_000,
        "listener.max_connections",
    )?;
    let max_connections_per_ip = raw
        .max_connections_per_ip
        .as_ref()
        .map(|v| positive(Some(v), 0, "listener.max_connections_per_ip"))
        .transpose()?;

    Ok(ListenerConfig {
        bind,
        advertised_host,
        bootstrap_port,
        broker_ports: BrokerPortMap { base, explicit },
        max_frame_bytes,
        idle_timeout: Duration::from_secs(idle_timeout_secs),
        max_connections: max_connections as usize,
        max_connections_per_ip: max_connections_per_ip.map(|n| n as usize),
        sasl_required: raw.sasl_required.unwrap_or(false),
        max_unauthenticated_frame_bytes,
        frame_timeout: Duration::from_millis(frame_timeout_ms),
        max_buffered_bytes: usize::try_from(max_buffered_bytes).unwrap_or(usize::MAX),
        tls: raw.tls.map(tls::validate_listener_tls).transpose()?,
    })
}

/// A frame size limit: Kafka's size prefix is an i32.
fn frame_size(value: Option<&Spanned<u64>>, default: usize, key: &str) -> Result<usize, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() < 1024 || *v.get_ref() > i32::MAX as u64 => invalid(
            v.span(),
            format!("{key}: must be between 1024 and 2147483647"),
        ),
        Some(v) => Ok(*v.get_ref() as usize),
    }
}

pub(super) fn positive_port(
    value: Option<&Spanned<u16>>,
    default: u16,
    key: &str,
) -> Result<u16, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => {
            invalid(v.span(), format!("listener.{key}: port must be 1..=65535"))
        }
        Some(v) => Ok(*v.get_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_for_node_checks_range_and_collisions() {
        let map = BrokerPortMap {
            base: 65000,
            explicit: BTreeMap::from([(7, 65001)]),
        };
        assert_eq!(map.port_for(7, 19092), Ok(65001));
        assert_eq!(map.port_for(2, 19092), Ok(65002));
        assert!(matches!(
            map.port_for(1, 19092),
            Err(PortMapError::Collision { .. })
        ));
        assert!(matches!(
            map.port_for(600, 19092),
            Err(PortMapError::OutOfRange { .. })
        ));
        assert!(matches!(
            map.port_for(0, 65000),
            Err(PortMapError::Collision { .. })
        ));
    }
}
