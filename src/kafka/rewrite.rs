//! Rewriting of every broker address a client can learn, so that all of them point back at
//! the proxy: Metadata, FindCoordinator (single coordinator and v4+ list), DescribeCluster,
//! and the KIP-951 `NodeEndpoints` of Produce, Fetch and the share-group responses.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use super::message::{MessageError, Response};

/// Maps an upstream broker address to the proxy address that serves that broker.
pub trait AddressRewriter {
    /// Points `host` and `port` at the proxy. `false`: the proxy cannot serve this broker, and
    /// the response leaves it out, so that clients are never sent to an address that does not
    /// work; every other broker is unaffected.
    fn rewrite(&mut self, node_id: i32, host: &mut StrBytes, port: &mut i32) -> bool;
}

/// What a FindCoordinator answer says of a coordinator the proxy cannot serve: retriable, so
/// the client asks again.
const COORDINATOR_NOT_AVAILABLE: i16 = 15;

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// Whether responses of this API and version can carry broker addresses.
pub fn carries_addresses(api_key: ApiKey, version: i16) -> bool {
    match api_key {
        ApiKey::Metadata | ApiKey::FindCoordinator | ApiKey::DescribeCluster => true,
        ApiKey::Produce => version >= 10,
        ApiKey::Fetch => version >= 16,
        ApiKey::ShareFetch | ApiKey::ShareAcknowledge => true,
        _ => false,
    }
}

