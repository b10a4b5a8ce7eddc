"""Deterministic test records shared by every client script.

The same generator is mirrored (exactly, byte for byte) by `recordFor` in
kafkajs_client.js. `python3 records.py TOPIC START [END]` and
`node kafkajs_client.js record TOPIC START [END]` print records, so the two
can be compared (tests/kafka_clients.rs: generator_mirror_matches).

Record i of topic T:
  key   = "key-{i:06d}"
  value = "{T}|{i}|" + payload, where payload is 10..1000 printable ASCII
          bytes drawn from a small word list (so it compresses well), chosen
          by an xorshift32 stream seeded with FNV-1a-32 of "{T}|{i}".
"""

import sys

MASK = 0xFFFFFFFF
WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "kafka", "kinesis", "proxy", "record", "batch", "0123456789", "~!@#$%^&*()", "ZZZ",
]


def _fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & MASK
    return h


def record(topic, i):
    """Return (key, value) as bytes for record number i of topic."""
    x = _fnv1a32(f"{topic}|{i}".encode()) or 0x9E3779B9

    def nxt():
        nonlocal x
        x ^= (x << 13) & MASK
        x ^= x >> 17
        x ^= (x << 5) & MASK
        return x

    length = 10 + nxt() % 991
    parts = []
    n = 0
    while n < length:
        w = WORDS[nxt() % len(WORDS)]
        parts.append(w)
        n += len(w) + 1
    payload = " ".join(parts)[:length]
    key = f"key-{i:06d}".encode()
    value = f"{topic}|{i}|{payload}".encode()
    return key, value


def index_of_key(key):
    """Parse "key-000123" -> 123; None if the key is not one of ours."""
    if key is None:
        return None
    try:
        s = key.decode() if isinstance(key, (bytes, bytearray)) else str(key)
    except UnicodeDecodeError:
        return None
    if not s.startswith("key-") or not s[4:].isdigit():
        return None
    return int(s[4:])


class Verifier:
    """Checks consumed records against the generator and summarises them."""

    def __init__(self, topic, count):
        self.topic = topic
        self.count = count
        self.consumed = 0
        self.seen = set()
        self.duplicates = 0
        self.mismatched = 0
        self.examples = []

    def _example(self, msg):
        if len(self.examples) < 5:
            self.examples.append(msg)

    def add(self, key, value, where=""):
        self.consumed += 1
        i = index_of_key(key)
        if i is None or i >= self.count:
            self.mismatched += 1
            self._example(f"unexpected key {key!r:.60} at {where}")
            return
        if i in self.seen:
            self.duplicates += 1
            return
        ek, ev = record(self.topic, i)
        if bytes(value or b"") != ev:
            self.mismatched += 1
            self._example(
                f"value mismatch for {ek.decode()} at {where}: "
                f"got {len(value or b'')} bytes {bytes(value or b'')[:40]!r}, "
                f"want {len(ev)} bytes {ev[:40]!r}"
            )
            # still counts as seen: it was delivered, just wrong
        self.seen.add(i)

    def done(self):
        return len(self.seen) >= self.count

    def summary(self):
        return {
            "consumed": self.consumed,
            "distinct": len(self.seen),
            "missing": self.count - len(self.seen),
            "duplicates": self.duplicates,
            "mismatched": self.mismatched,
            "examples": self.examples,
        }


if __name__ == "__main__":
    # records.py TOPIC START [END]: print records START..END (exclusive)
    start = int(sys.argv[2])
    end = int(sys.argv[3]) if len(sys.argv) > 3 else start + 1
    for n in range(start, end):
        k, v = record(sys.argv[1], n)
        sys.stdout.write(k.decode() + "\n" + v.decode() + "\n")
