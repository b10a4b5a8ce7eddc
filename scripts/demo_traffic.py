#!/usr/bin/env python3
"""Steady keyed traffic for the demo (and the tests): RATE records/s to TOPIC through
BOOTSTRAP until stopped, or until --count records.

Keys cycle over a fixed set of customers, so the key-consistent sample is visible: the same
customers stay mirrored as the percentage rises.
"""

import argparse
import json
import signal
import sys
import time

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--client-id", default="demo-traffic")
    ap.add_argument("--codec", default="lz4")
    ap.add_argument("--idempotent", action="store_true")
    ap.add_argument("--count", type=int, default=0, help="stop after this many records (0: until signalled)")
    a = ap.parse_args()
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    signal.signal(signal.SIGINT, lambda *_: running.__setitem__(0, False))
    p = Producer({
        "bootstrap.servers": a.bootstrap,
        "client.id": a.client_id,
        "linger.ms": 20,
        "compression.type": a.codec,
        "acks": "all",
        "enable.idempotence": a.idempotent,
    })
    stats = {"sent": 0, "errors": 0}

    def delivered(err, _msg):
        stats["errors" if err else "sent"] += 1

    i = 0
    start = time.monotonic()
    while running[0]:
        due = int((time.monotonic() - start) * a.rate)
        if a.count:
            due = min(due, a.count)
            if i >= a.count:
                break
        while i < due and running[0]:
            key = f"customer-{i % a.keys:05d}"
            value = json.dumps({"order": i, "customer": key, "amount_cents": (i * 7919) % 100000})
            p.produce(a.topic, key=key, value=value, on_delivery=delivered)
            i += 1
        p.poll(0.05)
    # Block mode can hold responses back for a while: wait, and count what never left.
    unflushed = p.flush(120)
    stats["errors"] += unflushed
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
