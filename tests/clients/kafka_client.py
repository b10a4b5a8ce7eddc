#!/usr/bin/env python3
"""One CLI over three Python Kafka clients, used by the integration tests.

  kafka_client.py --client confluent|kafka-python|aiokafka produce \
      --bootstrap B --topic T --count N --codec none|gzip|snappy|lz4|zstd \
      --acks 0|1|all [--idempotent] [--legacy-api] [--rate R --acked-log FILE]
      (--legacy-api: kafka-python only, api_version=(0, 10): Produce v2
      carrying a v1 message set)
      [--transactional-id ID [--txn-size K] [--abort-every M]]   (confluent only)
  kafka_client.py --client ... consume --bootstrap B --topic T --count N \
      [--group G] [--timeout S]
      confluent only: [--isolation read_committed|read_uncommitted]
      [--list-indices] [--expect-indices FILE] [--group-protocol classic|consumer]
      [--commit auto|sync] [--events FILE] [--stop-file FILE]
      [--assignment-strategy range|roundrobin|cooperative-sticky] [--session-timeout-ms MS]
      [--commit-delay-ms MS]
  Security (produce and consume; confluent and kafka-python):
      [--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL]
      [--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U
       --sasl-password P] [--ssl-ca FILE]
      An authentication error ends a produce: the records not yet
      acknowledged are counted as errors and the authentication error is the
      first in "errors". confluent stops at once (librdkafka would retry until
      message.timeout.ms); kafka-python gives up at its bootstrap_timeout_ms
      (30 s) and the CLI names the SASL error it logged.
  kafka_client.py admin --bootstrap B create --topic T --partitions P \
      [--replication-factor R] [--config K=V[,K=V...]]
  kafka_client.py admin --bootstrap B list
  kafka_client.py admin --bootstrap B delete --topic T | describe --topic T \
      | describe-configs --topic T | list-groups | describe-group --group G

Transactions (--transactional-id), same contract as KkpClient.java: records
go out in transactions of K records (default 100); transaction numbers M,
2M, ... (1-based) are flushed and then aborted, the others committed; record
indices stay consecutive. "produced" counts every acknowledged record (the
aborted ones too); added: "committed_count", "aborted_count" and, when
count <= 20000, "committed" (sorted indices of committed records).
--transaction-timeout-ms sets transaction.timeout.ms (confluent only).
--abandon-last flushes the last transaction, then exits at once without ending
it, as a producer killed mid-transaction; adds "abandoned_count".

consume --expect-indices FILE (a produce output with "committed", or bare
integers): stop once every expected index is seen and every partition is at
its end (the last stable offset under read_committed); "missing" counts
expected indices not seen; adds "expected", "unexpected" (distinct indices
seen that were not expected), "unexpected_examples". --list-indices adds
"indices".

Group members (--commit sync, --events, --stop-file): the contract of
KkpClient.java's consume (see its header): offsets committed synchronously
after each processed poll, in the revoke callback and before close; one
events line per record ("r P OFFSET INDEX"), rebalance callback
("assigned/revoked/lost P ...") and commit ("commit ok|fail WHY P:NEXT ...");
"closed" at the end; the member runs until the stop file exists.

Every command prints exactly one JSON line on stdout; diagnostics go to
stderr. Records come from records.py. Without --group, consumers read every
partition from offset 0, so a topic's whole content is checked.
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
from records import Verifier, index_of_key, record  # noqa: E402


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


def add_security_args(parser):
    """The security options every client family of the test contract takes."""
    parser.add_argument("--security-protocol", default="PLAINTEXT",
                        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
    parser.add_argument("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password")
    parser.add_argument("--ssl-ca", help="PEM file of the CA that signed the server certificate")


def produce_result(n, errors):
    return {"produced": n, "errors": errors.first, "error_count": errors.count}


# --------------------------------------------------------------------------
# confluent-kafka (librdkafka)
# --------------------------------------------------------------------------


def confluent_security(a):
    """librdkafka properties for the security options."""
    conf = {"security.protocol": a.security_protocol}
    if a.sasl_mechanism:
        conf.update({
            "sasl.mechanisms": a.sasl_mechanism,
            "sasl.username": a.sasl_username,
            "sasl.password": a.sasl_password,
        })
    if a.ssl_ca:
        conf["ssl.ca.location"] = a.ssl_ca
    return conf


class AuthFailure:
    """librdkafka's error_cb: records an authentication failure. librdkafka reports it
    there and keeps retrying the connection, so queued records would only fail at
    message.timeout.ms; the producer stops as soon as one is seen instead."""

    def __init__(self, errors):
        self.errors = errors
        self.failed = False

    def __call__(self, err):
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._AUTHENTICATION:
            if not self.failed:
                self.errors.add(err)
            self.failed = True
        else:
            logging.getLogger("rdkafka").warning("client error: %s", err)


def confluent_flush(p, timeout, auth):
    """flush(timeout), cut short by an authentication failure (the rest is purged and
    reported through the delivery callbacks). Returns the records still queued."""
    deadline = time.monotonic() + timeout
    remaining = len(p)
    while remaining and not auth.failed and time.monotonic() < deadline:
        remaining = p.flush(min(0.2, max(0.0, deadline - time.monotonic())))
    if remaining and auth.failed:
        p.purge()
        remaining = p.flush(1)
    return remaining


def confluent_produce(a):
    from confluent_kafka import Producer

    errors = Errors()
    auth = AuthFailure(errors)
    conf = {
        **confluent_security(a),
        "bootstrap.servers": a.bootstrap,
        "compression.type": a.codec,
        "acks": a.acks,
        "linger.ms": 5,
        "message.timeout.ms": int(a.timeout * 1000),
        "enable.idempotence": bool(a.idempotent),
    }
    if a.transactional_id:
        conf["transactional.id"] = a.transactional_id
        conf["enable.idempotence"] = True
        # librdkafka requires message.timeout.ms <= transaction.timeout.ms
        if a.transaction_timeout_ms:
            conf["transaction.timeout.ms"] = a.transaction_timeout_ms
            conf["message.timeout.ms"] = min(conf["message.timeout.ms"], a.transaction_timeout_ms)
        else:
            conf["transaction.timeout.ms"] = max(60000, conf["message.timeout.ms"])
        return confluent_produce_transactional(a, conf)
    p = Producer({**conf, "error_cb": auth}, logger=logging.getLogger("rdkafka"))
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
        if auth.failed:
            # Records never handed to the producer.
            errors.count += a.count - i
            break
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
                if auth.failed:
                    errors.count += 1
                    break
                p.poll(0.1)
            except Exception as e:  # noqa: BLE001
                errors.add(e)
                break
        p.poll(0)
    remaining = confluent_flush(p, a.timeout, auth)
    if remaining:
        errors.add(f"{remaining} messages still undelivered after flush({a.timeout})")
    if acked_log:
        acked_log.close()
    return produce_result(ok[0], errors)


def confluent_produce_transactional(a, conf):
    from confluent_kafka import KafkaException, Producer

    p = Producer(conf, logger=logging.getLogger("rdkafka"))
    errors = Errors()
    ok = [0]
    committed = []
    aborted = 0

    def cb(err, _msg):
        if err is not None:
            errors.add(err)
        else:
            ok[0] += 1

    def send(i):
        k, v = record(a.topic, i)
        while True:
            try:
                p.produce(a.topic, key=k, value=v, on_delivery=cb)
                return
            except BufferError:
                p.poll(0.1)

    p.init_transactions(a.timeout)
    txn = 0
    for start in range(0, a.count, a.txn_size):
        txn += 1
        end = min(a.count, start + a.txn_size)
        abort = a.abort_every > 0 and txn % a.abort_every == 0
        try:
            p.begin_transaction()
            for i in range(start, end):
                send(i)
                p.poll(0)
            if a.abandon_last and end == a.count:
                # Flushed, so the records are in the log, then left open as by a producer
                # killed mid-transaction: no EndTxn, no clean close.
                remaining = p.flush(a.timeout)
                out = produce_result(ok[0], errors)
                out["committed_count"] = len(committed)
                out["aborted_count"] = aborted
                out["abandoned_count"] = end - start - remaining
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()
                os._exit(0)
            if abort:
                # Flush first, so the aborted records really are in the log.
                remaining = p.flush(a.timeout)
                if remaining:
                    raise RuntimeError(f"{remaining} records unflushed before abort")
                p.abort_transaction(a.timeout)
                aborted += end - start
            else:
                p.commit_transaction(a.timeout)
                committed.extend(range(start, end))
        except KafkaException as e:
            err = e.args[0]
            errors.add(f"transaction {txn}: {err}")
            if err.fatal():
                # No further transactions possible.
                break
            try:
                p.abort_transaction(a.timeout)
            except KafkaException as e2:
                errors.add(f"abort transaction {txn}: {e2}")
                break
        except RuntimeError as e:
            errors.add(f"transaction {txn}: {e}")
            break
    p.flush(10)
    out = produce_result(ok[0], errors)
    out["committed_count"] = len(committed)
    out["aborted_count"] = aborted
    if a.count <= 20000:
        out["committed"] = committed
    return out


def read_indices(path):
    """Indices in FILE: a produce output's "committed" list, or every integer."""
    import re

    text = open(path).read()
    k = text.find('"committed"')
    if k >= 0:
        text = text[text.index("[", k) + 1 : text.index("]", text.index("[", k))]
    return {int(x) for x in re.findall(r"-?\d+", text)}


