#!/usr/bin/env python3
"""Checks records read back from Kinesis against the shared generator (records.py).

Input on stdin: one record per line, "PARTITION_KEY<TAB>BASE64_DATA". The data of record i of
topic T is record(T, i).value, which starts with "T|i|", so each line names its own expected
content. Prints one JSON object: per topic, the records seen, distinct keys, duplicates, and
records whose partition key or data differ from what the generator produced.
"""

import base64
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from records import index_of_key, record  # noqa: E402


def main():
    topics = {}
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        key, data_b64 = line.split("\t", 1)
        data = base64.b64decode(data_b64)
        topic, _, rest = data.partition(b"|")
        topic = topic.decode(errors="replace")
        t = topics.setdefault(topic, {"records": 0, "keys": set(), "duplicates": 0, "mismatched": 0, "examples": []})
        t["records"] += 1
        i = index_of_key(key)
        expected = record(topic, i) if i is not None else None
        if expected is None or expected[0].decode() != key or expected[1] != data:
            t["mismatched"] += 1
            if len(t["examples"]) < 3:
                t["examples"].append({"partition_key": key, "data_prefix": data[:60].decode(errors="replace")})
            continue
        if key in t["keys"]:
            t["duplicates"] += 1
        t["keys"].add(key)
    out = {
        topic: {"records": t["records"], "distinct": len(t["keys"]), "duplicates": t["duplicates"],
                "mismatched": t["mismatched"], "examples": t["examples"]}
        for topic, t in topics.items()
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
