//! The dual-write success ratio: per topic, over a sliding window, the records delivered to
//! Kinesis divided by the records sampled for mirroring whose fate is decided (delivered, or
//! failed, oversize or dropped). Records still queued or in retry are not counted yet, so a
//! healthy but busy mirror reads 1.0 rather than dipping by its in-flight backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::GaugeVec;

#[derive(Default)]
struct Buckets {
    /// (second since start, delivered, undelivered), oldest first.
    seconds: VecDeque<(u64, u64, u64)>,
}

pub struct DualWriteRatio {
    gauge: GaugeVec,
    window: Duration,
    start: Instant,
    topics: Mutex<HashMap<String, Buckets>>,
}

impl DualWriteRatio {
    pub fn new(gauge: GaugeVec, window: Duration) -> Self {
        DualWriteRatio {
            gauge,
            window,
            start: Instant::now(),
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// Records the fate of `delivered + undelivered` sampled records of `topic`.
    pub fn record(&self, topic: &str, delivered: u64, undelivered: u64) {
        let now = self.start.elapsed().as_secs();
        let mut topics = self.topics.lock().expect("dual-write lock");
        let buckets = topics.entry(topic.to_owned()).or_default();
        match buckets.seconds.back_mut() {
            Some((second, d, u)) if *second == now => {
                *d += delivered;
                *u += undelivered;
            }
            _ => buckets.seconds.push_back((now, delivered, undelivered)),
        }
        self.publish(topic, buckets, now);
    }

    /// The ratio in force for `topic`, if any record's fate was decided in the window.
    pub fn ratio(&self, topic: &str) -> Option<f64> {
        self.gauge
            .get_metric_with_label_values(&[topic])
            .ok()
            .and_then(|g| {
                let topics = self.topics.lock().expect("dual-write lock");
                topics.contains_key(topic).then(|| g.get())
            })
    }

    /// Ages every topic's window; called periodically so the gauge moves without traffic.
    pub fn tick(&self) {
        let now = self.start.elapsed().as_secs();
        let mut topics = self.topics.lock().expect("dual-write lock");
        for (topic, buckets) in topics.iter_mut() {
            self.publish(topic, buckets, now);
        }
    }

    fn publish(&self, topic: &str, buckets: &mut Buckets, now: u64) {
        let oldest = now.saturating_sub(self.window.as_secs());
        while buckets.seconds.front().is_some_and(|(s, _, _)| *s < oldest) {
            buckets.seconds.pop_front();
        }
        let (delivered, undelivered) = buckets
            .seconds
            .iter()
            .fold((0u64, 0u64), |(d, u), (_, bd, bu)| (d + bd, u + bu));
        if delivered + undelivered == 0 {
            // No decided records in the window: no ratio to show.
            let _ = self.gauge.remove_label_values(&[topic]);
        } else {
            self.gauge
                .with_label_values(&[topic])
                .set(delivered as f64 / (delivered + undelivered) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn ratio_is_delivered_over_decided() {
        let gauge = GaugeVec::new(Opts::new("r", "r"), &["topic"]).unwrap();
        let ratio = DualWriteRatio::new(gauge.clone(), Duration::from_secs(300));
        ratio.record("orders", 90, 0);
        assert_eq!(gauge.with_label_values(&["orders"]).get(), 1.0);
        ratio.record("orders", 0, 10);
        assert_eq!(gauge.with_label_values(&["orders"]).get(), 0.9);
        ratio.record("other", 1, 1);
        assert_eq!(gauge.with_label_values(&["other"]).get(), 0.5);
    }
}
