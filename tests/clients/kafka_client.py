#!/usr/bin/env python3
"""One CLI over three Python Kafka clients, used by the integration tests.

  kafka_client.py --client confluent|kafka-python|aiokafka produce \
      --bootstrap B --topic T --count N --codec none|gzip|snappy|lz4|zstd \
      --acks 0|1|all [--idempotent] [--legacy-api] [--rate R --acked-log FILE]
      (--legacy-api: kafka-python only, api_version=(0, 10): Produce v2
      carrying a v1 message set)
  kafka_client.py --client ... consume --bootstrap B --topic T --count N \
      [--group G] [--timeout S]
  kafka_client.py admin --bootstrap B create --topic T --partitions P
  kafka_client.py admin --bootstrap B list

Every command prints exactly one JSON line on stdout; diagnostics go to
stderr. Records come from records.py. Consumers always start at offset 0
(without --group) because tansu 0.6.0 reports a wrong high watermark and
skips records when a fetch starts inside a batch.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from records import Verifier, record  # noqa: E402


class Errors:
    def __init__(self):
        self.count = 0
        self.first = []

    def add(self, e):
        self.count += 1
        if len(self.first) < 5:
            self.first.append(str(e) or repr(e))


def group_summary(assigned, committed):
    """Partitions this member was ever assigned, and the group's committed
    offsets per partition afterwards (negative: nothing committed)."""
    committed = {int(p): (o if o is not None and o >= 0 else -1) for p, o in committed.items()}
    return {
        "assigned": sorted(assigned),
        "committed": {str(p): o for p, o in sorted(committed.items())},
        "committed_total": sum(o for o in committed.values() if o > 0),
    }


def produce_result(n, errors):
    return {"produced": n, "errors": errors.first, "error_count": errors.count}


# --------------------------------------------------------------------------
# confluent-kafka (librdkafka)
# --------------------------------------------------------------------------


def confluent_produce(a):
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": a.bootstrap,
        "compression.type": a.codec,
        "acks": a.acks,
        "linger.ms": 5,
        "message.timeout.ms": int(a.timeout * 1000),
        "enable.idempotence": bool(a.idempotent),
    }
    p = Producer(conf, logger=logging.getLogger("rdkafka"))
    errors = Errors()
    ok = [0]
    acked_log = open(a.acked_log, "w", buffering=1) if a.acked_log else None

    def cb(err, msg):
        if err is not None:
            errors.add(err)
        else:
            ok[0] += 1
            if acked_log:
                acked_log.write(f"{msg.partition()} {msg.offset()} {msg.key().decode()}\n")

    started = time.monotonic()
    for i in range(a.count):
        if a.rate:
            # Paced: record i is due i/rate seconds after the start.
            while time.monotonic() - started < i / a.rate:
                p.poll(0.005)
        k, v = record(a.topic, i)
        while True:
            try:
                p.produce(a.topic, key=k, value=v, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.1)
            except Exception as e:  # noqa: BLE001
                errors.add(e)
                break
        p.poll(0)
    remaining = p.flush(a.timeout)
    if remaining:
        errors.add(f"{remaining} messages still undelivered after flush({a.timeout})")
    if acked_log:
        acked_log.close()
    return produce_result(ok[0], errors)


def confluent_consume(a):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    v = Verifier(a.topic, a.count)
    conf = {
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group or f"kkp-nogroup-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": bool(a.group),
    }
    c = Consumer(conf, logger=logging.getLogger("rdkafka"))
    deadline = time.monotonic() + a.timeout
    errors = []
    assigned = set()
    if a.group:

        def on_assign(_consumer, parts):
            assigned.update(tp.partition for tp in parts)

        c.subscribe([a.topic], on_assign=on_assign)
    else:
        md = c.list_topics(a.topic, timeout=a.timeout)
        tmd = md.topics.get(a.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            raise SystemExit(f"no metadata for topic {a.topic}: {tmd and tmd.error}")
        c.assign([TopicPartition(a.topic, p, 0) for p in sorted(tmd.partitions)])
    while not v.done() and time.monotonic() < deadline:
        msgs = c.consume(num_messages=1000, timeout=0.5)
        for m in msgs:
            if m.error():
                if len(errors) < 5:
                    errors.append(str(m.error()))
                continue
            v.add(m.key(), m.value(), f"p{m.partition()}@{m.offset()}")
    if a.group:
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:
            # _NO_OFFSET: nothing consumed, nothing to commit
            if "NO_OFFSET" not in str(e):
                errors.append(f"commit: {e}")
        md = c.list_topics(a.topic, timeout=10).topics[a.topic]
        tps = [TopicPartition(a.topic, p) for p in sorted(md.partitions)]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
    c.close()
    out = v.summary()
    out["errors"] = errors
    if a.group:
        out.update(group_summary(assigned, committed))
    return out


def confluent_admin(a):
    from confluent_kafka.admin import AdminClient, NewTopic

    ad = AdminClient({"bootstrap.servers": a.bootstrap})
    if a.admin_cmd == "create":
        futs = ad.create_topics(
            [NewTopic(a.topic, num_partitions=a.partitions, replication_factor=-1)],
            operation_timeout=30,
            request_timeout=30,
        )
        futs[a.topic].result(timeout=60)
        return {"created": a.topic, "partitions": a.partitions}
    md = ad.list_topics(timeout=30)
    return sorted(md.topics.keys())


# --------------------------------------------------------------------------
# kafka-python
# --------------------------------------------------------------------------


def kp_acks(acks):
    return "all" if acks == "all" else int(acks)


def kp_codec(codec):
    return None if codec == "none" else codec


def kafka_python_produce(a):
    from kafka import KafkaProducer

    kw = dict(
        bootstrap_servers=a.bootstrap,
        acks=kp_acks(a.acks),
        compression_type=kp_codec(a.codec),
        linger_ms=5,
        enable_idempotence=bool(a.idempotent),
        request_timeout_ms=30000,
        # must exceed linger_ms + request_timeout_ms
        delivery_timeout_ms=max(int(a.timeout * 1000), 31000),
        max_block_ms=int(a.timeout * 1000),
    )
    if a.legacy_api:
        kw["api_version"] = (0, 10)
    p = KafkaProducer(**kw)
    errors = Errors()
    ok = [0]

    def on_ok(_md):
        ok[0] += 1

    for i in range(a.count):
        k, v = record(a.topic, i)
        try:
            f = p.send(a.topic, key=k, value=v)
            f.add_callback(on_ok)
            f.add_errback(errors.add)
        except Exception as e:  # noqa: BLE001
            errors.add(e)
    try:
        p.flush(timeout=a.timeout)
    except Exception as e:  # noqa: BLE001
        # Records still unacknowledged at the deadline (a broker that keeps closing the
        # connection, for example): reported, not raised, so the JSON line still prints.
        errors.add(f"flush: {e!r}")
        try:
            p.close(timeout=0)
        except Exception:  # noqa: BLE001
            pass  # the same undelivered records; already reported
    else:
        p.close(timeout=10)
    return produce_result(ok[0], errors)


def kafka_python_consume(a):
    from kafka import KafkaConsumer, TopicPartition

    v = Verifier(a.topic, a.count)
    kw = dict(
        bootstrap_servers=a.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=bool(a.group),
        group_id=a.group,
        consumer_timeout_ms=1000,
    )
    c = KafkaConsumer(**kw)
    deadline = time.monotonic() + a.timeout
    assigned = set()
    if a.group:
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_assigned(self, parts):
                assigned.update(tp.partition for tp in parts)

            def on_partitions_revoked(self, parts):
                pass

        c.subscribe([a.topic], listener=Listener())
    else:
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = c.partitions_for_topic(a.topic)
            if not parts:
                time.sleep(0.2)
        if not parts:
            raise SystemExit(f"no metadata for topic {a.topic}")
        tps = [TopicPartition(a.topic, p) for p in sorted(parts)]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
    while not v.done() and time.monotonic() < deadline:
        batch = c.poll(timeout_ms=500, max_records=2000)
        for tp, msgs in batch.items():
            for m in msgs:
                v.add(m.key, m.value, f"p{tp.partition}@{m.offset}")
    errors = []
    if a.group:
        try:
            c.commit()
        except Exception as e:  # noqa: BLE001
            errors.append(f"commit: {e}")
        parts = c.partitions_for_topic(a.topic) or []
        committed = {p: c.committed(TopicPartition(a.topic, p)) for p in parts}
    c.close(autocommit=False)
    out = v.summary()
    out["errors"] = errors
    if a.group:
        out.update(group_summary(assigned, committed))
    return out


# --------------------------------------------------------------------------
# aiokafka
# --------------------------------------------------------------------------


def aiokafka_produce(a):
    from aiokafka import AIOKafkaProducer

    async def run():
        kw = dict(
            bootstrap_servers=a.bootstrap,
            acks=kp_acks(a.acks),
            compression_type=kp_codec(a.codec),
            linger_ms=5,
            enable_idempotence=bool(a.idempotent),
            request_timeout_ms=30000,
        )
        p = AIOKafkaProducer(**kw)
        errors = Errors()
        await p.start()
        ok = 0
        try:
            futs = []
            for i in range(a.count):
                k, v = record(a.topic, i)
                try:
                    futs.append(await p.send(a.topic, key=k, value=v))
                except Exception as e:  # noqa: BLE001
                    errors.add(e)
            done = await asyncio.wait_for(
                asyncio.gather(*futs, return_exceptions=True), a.timeout
            )
            for r in done:
                if isinstance(r, BaseException):
                    errors.add(r)
                else:
                    ok += 1
        finally:
            await p.stop()
        return produce_result(ok, errors)

    return asyncio.run(run())


def aiokafka_consume(a):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        v = Verifier(a.topic, a.count)
        c = AIOKafkaConsumer(
            bootstrap_servers=a.bootstrap,
            group_id=a.group,
            auto_offset_reset="earliest",
            enable_auto_commit=bool(a.group),
        )
        await c.start()
        errors = []
        deadline = time.monotonic() + a.timeout
        assigned = set()
        committed = {}
        try:
            if a.group:
                from aiokafka import ConsumerRebalanceListener

                class Listener(ConsumerRebalanceListener):
                    def on_partitions_assigned(self, parts):
                        assigned.update(tp.partition for tp in parts)

                    def on_partitions_revoked(self, parts):
                        pass

                c.subscribe([a.topic], listener=Listener())
            else:
                parts = None
                while not parts and time.monotonic() < deadline:
                    parts = c.partitions_for_topic(a.topic)
                    if not parts:
                        await c._client.force_metadata_update()
                        parts = c.partitions_for_topic(a.topic)
                        if not parts:
                            await asyncio.sleep(0.2)
                if not parts:
                    raise SystemExit(f"no metadata for topic {a.topic}")
                tps = [TopicPartition(a.topic, p) for p in sorted(parts)]
                c.assign(tps)
                for tp in tps:
                    c.seek(tp, 0)
            while not v.done() and time.monotonic() < deadline:
                batch = await c.getmany(timeout_ms=500, max_records=2000)
                for tp, msgs in batch.items():
                    for m in msgs:
                        v.add(m.key, m.value, f"p{tp.partition}@{m.offset}")
            if a.group:
                try:
                    await c.commit()
                except Exception as e:  # noqa: BLE001
                    errors.append(f"commit: {e}")
                for p in c.partitions_for_topic(a.topic) or []:
                    committed[p] = await c.committed(TopicPartition(a.topic, p))
        finally:
            await c.stop()
        out = v.summary()
        out["errors"] = errors
        if a.group:
            out.update(group_summary(assigned, committed))
        return out

    return asyncio.run(run())


CLIENTS = {
    "confluent": (confluent_produce, confluent_consume),
    "kafka-python": (kafka_python_produce, kafka_python_consume),
    "aiokafka": (aiokafka_produce, aiokafka_consume),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=sorted(CLIENTS), default="confluent")
    sub = ap.add_subparsers(dest="cmd", required=True)

    pp = sub.add_parser("produce")
    pp.add_argument("--bootstrap", required=True)
    pp.add_argument("--topic", required=True)
    pp.add_argument("--count", type=int, required=True)
    pp.add_argument("--codec", choices=["none", "gzip", "snappy", "lz4", "zstd"], default="none")
    pp.add_argument("--acks", choices=["0", "1", "all"], default="all")
    pp.add_argument("--idempotent", action="store_true")
    pp.add_argument("--legacy-api", action="store_true")
    pp.add_argument("--timeout", type=float, default=60.0)
    pp.add_argument("--rate", type=float, default=0.0, help="records per second (0: as fast as possible)")
    pp.add_argument("--acked-log", help="append 'PARTITION OFFSET KEY' per acknowledged record")

    cp = sub.add_parser("consume")
    cp.add_argument("--bootstrap", required=True)
    cp.add_argument("--topic", required=True)
    cp.add_argument("--count", type=int, required=True)
    cp.add_argument("--group")
    cp.add_argument("--timeout", type=float, default=60.0)

    adp = sub.add_parser("admin")
    adp.add_argument("--bootstrap", required=True)
    asub = adp.add_subparsers(dest="admin_cmd", required=True)
    acr = asub.add_parser("create")
    acr.add_argument("--topic", required=True)
    acr.add_argument("--partitions", type=int, default=1)
    asub.add_parser("list")

    a = ap.parse_args()
    if (getattr(a, "rate", 0) or getattr(a, "acked_log", None)) and a.client != "confluent":
        ap.error("--rate and --acked-log are only implemented for --client confluent")
    if getattr(a, "legacy_api", False) and a.client != "kafka-python":
        # librdkafka turns ApiVersion requests back on for any fallback
        # >= 0.10, and aiokafka >= 0.13 ignores api_version.
        ap.error("--legacy-api is only implemented for --client kafka-python")
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, os.environ.get("KKP_CLIENT_LOG", "WARNING").upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if a.cmd == "admin":
        out = confluent_admin(a)
    else:
        produce, consume = CLIENTS[a.client]
        out = (produce if a.cmd == "produce" else consume)(a)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
