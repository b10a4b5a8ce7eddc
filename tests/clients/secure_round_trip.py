#!/usr/bin/env python3
"""confluent-kafka produce-and-consume-back with any librdkafka settings, for the security
listener tests:

  secure_round_trip.py --bootstrap B --topic T --count N [-X key=value ...]

Produces N keyed records from records.py (acks=all), reads them back from offset 0 and prints
one JSON line: produced, error_count, errors, and the Verifier summary of what was read.
"""

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from records import Verifier, record  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("-X", dest="props", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    from confluent_kafka import Consumer, Producer, TopicPartition

    conf = {"bootstrap.servers": a.bootstrap}
    for prop in a.props:
        key, _, value = prop.partition("=")
        conf[key] = value
    errors = []
    acked = [0]

    def on_delivery(err, _msg):
        if err is not None:
            if len(errors) < 5:
                errors.append(str(err))
        else:
            acked[0] += 1

    def on_error(err):
        # Client-level errors (authentication, TLS) that the delivery reports only show as
        # timeouts.
        if len(errors) < 5:
            errors.append(f"client: {err}")

    p = Producer({**conf, "acks": "all", "message.timeout.ms": int(a.timeout * 1000),
                  "error_cb": on_error}, logger=logging.getLogger("rdkafka"))
    for i in range(a.count):
        k, v = record(a.topic, i)
        p.produce(a.topic, key=k, value=v, on_delivery=on_delivery)
        p.poll(0)
    p.flush(a.timeout)
    out = {"produced": acked[0], "error_count": a.count - acked[0], "errors": errors}

    verifier = Verifier(a.topic, a.count)
    if acked[0]:
        c = Consumer({**conf, "group.id": f"secure-{a.topic}", "enable.auto.commit": False},
                     logger=logging.getLogger("rdkafka"))
        md = c.list_topics(a.topic, timeout=a.timeout).topics[a.topic]
        c.assign([TopicPartition(a.topic, part, 0) for part in md.partitions])
        deadline = time.monotonic() + a.timeout
        while not verifier.done() and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error() is None:
                    verifier.add(m.key(), m.value(), f"p{m.partition()}@{m.offset()}")
        c.close()
    out.update(verifier.summary())
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
