//! The one-screen summary `check-config` prints.

use std::fmt;

use super::Config;

impl fmt::Display for Config {
    /// The one-screen summary printed by `check-config`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.listener;
        writeln!(f, "listener")?;
        writeln!(f, "  bind              {}", l.bind)?;
        writeln!(f, "  advertised_host   {}", l.advertised_host)?;
        writeln!(f, "  bootstrap_port    {}", l.bootstrap_port)?;
        writeln!(f, "  broker ports      {} + node id", l.broker_ports.base)?;
        for (node, port) in &l.broker_ports.explicit {
            writeln!(f, "    node {node:<10} -> {port}")?;
        }
        writeln!(f, "  max_frame_bytes   {}", l.max_frame_bytes)?;
        writeln!(f, "  idle_timeout      {}s", l.idle_timeout.as_secs())?;
        writeln!(f, "  max_connections   {}", l.max_connections)?;
        if let Some(per_ip) = l.max_connections_per_ip {
            writeln!(f, "    per source ip   {per_ip}")?;
        }
        writeln!(f, "  frame_timeout     {}ms", l.frame_timeout.as_millis())?;
        writeln!(f, "  max_buffered      {} bytes", l.max_buffered_bytes)?;
        if l.sasl_required {
            writeln!(
                f,
                "  sasl_required     yes: frames up to {} bytes until authenticated",
                l.max_unauthenticated_frame_bytes
            )?;
        }
        if let Some(tls) = &l.tls {
            write!(f, "{tls}")?;
        }
        writeln!(f, "kafka")?;
        writeln!(
            f,
            "  bootstrap_servers {}",
            self.kafka.bootstrap_servers.join(", ")
        )?;
        writeln!(
            f,
            "  connect_timeout   {}ms",
            self.kafka.connect_timeout.as_millis()
        )?;
        if let Some(tls) = &self.kafka.tls {
            write!(f, "{tls}")?;
        }
        if let Some(sasl) = &self.kafka.sasl {
            write!(f, "{sasl}")?;
        }
        writeln!(f, "admin")?;
        writeln!(f, "  bind              {}", self.admin.bind)?;
        writeln!(
            f,
            "  topic labels      routed topics + {} others",
            self.admin.max_topic_labels
        )?;
        let k = &self.kinesis;
        writeln!(f, "kinesis")?;
        writeln!(
            f,
            "  region            {}",
            k.region.as_deref().unwrap_or("(AWS default chain)")
        )?;
        writeln!(
            f,
            "  endpoint_url      {}",
            k.endpoint_url
                .as_deref()
                .unwrap_or("(AWS default resolution)")
        )?;
        writeln!(
            f,
            "  linger            {}ms, {} requests in flight, {} attempts",
            k.linger.as_millis(),
            k.max_in_flight_requests,
            k.max_attempts
        )?;
        writeln!(
            f,
            "  ordering          {:?}, shard rate x{}, record ttl {}s",
            k.ordering,
            k.shard_rate_factor,
            k.record_ttl.as_secs()
        )?;
        writeln!(
            f,
            "mirror_buffer       {} bytes, when full: {:?}, durability: {}",
            self.mirror_buffer.max_bytes,
            self.mirror_buffer.when_full,
            self.mirror_buffer.durability.name()
        )?;
        match &self.spool.dir {
            Some(dir) => writeln!(
                f,
                "spool               {} (max {} bytes with the write-ahead log, fsync every {} ms or {} bytes; dead letters rotate at {} bytes, {} rotated files kept)",
                dir.display(),
                self.spool.max_bytes,
                self.spool.fsync_interval.as_millis(),
                self.spool.fsync_bytes,
                self.spool.dead_letters.max_bytes,
                self.spool.dead_letters.rotated_files
            )?,
            None => writeln!(f, "spool               (none: no routes)")?,
        }
        writeln!(f, "mirror routes       {}", self.mirror.len())?;
        for r in &self.mirror {
            writeln!(
                f,
                "  {} -> {}  {}%  partition_key={:?}  mode={}",
                r.topic, r.target, r.percent, r.partition_key, r.mode
            )?;
            if r.mode == super::RouteMode::KinesisPrimary {
                writeln!(
                    f,
                    "    acknowledged once in Kafka and Kinesis; primary_timeout {}ms",
                    r.primary_timeout.as_millis()
                )?;
            }
        }
        Ok(())
    }
}
