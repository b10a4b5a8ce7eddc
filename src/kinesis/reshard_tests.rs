//! The writer across a reshard, on tokio's paused clock: a request in flight to a shard that
//! closes, and the lanes of the shards that take over its keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::kinesis::test_support::{
    control_plane, entry_data, record, spilling_settings, two_shards, wait_until, FakeKinesis, HALF,
};
use crate::kinesis::writer::StreamWriter;
use crate::telemetry::metrics::Metrics;

/// Item 7: shard 0 splits while the writer's first request to it is in flight (2 s, the
/// fake's latency), and that request's entry is throttled. The key's later records moved to
/// a child lane at the refresh (every 500 ms); they must wait for the parent's request, and
/// the throttled record must go before them. The old lanes sent record 1 from the child while
/// record 0 was still in flight, so Kinesis stored 1 before 0.
#[tokio::test(start_paused = true)]
async fn a_child_shard_waits_for_its_parents_request_in_flight() {
    let puts = Arc::new(AtomicUsize::new(0));
    let stored = Arc::new(Mutex::new(Vec::new()));
    let kinesis = {
        let (puts, stored) = (puts.clone(), stored.clone());
        FakeKinesis::new(move |operation, body| match operation {
            "ListShards" if puts.load(Ordering::SeqCst) == 0 => {
                control_plane(operation).expect("one shard")
            }
            // The split: shard 0 closed, its range taken by shards 1 and 2.
            "ListShards" => two_shards("shardId-1", "shardId-2"),
            "PutRecords" => {
                let data = entry_data(body);
                if puts.fetch_add(1, Ordering::SeqCst) == 0 {
                    let throttled: Vec<_> = data
                        .iter()
                        .map(|_| {
                            json!({"ErrorCode": "ProvisionedThroughputExceededException",
                            "ErrorMessage": "Rate exceeded"})
                        })
                        .collect();
                    return (
                        200,
                        json!({"FailedRecordCount": data.len(), "Records": throttled}),
                    );
                }
                let hash = crate::kinesis::shard_map::hash_key("k");
                let shard = if hash >= HALF {
                    "shardId-2"
                } else {
                    "shardId-1"
                };
                let results: Vec<_> = data
                    .iter()
                    .map(|_| json!({"SequenceNumber": "3", "ShardId": shard}))
                    .collect();
                stored.lock().expect("lock").extend(data);
                (200, json!({"FailedRecordCount": 0, "Records": results}))
            }
            _ => control_plane(operation).expect("a Kinesis operation the writer uses"),
        })
        .slow("PutRecords", Duration::from_secs(2))
    };
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let mut settings = spilling_settings(spool_dir.path(), 1 << 20);
    settings.kinesis.shard_map_refresh = Duration::from_millis(500);
    let writer = StreamWriter::spawn("s", kinesis.client(), &settings, Arc::new(Metrics::new()));
    for offset in 0..5 {
        let mut r = record(offset);
        r.key.partition_key = "k".to_owned();
        writer.send(r).await.expect("writer is running");
    }
    wait_until("every record stored", Duration::from_secs(60), || {
        stored.lock().expect("lock").len() == 5
    })
    .await;
    let expected: Vec<String> = (0..5).map(|o| format!("value-{o}")).collect();
    assert_eq!(
        *stored.lock().expect("lock"),
        expected,
        "the key's records in order"
    );
}