class Events:
    """The --events log of a group member (see the module docstring)."""

    def __init__(self, path):
        self.f = open(path, "w") if path else None

    def line(self, s):
        if self.f:
            self.f.write(s + "\n")

    def partitions(self, what, parts):
        self.line(" ".join([what] + [str(q) for q in sorted(tp.partition for tp in parts)]))
        self.flush()

    def flush(self):
        if self.f:
            self.f.flush()

    def close(self):
        if self.f:
            self.f.close()


def confluent_consume(a):
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    v = Verifier(a.topic, a.count)
    expected = read_indices(a.expect_indices) if a.expect_indices else None
    sync = a.commit == "sync"
    conf = {
        **confluent_security(a),
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group or f"kkp-nogroup-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": bool(a.group) and not sync,
        "enable.partition.eof": expected is not None,
    }
    if a.isolation:
        # librdkafka's default is read_committed
        conf["isolation.level"] = a.isolation
    if a.group_protocol:
        conf["group.protocol"] = a.group_protocol
    if a.assignment_strategy:
        conf["partition.assignment.strategy"] = a.assignment_strategy
    if a.session_timeout_ms:
        conf["session.timeout.ms"] = a.session_timeout_ms
        conf["heartbeat.interval.ms"] = max(100, a.session_timeout_ms // 5)
    c = Consumer(conf, logger=logging.getLogger("rdkafka"))
    events = Events(a.events)
    deadline = time.monotonic() + a.timeout
    errors = []
    assigned = set()
    pending = {}  # partition -> next offset, processed but not committed
    commit_failures = [0]
    at_eof = set()

    def commit(which, why):
        offs = sorted((q, o) for q, o in pending.items() if which is None or q in which)
        if not offs:
            return
        desc = " ".join(f"{q}:{o}" for q, o in offs)
        try:
            res = c.commit(offsets=[TopicPartition(a.topic, q, o) for q, o in offs], asynchronous=False)
            bad = [f"p{tp.partition}: {tp.error}" for tp in (res or []) if tp.error is not None]
            if bad:
                raise KafkaException(KafkaError(KafkaError._FAIL, "; ".join(bad)))
        except KafkaException as e:
            commit_failures[0] += 1
            events.line(f"commit fail {why} {desc} | {str(e).replace(chr(10), ' ')}")
            logging.warning("commit (%s) failed: %s", why, e)
        else:
            events.line(f"commit ok {why} {desc}")
            for q, o in offs:
                if pending.get(q) == o:
                    del pending[q]
        events.flush()

    if a.group:

        def on_assign(_consumer, parts):
            assigned.update(tp.partition for tp in parts)
            events.partitions("assigned", parts)

        def on_revoke(_consumer, parts):
            gone = {tp.partition for tp in parts}
            if sync:
                commit(gone, "revoke")
            for q in gone:
                pending.pop(q, None)
            events.partitions("revoked", parts)

        def on_lost(_consumer, parts):
            # Owned by another member already: nothing may be committed.
            for tp in parts:
                pending.pop(tp.partition, None)
            events.partitions("lost", parts)

        c.subscribe([a.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        partitions = None
    else:
        md = c.list_topics(a.topic, timeout=a.timeout)
        tmd = md.topics.get(a.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            raise SystemExit(f"no metadata for topic {a.topic}: {tmd and tmd.error}")
        partitions = sorted(tmd.partitions)
        c.assign([TopicPartition(a.topic, p, 0) for p in partitions])

    def finished():
        if a.stop_file:
            return os.path.exists(a.stop_file)
        if expected is not None:
            return expected <= v.seen and partitions is not None and at_eof >= set(partitions)
        return v.done()

    while not finished() and time.monotonic() < deadline:
        msgs = c.consume(num_messages=500, timeout=0.5)
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(m.partition())
                elif len(errors) < 5:
                    errors.append(str(m.error()))
                continue
            at_eof.discard(m.partition())
            v.add(m.key(), m.value(), f"p{m.partition()}@{m.offset()}")
            i = index_of_key(m.key())
            events.line(f"r {m.partition()} {m.offset()} {-1 if i is None else i}")
            pending[m.partition()] = m.offset() + 1
        if msgs:
            events.flush()
            if sync:
                if a.commit_delay_ms:
                    time.sleep(a.commit_delay_ms / 1000)
                commit(None, "batch")
    if a.group:
        if sync:
            commit(None, "close")
        else:
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
    events.line("closed")
    events.close()
    out = v.summary()
    out["errors"] = errors
    if a.group:
        out.update(group_summary(assigned, committed))
    if a.stop_file:
        out["commit_failures"] = commit_failures[0]
    if expected is not None:
        seen_expected = len(expected & v.seen)
        unexpected = sorted(v.seen - expected)
        out["missing"] = len(expected) - seen_expected
        out["expected"] = len(expected)
        out["unexpected"] = len(unexpected)
        out["unexpected_examples"] = unexpected[:5]
    if a.list_indices:
        out["indices"] = sorted(v.seen)
    return out


def confluent_admin(a):
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

    ad = AdminClient({"bootstrap.servers": a.bootstrap}, logger=logging.getLogger("rdkafka"))
    if a.admin_cmd == "create":
        configs = {}
        for kv in filter(None, (a.config or "").split(",")):
            k, sep, val = kv.partition("=")
            if not sep or not k:
                raise SystemExit(f"--config: expected K=V[,K=V...], got {a.config!r}")
            configs[k] = val
        futs = ad.create_topics(
            [NewTopic(a.topic, num_partitions=a.partitions, replication_factor=a.replication_factor,
                      config=configs)],
            operation_timeout=30,
            request_timeout=30,
        )
        futs[a.topic].result(timeout=60)
        return {"created": a.topic, "partitions": a.partitions, "configs": configs}
    if a.admin_cmd == "delete":
        ad.delete_topics([a.topic], operation_timeout=30, request_timeout=30)[a.topic].result(timeout=60)
        return {"deleted": a.topic}
    if a.admin_cmd == "describe":
        d = ad.describe_topics(TopicCollection([a.topic]), request_timeout=30)[a.topic].result(timeout=60)
        return {
            "topic": d.name,
            "partitions": [
                {
                    "partition": p.id,
                    "leader": p.leader.id if p.leader is not None else -1,
                    "replicas": [n.id for n in p.replicas],
                    "isr": [n.id for n in p.isr],
                }
                for p in sorted(d.partitions, key=lambda p: p.id)
            ],
        }
    if a.admin_cmd == "describe-configs":
        r = ConfigResource(ResourceType.TOPIC, a.topic)
        entries = ad.describe_configs([r], request_timeout=30)[r].result(timeout=60)
        return {name: e.value for name, e in sorted(entries.items())}
    if a.admin_cmd == "list-groups":
        res = ad.list_consumer_groups(request_timeout=30).result(timeout=60)
        return {
            g.group_id: {
                "type": g.type.name.lower() if g.type is not None else "",
                "state": g.state.name.lower() if g.state is not None else "",
            }
            for g in sorted(res.valid, key=lambda g: g.group_id)
        }
    if a.admin_cmd == "describe-group":
        d = ad.describe_consumer_groups([a.group], request_timeout=30)[a.group].result(timeout=60)
        offs = ad.list_consumer_group_offsets([ConsumerGroupTopicPartitions(a.group)], request_timeout=30)
        tps = offs[a.group].result(timeout=60).topic_partitions or []
        return {
            "group": d.group_id,
            "state": d.state.name.lower() if d.state is not None else "",
            "type": d.type.name.lower() if d.type is not None else "",
            "coordinator": d.coordinator.id if d.coordinator is not None else -1,
            "assignor": d.partition_assignor,
            "members": len(d.members),
            "member_list": [
                {
                    "client_id": m.client_id,
                    "host": m.host,
                    "partitions": sorted(
                        f"{tp.topic}:{tp.partition}"
                        for tp in ((m.assignment.topic_partitions or []) if m.assignment else [])
                    ),
                }
                for m in d.members
            ],
            "offsets": {f"{tp.topic}:{tp.partition}": tp.offset for tp in sorted(tps, key=lambda t: (t.topic, t.partition))},
        }
    md = ad.list_topics(timeout=30)
    return sorted(md.topics.keys())


# --------------------------------------------------------------------------
# kafka-python
# --------------------------------------------------------------------------


def kp_acks(acks):
    return "all" if acks == "all" else int(acks)


def kp_codec(codec):
    return None if codec == "none" else codec


def kafka_python_security(a):
    """kafka-python keyword arguments for the security options."""
    kw = dict(security_protocol=a.security_protocol)
    if a.sasl_mechanism:
        kw.update(sasl_mechanism=a.sasl_mechanism, sasl_plain_username=a.sasl_username,
                  sasl_plain_password=a.sasl_password)
    if a.ssl_ca:
        kw["ssl_cafile"] = a.ssl_ca
    return kw


class SaslFailureLog(logging.Handler):
    """Keeps the first SASL authentication failure kafka-python logs. kafka-python 3
    retries a failed authentication until bootstrap_timeout_ms and then raises
    KafkaTimeoutError; the authentication error itself only reaches its log, as an
    argument of the log record."""

    def __init__(self):
        super().__init__()
        self.error = None

    def emit(self, rec):
        from kafka.errors import SaslAuthenticationFailedError

        args = rec.args if isinstance(rec.args, tuple) else ()
        for arg in args:
            if self.error is None and isinstance(arg, SaslAuthenticationFailedError):
                self.error = arg


def kafka_python_produce(a):
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    kw = dict(
        **kafka_python_security(a),
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
    errors = Errors()
    sasl_failure = SaslFailureLog()
    logging.getLogger("kafka").addHandler(sasl_failure)
    try:
        p = KafkaProducer(**kw)
    except KafkaTimeoutError as e:
        # No cluster reached within bootstrap_timeout_ms: nothing can be sent; say why.
        if sasl_failure.error is not None:
            errors.add(sasl_failure.error)
        errors.add(e)
        errors.count = a.count
        return produce_result(0, errors)
    finally:
        logging.getLogger("kafka").removeHandler(sasl_failure)
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
        **kafka_python_security(a),
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
    pp.add_argument("--transactional-id")
    pp.add_argument("--txn-size", type=int, default=100)
    pp.add_argument("--abort-every", type=int, default=0)
    pp.add_argument("--transaction-timeout-ms", type=int, default=0)
    pp.add_argument("--abandon-last", action="store_true", help="leave the last transaction open and exit at once")

    cp = sub.add_parser("consume")
    cp.add_argument("--bootstrap", required=True)
    cp.add_argument("--topic", required=True)
    cp.add_argument("--count", type=int, required=True)
    cp.add_argument("--group")
    cp.add_argument("--timeout", type=float, default=60.0)
    cp.add_argument("--isolation", choices=["read_committed", "read_uncommitted"])
    cp.add_argument("--list-indices", action="store_true")
    cp.add_argument("--expect-indices")
    cp.add_argument("--group-protocol", choices=["classic", "consumer"])
    cp.add_argument("--commit", choices=["auto", "sync"], default="auto")
    cp.add_argument("--events")
    cp.add_argument("--stop-file")
    cp.add_argument("--assignment-strategy", choices=["range", "roundrobin", "cooperative-sticky"])
    cp.add_argument("--session-timeout-ms", type=int)
    cp.add_argument("--commit-delay-ms", type=int, default=0,
                    help="wait between processing a poll's records and committing them")
    for parser in (pp, cp):
        add_security_args(parser)

    adp = sub.add_parser("admin")
    adp.add_argument("--bootstrap", required=True)
    asub = adp.add_subparsers(dest="admin_cmd", required=True)
    acr = asub.add_parser("create")
    acr.add_argument("--topic", required=True)
    acr.add_argument("--partitions", type=int, default=1)
    acr.add_argument("--replication-factor", type=int, default=-1)
    acr.add_argument("--config", help="K=V[,K=V...]")
    asub.add_parser("list")
    for name in ("delete", "describe", "describe-configs"):
        asub.add_parser(name).add_argument("--topic", required=True)
    asub.add_parser("list-groups")
    asub.add_parser("describe-group").add_argument("--group", required=True)

    a = ap.parse_args()
    if (getattr(a, "rate", 0) or getattr(a, "acked_log", None)) and a.client != "confluent":
        ap.error("--rate and --acked-log are only implemented for --client confluent")
    if getattr(a, "transactional_id", None) and a.client != "confluent":
        ap.error("--transactional-id is only implemented for --client confluent")
    confluent_only = ("isolation", None), ("list_indices", False), ("expect_indices", None), \
        ("group_protocol", None), ("commit", "auto"), ("events", None), ("stop_file", None), \
        ("assignment_strategy", None), ("session_timeout_ms", None), ("commit_delay_ms", 0)
    if a.cmd == "consume" and a.client != "confluent":
        for name, default in confluent_only:
            if getattr(a, name) != default:
                ap.error(f"--{name.replace('_', '-')} is only implemented for --client confluent")
    if a.cmd != "admin" and a.client == "aiokafka" and (
            a.security_protocol != "PLAINTEXT" or a.sasl_mechanism or a.ssl_ca):
        ap.error("the security options are only implemented for confluent and kafka-python")
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