/// Rewrites the broker addresses in a response frame. Returns `None` when the response names
/// no broker (for example Produce or Fetch without `NodeEndpoints`, which is the normal case),
/// so the original bytes are forwarded untouched.
pub fn rewrite_response(
    frame: &Bytes,
    api_key: ApiKey,
    version: i16,
    rewriter: &mut dyn AddressRewriter,
) -> Result<Option<Bytes>, RewriteError> {
    let mut response = Response::decode(frame, api_key, version)?;
    let mut any = false;
    let mut keep = |node_id: i32, host: &mut StrBytes, port: &mut i32| {
        any = true;
        rewriter.rewrite(node_id, host, port)
    };
    match &mut response.body {
        ResponseKind::Metadata(m) => m
            .brokers
            .retain_mut(|b| keep(b.node_id.0, &mut b.host, &mut b.port)),
        ResponseKind::FindCoordinator(f) => {
            if f.error_code == 0 && f.node_id.0 >= 0 && version < 4 {
                let (node_id, host, port) = (f.node_id.0, &mut f.host, &mut f.port);
                if !keep(node_id, host, port) {
                    f.error_code = COORDINATOR_NOT_AVAILABLE;
                    (f.node_id.0, f.host, f.port) = (-1, StrBytes::default(), -1);
                }
            }
            for c in &mut f.coordinators {
                if c.error_code == 0
                    && c.node_id.0 >= 0
                    && !keep(c.node_id.0, &mut c.host, &mut c.port)
                {
                    c.error_code = COORDINATOR_NOT_AVAILABLE;
                    (c.node_id.0, c.host, c.port) = (-1, StrBytes::default(), -1);
                }
            }
        }
        ResponseKind::DescribeCluster(d) => d
            .brokers
            .retain_mut(|b| keep(b.broker_id.0, &mut b.host, &mut b.port)),
        ResponseKind::Produce(p) => p
            .node_endpoints
            .retain_mut(|e| keep(e.node_id.0, &mut e.host, &mut e.port)),
        ResponseKind::Fetch(f) => f
            .node_endpoints
            .retain_mut(|e| keep(e.node_id.0, &mut e.host, &mut e.port)),
        ResponseKind::ShareFetch(f) => f
            .node_endpoints
            .retain_mut(|e| keep(e.node_id.0, &mut e.host, &mut e.port)),
        ResponseKind::ShareAcknowledge(a) => a
            .node_endpoints
            .retain_mut(|e| keep(e.node_id.0, &mut e.host, &mut e.port)),
        _ => return Ok(None),
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(response.encode(api_key, version)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::produce_response::NodeEndpoint;
    use kafka_protocol::messages::{
        BrokerId, DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse,
        ProduceResponse, ResponseHeader,
    };

    /// Serves node N on proxy:19100+N, recording what it learned.
    #[derive(Default)]
    struct TestMap {
        learned: Vec<(i32, String, i32)>,
    }

    impl AddressRewriter for TestMap {
        fn rewrite(&mut self, node_id: i32, host: &mut StrBytes, port: &mut i32) -> bool {
            if node_id > 1000 {
                return false;
            }
            self.learned.push((node_id, host.to_string(), *port));
            *host = StrBytes::from_static_str("proxy");
            *port = 19100 + node_id;
            true
        }
    }

    fn round_trip(
        body: ResponseKind,
        api_key: ApiKey,
        version: i16,
    ) -> (Option<ResponseKind>, TestMap) {
        let frame = Response {
            header: ResponseHeader::default().with_correlation_id(3),
            body,
        }
        .encode(api_key, version)
        .unwrap();
        let mut map = TestMap::default();
        let out = rewrite_response(&frame, api_key, version, &mut map).unwrap();
        let decoded = out.map(|f| {
            let r = Response::decode(&f, api_key, version).unwrap();
            assert_eq!(r.header.correlation_id, 3);
            r.body
        });
        (decoded, map)
    }

    fn broker(id: i32, host: &'static str, port: i32) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_static_str(host))
            .with_port(port)
    }

    #[test]
    fn metadata_brokers_are_rewritten_at_every_version() {
        for version in 0..=ApiKey::Metadata.valid_versions().max {
            let body = ResponseKind::Metadata(
                MetadataResponse::default()
                    .with_brokers(vec![broker(1, "kafka-1", 9092), broker(2, "kafka-2", 9093)]),
            );
            let (out, map) = round_trip(body, ApiKey::Metadata, version);
            let Some(ResponseKind::Metadata(m)) = out else {
                panic!("v{version}")
            };
            let got: Vec<_> = m
                .brokers
                .iter()
                .map(|b| (b.host.to_string(), b.port))
                .collect();
            assert_eq!(
                got,
                vec![("proxy".into(), 19101), ("proxy".into(), 19102)],
                "v{version}"
            );
            assert_eq!(
                map.learned,
                vec![(1, "kafka-1".into(), 9092), (2, "kafka-2".into(), 9093)]
            );
        }
    }

    #[test]
    fn find_coordinator_single_and_list_forms() {
        let single = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(3))
            .with_host(StrBytes::from_static_str("kafka-3"))
            .with_port(9094);
        for version in 0..=3 {
            let (out, _) = round_trip(
                ResponseKind::FindCoordinator(single.clone()),
                ApiKey::FindCoordinator,
                version,
            );
            let Some(ResponseKind::FindCoordinator(f)) = out else {
                panic!()
            };
            assert_eq!((f.host.as_str(), f.port), ("proxy", 19103), "v{version}");
        }
        let list = FindCoordinatorResponse::default().with_coordinators(vec![
            Coordinator::default()
                .with_key(StrBytes::from_static_str("g1"))
                .with_node_id(BrokerId(4))
                .with_host(StrBytes::from_static_str("kafka-4"))
                .with_port(1),
            Coordinator::default()
                .with_key(StrBytes::from_static_str("g2"))
                .with_error_code(15)
                .with_node_id(BrokerId(-1))
                .with_port(-1),
        ]);
        for version in 4..=ApiKey::FindCoordinator.valid_versions().max {
            let (out, map) = round_trip(
                ResponseKind::FindCoordinator(list.clone()),
                ApiKey::FindCoordinator,
                version,
            );
            let Some(ResponseKind::FindCoordinator(f)) = out else {
                panic!()
            };
            assert_eq!(
                (f.coordinators[0].host.as_str(), f.coordinators[0].port),
                ("proxy", 19104)
            );
            assert_eq!(
                (f.coordinators[1].host.as_str(), f.coordinators[1].port),
                ("", -1),
                "errored coordinator untouched"
            );
            assert_eq!(map.learned.len(), 1);
        }
    }

    #[test]
    fn describe_cluster_brokers_are_rewritten() {
        let body =
            DescribeClusterResponse::default().with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(7))
                .with_host(StrBytes::from_static_str("kafka-7"))
                .with_port(9092)]);
        let (out, _) = round_trip(
            ResponseKind::DescribeCluster(body),
            ApiKey::DescribeCluster,
            1,
        );
        let Some(ResponseKind::DescribeCluster(d)) = out else {
            panic!()
        };
        assert_eq!(
            (d.brokers[0].host.as_str(), d.brokers[0].port),
            ("proxy", 19107)
        );
    }

    #[test]
    fn produce_node_endpoints_rewritten_and_empty_ones_forwarded_unchanged() {
        let (out, _) = round_trip(
            ResponseKind::Produce(ProduceResponse::default()),
            ApiKey::Produce,
            10,
        );
        assert!(out.is_none(), "no endpoints: original bytes are forwarded");
        let body = ProduceResponse::default().with_node_endpoints(vec![NodeEndpoint::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_static_str("kafka-2"))
            .with_port(9092)]);
        let (out, _) = round_trip(ResponseKind::Produce(body), ApiKey::Produce, 11);
        let Some(ResponseKind::Produce(p)) = out else {
            panic!()
        };
        assert_eq!(
            (p.node_endpoints[0].host.as_str(), p.node_endpoints[0].port),
            ("proxy", 19102)
        );
    }

    #[test]
    fn unmappable_broker_is_left_out_and_the_others_kept() {
        let body = ResponseKind::Metadata(MetadataResponse::default().with_brokers(vec![
            broker(1, "kafka-1", 9092),
            broker(5000, "far", 1),
            broker(2, "kafka-2", 9092),
        ]));
        let (out, _) = round_trip(body, ApiKey::Metadata, 9);
        let Some(ResponseKind::Metadata(m)) = out else {
            panic!()
        };
        let ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn unmappable_coordinator_becomes_retriable_not_available() {
        let single = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(5000))
            .with_host(StrBytes::from_static_str("far"))
            .with_port(1);
        let (out, _) = round_trip(
            ResponseKind::FindCoordinator(single),
            ApiKey::FindCoordinator,
            3,
        );
        let Some(ResponseKind::FindCoordinator(f)) = out else {
            panic!()
        };
        assert_eq!(
            (f.error_code, f.node_id.0, f.host.as_str(), f.port),
            (COORDINATOR_NOT_AVAILABLE, -1, "", -1)
        );
        let list = FindCoordinatorResponse::default().with_coordinators(vec![
            Coordinator::default()
                .with_key(StrBytes::from_static_str("g1"))
                .with_node_id(BrokerId(5000))
                .with_host(StrBytes::from_static_str("far"))
                .with_port(1),
            Coordinator::default()
                .with_key(StrBytes::from_static_str("g2"))
                .with_node_id(BrokerId(4))
                .with_host(StrBytes::from_static_str("kafka-4"))
                .with_port(1),
        ]);
        let (out, _) = round_trip(
            ResponseKind::FindCoordinator(list),
            ApiKey::FindCoordinator,
            4,
        );
        let Some(ResponseKind::FindCoordinator(f)) = out else {
            panic!()
        };
        assert_eq!(f.coordinators[0].error_code, COORDINATOR_NOT_AVAILABLE);
        assert_eq!(
            (f.coordinators[1].host.as_str(), f.coordinators[1].port),
            ("proxy", 19104)
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let frame = Bytes::from_static(&[0, 0, 0, 6, 0, 0, 0, 1, 0xff, 0xff]);
        let err =
            rewrite_response(&frame, ApiKey::Metadata, 1, &mut TestMap::default()).unwrap_err();
        assert!(matches!(err, RewriteError::Message(_)), "{err}");
    }
}
