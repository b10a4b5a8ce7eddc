//! The `topic` label of per-topic metrics, kept to a bounded set: a client can name any topic
//! in a Produce request, so labelling every name it sends would let it create series without
//! bound. Routed topics always get their own label; other topics get one on first sight while
//! fewer than `admin.max_topic_labels` have, and share `(other)` after that, which no Kafka
//! topic can be named (Kafka allows only ASCII letters, digits, `.`, `_` and `-`).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;

pub const OTHER_TOPICS: &str = "(other)";

pub struct TopicLabels {
    max_unrouted: usize,
    routed: ArcSwap<HashSet<String>>,
    unrouted: RwLock<HashSet<String>>,
}

impl TopicLabels {
    pub fn new(max_unrouted: usize) -> TopicLabels {
        TopicLabels {
            max_unrouted,
            routed: ArcSwap::default(),
            unrouted: RwLock::default(),
        }
    }

    /// Puts the routes' topics in force; they always keep their own label.
    pub fn set_routed(&self, topics: impl IntoIterator<Item = String>) {
        self.routed.store(Arc::new(topics.into_iter().collect()));
    }

    /// The label for `topic`.
    pub fn label<'t>(&self, topic: &'t str) -> &'t str {
        if self.routed.load().contains(topic)
            || self.unrouted.read().expect("labels lock").contains(topic)
        {
            return topic;
        }
        let mut unrouted = self.unrouted.write().expect("labels lock");
        if unrouted.len() < self.max_unrouted {
            unrouted.insert(topic.to_owned());
            topic
        } else if unrouted.contains(topic) {
            topic
        } else {
            OTHER_TOPICS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_topics_and_the_first_unrouted_ones_keep_their_label() {
        let labels = TopicLabels::new(2);
        labels.set_routed(["orders".to_owned()]);
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("c"), OTHER_TOPICS);
        assert_eq!(labels.label("a"), "a", "a label once given is kept");
        assert_eq!(
            labels.label("orders"),
            "orders",
            "routed topics never share"
        );
        let made_up: HashSet<&str> = (0..2000)
            .map(|i| labels.label(Box::leak(format!("t{i}").into_boxed_str())))
            .collect();
        assert_eq!(made_up, HashSet::from([OTHER_TOPICS]));
    }
}
