// Java (kafka-clients) side of the client test contract; see
// tests/clients/kafka_client.py for the CLI and the JSON each command prints.
//
//   KkpClient produce --bootstrap B --topic T --count N [--codec none|gzip|snappy|lz4|zstd]
//       [--acks 0|1|all] [--idempotent] [--timeout S]
//       [--transactional-id ID [--txn-size K] [--abort-every M]]
//   KkpClient consume --bootstrap B --topic T --count N [--group G] [--timeout S]
//       [--isolation read_committed|read_uncommitted] [--group-protocol classic|consumer]
//       [--list-indices] [--expect-indices FILE]
//       [--commit auto|sync] [--events FILE] [--stop-file FILE]
//       [--assignment-strategy range|roundrobin|cooperative-sticky] [--session-timeout-ms MS]
//       [--max-poll-records N] [--commit-delay-ms MS]
//   KkpClient admin --bootstrap B create --topic T [--partitions P] [--replication-factor R]
//       [--config K=V[,K=V...]]
//   KkpClient admin --bootstrap B list | list-groups
//   KkpClient admin --bootstrap B delete --topic T | describe --topic T | describe-configs --topic T
//   KkpClient admin --bootstrap B describe-group --group G
//       (list-groups: {group: {"type", "state", "protocol"}}; describe-group: state, type,
//       coordinator, assignor, members, member_list, committed offsets "TOPIC:P" -> offset)
//   KkpClient record TOPIC START [END]      (prints generated records like records.py)
//
// Security, on produce and consume (the same options as kafka_client.py):
//   [--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL]
//   [--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P]
//   [--ssl-ca FILE]      (PEM trust store)
// An authentication error ends a produce at once: the records not yet acknowledged are
// counted as errors, and the error is the first in "errors".
//
// produce: {"produced", "errors", "error_count"}. enable.idempotence is set
// explicitly (false unless --idempotent; Java would default it to true).
// With --transactional-id the records go out in transactions of K records
// (default 100); transaction numbers M, 2M, ... (1-based) are flushed and then
// aborted, the others committed. Record indices stay consecutive across
// transactions. "produced" counts every record the broker acknowledged (the
// aborted ones too); added: "committed_count", "aborted_count" and, when
// count <= 20000, "committed": the sorted indices of committed records.
//
// consume: the records.py Verifier summary plus "errors"; with --group also
// "assigned", "committed", "committed_total" (kafka_client.py group_summary).
// --list-indices adds "indices": the sorted distinct indices seen.
//
// Group members (tests/kafka_semantics.rs): --commit sync turns auto-commit
// off; after each poll's records are processed (verified and written to the
// events file) their offsets are committed with commitSync, the processed but
// uncommitted offsets of revoked partitions are committed in
// onPartitionsRevoked, and the rest before close (a clean leave). --events FILE
// gets one line per event, flushed after each poll, before its commit:
//   assigned P P ... | revoked P ... | lost P ...   (rebalance callbacks)
//   r P OFFSET INDEX                                 (a processed record; INDEX -1: not ours)
//   commit ok|fail WHY P:NEXT ... [| ERROR]          (WHY: batch, revoke, close)
//   closed                                           (after KafkaConsumer.close)
// --commit-delay-ms MS: wait MS between processing a poll's records and committing
// them (processing time: the window a hard kill leaves uncommitted).
// --stop-file FILE: run until FILE exists (or the timeout), whatever was seen;
// adds "commit_failures" and "polls" to the output.
// --expect-indices FILE: FILE holds the indices that must arrive, either as
// a produce output (its "committed" list) or as bare integers / a JSON array.
// The consumer then stops once all of them are seen and it has read up to the
// end offsets (the last stable offset under read_committed); "missing" counts
// expected indices not seen, and "expected", "unexpected" (distinct indices
// seen that are not expected) and "unexpected_examples" are added.
//
// Every command prints exactly one JSON line on stdout. System.out is pointed
// at stderr before anything else runs, so log4j (whose config in the test bed
// logs to the console) and everything else only ever writes to stderr.
// Exit status: 0 whenever a JSON result was printed (failed records are in
// the JSON), 2 on usage errors, 1 on fatal errors.

import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.kafka.clients.CommonClientConfigs;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.GroupListing;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.MemberDescription;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.Callback;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.config.SaslConfigs;
import org.apache.kafka.common.config.SslConfigs;
import org.apache.kafka.common.errors.AuthenticationException;
import org.apache.kafka.common.errors.AuthorizationException;
import org.apache.kafka.common.errors.GroupIdNotFoundException;
import org.apache.kafka.common.errors.OutOfOrderSequenceException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class KkpClient {

    /** The real stdout; System.out is redirected to stderr in main. */
    private static PrintStream out;

    // ------------------------------------------------------------------
    // Mirror of records.py record() -- keep the two byte-identical.
    // ------------------------------------------------------------------

    private static final String[] WORDS = {
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
        "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
        "kafka", "kinesis", "proxy", "record", "batch", "0123456789", "~!@#$%^&*()", "ZZZ",
    };

    static byte[] key(int i) {
        return String.format("key-%06d", i).getBytes(StandardCharsets.UTF_8);
    }

    static byte[] value(String topic, int i) {
        int x = 0x811C9DC5;
        for (byte b : (topic + "|" + i).getBytes(StandardCharsets.UTF_8)) {
            x ^= b & 0xFF;
            x *= 0x01000193;
        }
        if (x == 0) {
            x = 0x9E3779B9;
        }
        int[] st = {x};
        int length = 10 + Integer.remainderUnsigned(next(st), 991);
        StringBuilder sb = new StringBuilder();
        int n = 0;
        while (n < length) {
            String w = WORDS[Integer.remainderUnsigned(next(st), WORDS.length)];
            if (sb.length() > 0) {
                sb.append(' ');
            }
            sb.append(w);
            n += w.length() + 1;
        }
        String payload = sb.length() > length ? sb.substring(0, length) : sb.toString();
        return (topic + "|" + i + "|" + payload).getBytes(StandardCharsets.UTF_8);
    }

    private static int next(int[] st) {
        int x = st[0];
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        st[0] = x;
        return x;
    }

    /** "key-000123" -> 123; -1 when the key is not one of ours. */
    static int indexOfKey(byte[] key) {
        if (key == null || key.length <= 4) {
            return -1;
        }
        String s = new String(key, StandardCharsets.UTF_8);
        if (!s.startsWith("key-")) {
            return -1;
        }
        for (int j = 4; j < s.length(); j++) {
            char c = s.charAt(j);
            if (c < '0' || c > '9') {
                return -1;
            }
        }
        try {
            return Integer.parseInt(s.substring(4));
        } catch (NumberFormatException e) {
            return -1;
        }
    }

    /** Python-like repr of bytes, cut to max characters (0: no cut). */
    static String pyBytes(byte[] b, int max) {
        StringBuilder sb = new StringBuilder("b'");
        for (byte v : b) {
            int c = v & 0xFF;
            if (c == '\\' || c == '\'') {
                sb.append('\\').append((char) c);
            } else if (c == '\n') {
                sb.append("\\n");
            } else if (c == '\r') {
                sb.append("\\r");
            } else if (c == '\t') {
                sb.append("\\t");
            } else if (c < 0x20 || c >= 0x7f) {
                sb.append(String.format("\\x%02x", c));
            } else {
                sb.append((char) c);
            }
        }
        sb.append('\'');
        String s = sb.toString();
        return max > 0 && s.length() > max ? s.substring(0, max) : s;
    }

    static byte[] head(byte[] b, int n) {
        return b.length > n ? Arrays.copyOf(b, n) : b;
    }

    /** Checks consumed records against the generator (records.py Verifier). */
    static final class Verifier {
        final String topic;
        final int count;
        int consumed;
        final Set<Integer> seen = new HashSet<>();
        int duplicates;
        int mismatched;
        final List<String> examples = new ArrayList<>();

        Verifier(String topic, int count) {
            this.topic = topic;
            this.count = count;
        }

        private void example(String s) {
            if (examples.size() < 5) {
                examples.add(s);
            }
        }

        void add(byte[] key, byte[] value, String where) {
            consumed++;
            int i = indexOfKey(key);
            if (i < 0 || i >= count) {
                mismatched++;
                example("unexpected key " + (key == null ? "None" : pyBytes(key, 60)) + " at " + where);
                return;
            }
            if (seen.contains(i)) {
                duplicates++;
                return;
            }
            byte[] ev = value(topic, i);
            byte[] got = value == null ? new byte[0] : value;
            if (!Arrays.equals(got, ev)) {
                mismatched++;
                example("value mismatch for " + new String(key(i), StandardCharsets.UTF_8) + " at " + where
                        + ": got " + got.length + " bytes " + pyBytes(head(got, 40), 0)
                        + ", want " + ev.length + " bytes " + pyBytes(head(ev, 40), 0));
                // still counts as seen: it was delivered, just wrong
            }
            seen.add(i);
        }

        boolean done() {
            return seen.size() >= count;
        }

        Map<String, Object> summary() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("consumed", consumed);
            m.put("distinct", seen.size());
            m.put("missing", count - seen.size());
            m.put("duplicates", duplicates);
            m.put("mismatched", mismatched);
            m.put("examples", examples);
            return m;
        }
    }

    /** A count and the first five messages (kafka_client.py Errors). */
    static final class Errors {
        int count;
        final List<String> first = new ArrayList<>();

        synchronized void add(Object e, int n) {
            count += n;
            if (first.size() < 5) {
                first.add(describe(e));
            }
        }

        synchronized void add(Object e) {
            add(e, 1);
        }
    }

    static String describe(Object e) {
        if (e instanceof ExecutionException && ((Throwable) e).getCause() != null) {
            e = ((Throwable) e).getCause();
        }
        if (e instanceof Throwable) {
            Throwable t = (Throwable) e;
            String m = t.getMessage();
            return t.getClass().getSimpleName() + (m == null ? "" : ": " + m);
        }
        return String.valueOf(e);
    }

    // ------------------------------------------------------------------
    // JSON output
    // ------------------------------------------------------------------

    static String json(Object v) {
        StringBuilder sb = new StringBuilder();
        writeJson(sb, v);
        return sb.toString();
    }

    private static void writeJson(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof String) {
            writeString(sb, (String) v);
        } else if (v instanceof Number || v instanceof Boolean) {
            sb.append(v);
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) {
                    sb.append(", ");
                }
                first = false;
                writeString(sb, String.valueOf(e.getKey()));
                sb.append(": ");
                writeJson(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof Collection) {
            sb.append('[');
            boolean first = true;
            for (Object o : (Collection<?>) v) {
                if (!first) {
                    sb.append(", ");
                }
                first = false;
                writeJson(sb, o);
            }
            sb.append(']');
        } else {
            writeString(sb, v.toString());
        }
    }

    private static void writeString(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20 || c > 0x7e) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }

    // ------------------------------------------------------------------
    // Command line
    // ------------------------------------------------------------------

    static final class UsageError extends RuntimeException {
        private static final long serialVersionUID = 1L;

        UsageError(String m) {
            super(m);
        }
    }

    static final Set<String> BOOLEAN_FLAGS = Set.of("idempotent", "list-indices", "legacy-api");

    /** Parsed "--name value" flags (and boolean "--name") plus positionals. */
    static final class Args {
        final Map<String, String> flags = new HashMap<>();
        final List<String> positional = new ArrayList<>();
        final Set<String> allowed;

        Args(String[] argv, int from, Set<String> allowed) {
            this.allowed = allowed;
            for (int i = from; i < argv.length; i++) {
                String a = argv[i];
                if (!a.startsWith("--")) {
                    positional.add(a);
                    continue;
                }
                String name = a.substring(2);
                String val = null;
                int eq = name.indexOf('=');
                if (eq >= 0) {
                    val = name.substring(eq + 1);
                    name = name.substring(0, eq);
                }
                if (!allowed.contains(name)) {
                    throw new UsageError("unrecognized argument --" + name);
                }
                if (BOOLEAN_FLAGS.contains(name)) {
                    flags.put(name, "true");
                } else {
                    if (val == null) {
                        if (i + 1 >= argv.length) {
                            throw new UsageError("--" + name + " expects a value");
                        }
                        val = argv[++i];
                    }
                    flags.put(name, val);
                }
            }
        }

        String str(String name, String dflt) {
            return flags.getOrDefault(name, dflt);
        }

        String required(String name) {
            String v = flags.get(name);
            if (v == null) {
                throw new UsageError("--" + name + " is required");
            }
            return v;
        }

        int integer(String name, Integer dflt) {
            String v = flags.get(name);
            if (v == null) {
                if (dflt == null) {
                    throw new UsageError("--" + name + " is required");
                }
                return dflt;
            }
            try {
                return Integer.parseInt(v);
            } catch (NumberFormatException e) {
                throw new UsageError("--" + name + ": not an integer: " + v);
            }
        }

        double seconds(String name, double dflt) {
            String v = flags.get(name);
            if (v == null) {
                return dflt;
            }
            try {
                return Double.parseDouble(v);
            } catch (NumberFormatException e) {
                throw new UsageError("--" + name + ": not a number: " + v);
            }
        }

        boolean bool(String name) {
            return flags.containsKey(name);
        }

        String choice(String name, String dflt, String... choices) {
            String v = str(name, dflt);
            if (v != null && !Arrays.asList(choices).contains(v)) {
                throw new UsageError("--" + name + ": invalid choice '" + v + "' (choose from "
                        + String.join(", ", choices) + ")");
            }
            return v;
        }
    }

    /** The flags of the security options, accepted by produce and consume. */
    static final Set<String> SECURITY_FLAGS = Set.of("security-protocol", "sasl-mechanism", "sasl-username",
            "sasl-password", "ssl-ca");

    static Set<String> withSecurity(String... flags) {
        Set<String> all = new HashSet<>(Arrays.asList(flags));
        all.addAll(SECURITY_FLAGS);
        return all;
    }

    /** Puts the security options into a client's properties. */
    static void security(Args a, Properties p) {
        p.put(CommonClientConfigs.SECURITY_PROTOCOL_CONFIG, a.choice("security-protocol", "PLAINTEXT",
                "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"));
        String mechanism = a.choice("sasl-mechanism", null, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512");
        if (mechanism != null) {
            String module = mechanism.equals("PLAIN") ? "org.apache.kafka.common.security.plain.PlainLoginModule"
                    : "org.apache.kafka.common.security.scram.ScramLoginModule";
            p.put(SaslConfigs.SASL_MECHANISM, mechanism);
            p.put(SaslConfigs.SASL_JAAS_CONFIG, module + " required username=" + jaasQuoted(a.required("sasl-username"))
                    + " password=" + jaasQuoted(a.required("sasl-password")) + ";");
        }
        String ca = a.str("ssl-ca", null);
        if (ca != null) {
            p.put(SslConfigs.SSL_TRUSTSTORE_TYPE_CONFIG, "PEM");
            p.put(SslConfigs.SSL_TRUSTSTORE_LOCATION_CONFIG, ca);
        }
    }

    /** A JAAS option value: double-quoted, with backslashes and quotes escaped. */
    static String jaasQuoted(String v) {
        return '"' + v.replace("\\", "\\\\").replace("\"", "\\\"") + '"';
    }

    static final String USAGE = "usage: KkpClient produce|consume|admin|record ... "
            + "(see the header of tests/clients/java/KkpClient.java)";

    public static void main(String[] argv) {
        // Before any Kafka or log4j class loads: everything printed through
        // System.out (log4j's console appender included) goes to stderr.
        out = new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);
        System.setOut(System.err);
        quietLogging();
        int rc;
        try {
            rc = run(argv);
        } catch (UsageError e) {
            System.err.println(USAGE);
            System.err.println("KkpClient: error: " + e.getMessage());
            rc = 2;
        } catch (Throwable e) {
            System.err.println("fatal: " + describe(e));
            e.printStackTrace(System.err);
            rc = 1;
        }
        out.flush();
        System.err.flush();
        // Kafka's background threads are daemons, but do not wait for them.
        Runtime.getRuntime().halt(rc);
    }

    /**
     * The test bed's log4j2 config logs org.apache.kafka at INFO (every client
     * dumps its whole config); lower it to KKP_CLIENT_LOG (default WARN), like
     * the Python clients. Through reflection: log4j-core is on the classpath
     * at run time, but this file compiles against kafka-clients alone.
     */
    static void quietLogging() {
        String level = System.getenv().getOrDefault("KKP_CLIENT_LOG", "WARN").toUpperCase();
        if (level.equals("WARNING")) {
            level = "WARN";
        } else if (level.equals("CRITICAL")) {
            level = "FATAL";
        }
        try {
            Class<?> levelClass = Class.forName("org.apache.logging.log4j.Level");
            Object lvl = levelClass.getMethod("toLevel", String.class, levelClass)
                    .invoke(null, level, levelClass.getField("WARN").get(null));
            Class.forName("org.apache.logging.log4j.core.config.Configurator")
                    .getMethod("setLevel", String.class, levelClass)
                    .invoke(null, "org.apache.kafka", lvl);
        } catch (ReflectiveOperationException | LinkageError e) {
            System.err.println("KkpClient: log level not set (" + e + ")");
        }
    }

    static int run(String[] argv) throws Exception {
        if (argv.length < 1) {
            throw new UsageError("missing command");
        }
        Object result;
        switch (argv[0]) {
            case "record":
                return record(argv);
            case "produce":
                result = produce(new Args(argv, 1, withSecurity("bootstrap", "topic", "count", "codec", "acks",
                        "idempotent", "timeout", "transactional-id", "txn-size", "abort-every", "legacy-api")));
                break;
            case "consume":
                result = consume(new Args(argv, 1, withSecurity("bootstrap", "topic", "count", "group", "timeout",
                        "isolation", "group-protocol", "list-indices", "expect-indices", "commit", "events",
                        "stop-file", "assignment-strategy", "session-timeout-ms", "max-poll-records", "commit-delay-ms")));
                break;
            case "admin":
                result = admin(new Args(argv, 1, Set.of("bootstrap", "topic", "partitions",
                        "replication-factor", "group", "config")));
                break;
            default:
                throw new UsageError("unknown command '" + argv[0] + "'");
        }
        out.println(json(result));
        return 0;
    }

    static int record(String[] argv) throws IOException {
        if (argv.length < 3) {
            throw new UsageError("record TOPIC START [END]");
        }
        int start;
        int end;
        try {
            start = Integer.parseInt(argv[2]);
            end = argv.length > 3 ? Integer.parseInt(argv[3]) : start + 1;
        } catch (NumberFormatException e) {
            throw new UsageError("record: START and END must be integers");
        }
        OutputStream o = new BufferedOutputStream(out, 1 << 16);
        for (int n = start; n < end; n++) {
            o.write(key(n));
            o.write('\n');
            o.write(value(argv[1], n));
            o.write('\n');
        }
        o.flush();
        return 0;
    }

    // ------------------------------------------------------------------
    // produce
    // ------------------------------------------------------------------

    static Object produce(Args a) throws Exception {
        String bootstrap = a.required("bootstrap");
        String topic = a.required("topic");
        int count = a.integer("count", null);
        String codec = a.choice("codec", "none", "none", "gzip", "snappy", "lz4", "zstd");
        String acks = a.choice("acks", "all", "0", "1", "all");
        boolean idempotent = a.bool("idempotent");
        double timeout = a.seconds("timeout", 60.0);
        String txnId = a.str("transactional-id", null);
        if (a.bool("legacy-api")) {
            throw new UsageError("--legacy-api is only implemented for --client kafka-python");
        }
        long timeoutMs = Math.max(1, (long) (timeout * 1000));
        int requestTimeout = (int) Math.min(30000, Math.max(1000, timeoutMs - 10));

        Properties p = new Properties();
        security(a, p);
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "kkp-java");
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
        p.put(ProducerConfig.ACKS_CONFIG, acks);
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, Boolean.toString(idempotent || txnId != null));
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, Integer.toString(requestTimeout));
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, Long.toString(Math.max(timeoutMs, requestTimeout + 5)));
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, Long.toString(timeoutMs));
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        if (txnId != null) {
            p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        }
        if (txnId != null) {
            return produceTransactional(a, p, topic, count, timeoutMs);
        }

        Errors errors = new Errors();
        AtomicInteger ok = new AtomicInteger();
        CountDownLatch pending = new CountDownLatch(count);
        // Set by the first authentication failure: the producer would otherwise keep
        // retrying until max.block.ms / delivery.timeout.ms for every record.
        AtomicBoolean authFailed = new AtomicBoolean();
        Callback cb = (md, e) -> {
            if (e != null) {
                if (e instanceof AuthenticationException) {
                    authFailed.set(true);
                }
                errors.add(e);
            } else {
                ok.incrementAndGet();
            }
            pending.countDown();
        };
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p);
        int sent = 0;
        for (int i = 0; i < count; i++) {
            if (authFailed.get()) {
                int rest = count - i;
                errors.add(rest + " messages not sent after an authentication failure", rest);
                for (int j = 0; j < rest; j++) {
                    pending.countDown();
                }
                break;
            }
            if (System.nanoTime() > deadline) {
                // e.g. every send blocking max.block.ms on missing metadata
                int rest = count - i;
                errors.add(rest + " messages not sent: the send phase took longer than " + timeout + "s", rest);
                for (int j = 0; j < rest; j++) {
                    pending.countDown();
                }
                break;
            }
            try {
                producer.send(new ProducerRecord<>(topic, key(i), value(topic, i)), cb);
                sent++;
            } catch (AuthenticationException e) {
                authFailed.set(true);
                errors.add(e);
                pending.countDown();
            } catch (KafkaException e) {
                errors.add(e);
                pending.countDown();
            }
        }
        // After an authentication failure nothing queued will be delivered: no waiting.
        boolean flushed = authFailed.get() ? pending.getCount() == 0
                : pending.await(timeoutMs, TimeUnit.MILLISECONDS);
        if (!flushed) {
            // Fails whatever is still queued or in flight through cb.
            producer.close(Duration.ZERO);
            pending.await(10, TimeUnit.SECONDS);
        } else {
            producer.close(Duration.ofSeconds(10));
        }
        int rest = (int) pending.getCount();
        if (rest > 0) {
            errors.add(rest + " messages still undelivered after flush(" + timeout + ")", rest);
        }
        return produceResult(ok.get(), errors);
    }

    static Map<String, Object> produceResult(int produced, Errors errors) {
        Map<String, Object> m = new LinkedHashMap<>();
        synchronized (errors) {
            m.put("produced", produced);
            m.put("errors", new ArrayList<>(errors.first));
            m.put("error_count", errors.count);
        }
        return m;
    }

    static Object produceTransactional(Args a, Properties p, String topic, int count, long timeoutMs)
            throws Exception {
        int txnSize = a.integer("txn-size", 100);
        int abortEvery = a.integer("abort-every", 0);
        if (txnSize < 1) {
            throw new UsageError("--txn-size must be >= 1");
        }
        Errors errors = new Errors();
        AtomicInteger ok = new AtomicInteger();
        List<Integer> committed = new ArrayList<>();
        int aborted = 0;
        Callback cb = (md, e) -> {
            if (e != null) {
                errors.add(e);
            } else {
                ok.incrementAndGet();
            }
        };
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p);
        try {
            producer.initTransactions();
            int txn = 0;
            for (int start = 0; start < count; start += txnSize) {
                txn++;
                int end = Math.min(count, start + txnSize);
                boolean abort = abortEvery > 0 && txn % abortEvery == 0;
                try {
                    producer.beginTransaction();
                    for (int i = start; i < end; i++) {
                        producer.send(new ProducerRecord<>(topic, key(i), value(topic, i)), cb);
                    }
                    if (abort) {
                        // Flush first, so the aborted records really are in the log.
                        producer.flush();
                        producer.abortTransaction();
                        aborted += end - start;
                    } else {
                        producer.commitTransaction();
                        for (int i = start; i < end; i++) {
                            committed.add(i);
                        }
                    }
                } catch (ProducerFencedException | OutOfOrderSequenceException | AuthorizationException e) {
                    // Fatal for this producer: no further transactions possible.
                    errors.add("transaction " + txn + ": " + describe(e), count - start);
                    break;
                } catch (KafkaException e) {
                    errors.add("transaction " + txn + ": " + describe(e));
                    try {
                        producer.abortTransaction();
                    } catch (KafkaException e2) {
                        errors.add("abort transaction " + txn + ": " + describe(e2));
                        break;
                    }
                }
            }
        } finally {
            producer.close(Duration.ofSeconds(10));
        }
        Map<String, Object> m = produceResult(ok.get(), errors);
        m.put("committed_count", committed.size());
        m.put("aborted_count", aborted);
        if (count <= 20000) {
            m.put("committed", committed);
        }
        return m;
    }

    // ------------------------------------------------------------------
    // consume
    // ------------------------------------------------------------------

    /** Indices listed in FILE: a produce output's "committed" list, or all integers. */
    static Set<Integer> readIndices(String file) throws IOException {
        String s = Files.readString(Path.of(file));
        int k = s.indexOf("\"committed\"");
        if (k >= 0) {
            int open = s.indexOf('[', k);
            int close = s.indexOf(']', open);
            if (open < 0 || close < 0) {
                throw new UsageError("--expect-indices: no \"committed\" list in " + file);
            }
            s = s.substring(open + 1, close);
        }
        Set<Integer> out = new HashSet<>();
        Matcher m = Pattern.compile("-?\\d+").matcher(s);
        while (m.find()) {
            out.add(Integer.parseInt(m.group()));
        }
        return out;
    }

    /** The --events log of a group member: one line per event, flushed per poll. */
    static final class Events {
        private final java.io.BufferedWriter w;

        Events(String file) throws IOException {
            w = file == null ? null : Files.newBufferedWriter(Path.of(file), StandardCharsets.UTF_8);
        }

        void line(String s) {
            if (w == null) {
                return;
            }
            try {
                w.write(s);
                w.write('\n');
            } catch (IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }

        void partitions(String what, Collection<TopicPartition> parts) {
            StringBuilder sb = new StringBuilder(what);
            List<Integer> ps = new ArrayList<>();
            for (TopicPartition tp : parts) {
                ps.add(tp.partition());
            }
            ps.sort(null);
            for (int q : ps) {
                sb.append(' ').append(q);
            }
            line(sb.toString());
            flush();
        }

        void flush() {
            if (w == null) {
                return;
            }
            try {
                w.flush();
            } catch (IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }
    }

    /**
     * --commit sync: the offsets a member has processed but not committed yet, and their
     * synchronous commit.
     */
    static final class SyncCommitter {
        final KafkaConsumer<byte[], byte[]> c;
        final Events events;
        final Map<TopicPartition, Long> pending = new HashMap<>();
        int failures;

        SyncCommitter(KafkaConsumer<byte[], byte[]> c, Events events) {
            this.c = c;
            this.events = events;
        }

        /** Commits the pending offsets of `which` (null: all); logs the outcome. */
        void commit(Collection<TopicPartition> which, String why) {
            Map<TopicPartition, OffsetAndMetadata> offsets = new TreeMap<>(
                    (x, y) -> Integer.compare(x.partition(), y.partition()));
            for (Map.Entry<TopicPartition, Long> e : pending.entrySet()) {
                if (which == null || which.contains(e.getKey())) {
                    offsets.put(e.getKey(), new OffsetAndMetadata(e.getValue()));
                }
            }
            if (offsets.isEmpty()) {
                return;
            }
            StringBuilder sb = new StringBuilder();
            for (Map.Entry<TopicPartition, OffsetAndMetadata> e : offsets.entrySet()) {
                sb.append(' ').append(e.getKey().partition()).append(':').append(e.getValue().offset());
            }
            try {
                c.commitSync(offsets, Duration.ofSeconds(30));
                events.line("commit ok " + why + sb);
                for (Map.Entry<TopicPartition, OffsetAndMetadata> e : offsets.entrySet()) {
                    pending.remove(e.getKey(), e.getValue().offset());
                }
            } catch (KafkaException e) {
                failures++;
                events.line("commit fail " + why + sb + " | " + describe(e).replace('\n', ' '));
                System.err.println("commit (" + why + ") failed: " + describe(e));
            }
            events.flush();
        }
    }

    static Object consume(Args a) throws Exception {
        String bootstrap = a.required("bootstrap");
        String topic = a.required("topic");
        int count = a.integer("count", null);
        String group = a.str("group", null);
        double timeout = a.seconds("timeout", 60.0);
        String isolation = a.choice("isolation", "read_uncommitted", "read_committed", "read_uncommitted");
        String protocol = a.choice("group-protocol", null, "classic", "consumer");
        boolean listIndices = a.bool("list-indices");
        String expectFile = a.str("expect-indices", null);
        Set<Integer> expected = expectFile == null ? null : readIndices(expectFile);
        boolean syncCommit = "sync".equals(a.choice("commit", "auto", "auto", "sync"));
        String stopFile = a.str("stop-file", null);
        String strategy = a.choice("assignment-strategy", null, "range", "roundrobin", "cooperative-sticky");
        String sessionTimeout = a.str("session-timeout-ms", null);
        String maxPollRecords = a.str("max-poll-records", null);
        int commitDelayMs = a.integer("commit-delay-ms", 0);
        if (group == null && (syncCommit || strategy != null || sessionTimeout != null)) {
            throw new UsageError("--commit sync, --assignment-strategy and --session-timeout-ms need --group");
        }
        long deadline = System.nanoTime() + (long) (timeout * 1e9);

        Properties p = new Properties();
        security(a, p);
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "kkp-java");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, Boolean.toString(group != null && !syncCommit));
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        if (maxPollRecords != null) {
            p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, maxPollRecords);
        }
        if (group != null) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            if (protocol != null) {
                p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
            }
            if (strategy != null) {
                String cls = strategy.equals("range") ? "org.apache.kafka.clients.consumer.RangeAssignor"
                        : strategy.equals("roundrobin") ? "org.apache.kafka.clients.consumer.RoundRobinAssignor"
                        : "org.apache.kafka.clients.consumer.CooperativeStickyAssignor";
                p.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG, cls);
            }
            if (sessionTimeout != null) {
                p.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, sessionTimeout);
                p.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG,
                        Integer.toString(Math.max(100, Integer.parseInt(sessionTimeout) / 5)));
            }
        }

        Verifier v = new Verifier(topic, count);
        List<String> errors = new ArrayList<>();
        Set<Integer> assigned = new TreeSet<>();
        Map<Integer, Long> committed = new TreeMap<>();
        Events events = new Events(a.str("events", null));
        int polls = 0;
        int commitFailures = 0;
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            SyncCommitter committer = new SyncCommitter(c, events);
            if (group != null) {
                c.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                    @Override
                    public void onPartitionsAssigned(Collection<TopicPartition> parts) {
                        for (TopicPartition tp : parts) {
                            assigned.add(tp.partition());
                        }
                        events.partitions("assigned", parts);
                    }

                    @Override
                    public void onPartitionsRevoked(Collection<TopicPartition> parts) {
                        if (syncCommit) {
                            committer.commit(parts, "revoke");
                            committer.pending.keySet().removeAll(parts);
                        }
                        events.partitions("revoked", parts);
                    }

                    @Override
                    public void onPartitionsLost(Collection<TopicPartition> parts) {
                        // Owned by another member already: nothing may be committed.
                        committer.pending.keySet().removeAll(parts);
                        events.partitions("lost", parts);
                    }
                });
            } else {
                // Explicit offset 0 on every partition (see kafka_client.py).
                List<TopicPartition> tps = partitions(c, topic, deadline);
                if (tps.isEmpty()) {
                    throw new IllegalStateException("no metadata for topic " + topic);
                }
                c.assign(tps);
                for (TopicPartition tp : tps) {
                    c.seek(tp, 0);
                }
            }
            while (System.nanoTime() < deadline) {
                if (stopFile != null) {
                    if (Files.exists(Path.of(stopFile))) {
                        break;
                    }
                } else if (expected == null ? v.done() : v.seen.containsAll(expected) && atEnd(c)) {
                    break;
                }
                long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
                ConsumerRecords<byte[], byte[]> recs;
                try {
                    recs = c.poll(Duration.ofMillis(Math.max(1, Math.min(500, left))));
                } catch (KafkaException e) {
                    if (errors.size() < 5) {
                        errors.add(describe(e));
                    }
                    Thread.sleep(100);
                    continue;
                }
                polls++;
                for (ConsumerRecord<byte[], byte[]> r : recs) {
                    v.add(r.key(), r.value(), "p" + r.partition() + "@" + r.offset());
                    events.line("r " + r.partition() + " " + r.offset() + " " + indexOfKey(r.key()));
                    committer.pending.put(new TopicPartition(r.topic(), r.partition()), r.offset() + 1);
                }
                if (!recs.isEmpty()) {
                    events.flush();
                    if (syncCommit) {
                        if (commitDelayMs > 0) {
                            Thread.sleep(commitDelayMs);
                        }
                        committer.commit(null, "batch");
                    }
                }
            }
            if (group != null) {
                if (syncCommit) {
                    committer.commit(null, "close");
                } else {
                    try {
                        c.commitSync(Duration.ofSeconds(10));
                    } catch (KafkaException e) {
                        errors.add("commit: " + describe(e));
                    }
                }
                Set<TopicPartition> tps = new HashSet<>();
                for (PartitionInfo pi : c.partitionsFor(topic, Duration.ofSeconds(10))) {
                    tps.add(new TopicPartition(topic, pi.partition()));
                }
                Map<TopicPartition, OffsetAndMetadata> got = c.committed(tps, Duration.ofSeconds(10));
                for (TopicPartition tp : tps) {
                    OffsetAndMetadata om = got.get(tp);
                    committed.put(tp.partition(), om == null || om.offset() < 0 ? -1L : om.offset());
                }
            }
            commitFailures = committer.failures;
        }
        events.line("closed");
        events.flush();
        Map<String, Object> m = v.summary();
        m.put("errors", errors);
        if (group != null) {
            m.put("assigned", new ArrayList<>(assigned));
            Map<String, Object> cm = new LinkedHashMap<>();
            long total = 0;
            for (Map.Entry<Integer, Long> e : committed.entrySet()) {
                cm.put(Integer.toString(e.getKey()), e.getValue());
                if (e.getValue() > 0) {
                    total += e.getValue();
                }
            }
            m.put("committed", cm);
            m.put("committed_total", total);
        }
        if (stopFile != null) {
            m.put("commit_failures", commitFailures);
            m.put("polls", polls);
        }
        if (expected != null) {
            int seenExpected = 0;
            List<Integer> unexpected = new ArrayList<>();
            for (int i : new TreeSet<>(v.seen)) {
                if (expected.contains(i)) {
                    seenExpected++;
                } else {
                    unexpected.add(i);
                }
            }
            m.put("missing", expected.size() - seenExpected);
            m.put("expected", expected.size());
            m.put("unexpected", unexpected.size());
            m.put("unexpected_examples", unexpected.subList(0, Math.min(5, unexpected.size())));
        }
        if (listIndices) {
            m.put("indices", new ArrayList<>(new TreeSet<>(v.seen)));
        }
        return m;
    }

    /** Whether the consumer has read up to the end offsets of all its partitions. */
    static boolean atEnd(KafkaConsumer<byte[], byte[]> c) {
        Set<TopicPartition> tps = c.assignment();
        if (tps.isEmpty()) {
            return false;
        }
        try {
            Map<TopicPartition, Long> end = c.endOffsets(tps, Duration.ofSeconds(5));
            for (TopicPartition tp : tps) {
                Long e = end.get(tp);
                if (e != null && c.position(tp, Duration.ofSeconds(5)) < e) {
                    return false;
                }
            }
            return true;
        } catch (KafkaException e) {
            System.err.println("end offsets: " + describe(e));
            return false;
        }
    }

    static List<TopicPartition> partitions(KafkaConsumer<byte[], byte[]> c, String topic, long deadline)
            throws InterruptedException {
        while (true) {
            List<PartitionInfo> ps = null;
            try {
                ps = c.partitionsFor(topic, Duration.ofSeconds(5));
            } catch (KafkaException e) {
                System.err.println("metadata for " + topic + ": " + describe(e));
            }
            if (ps != null && !ps.isEmpty()) {
                List<TopicPartition> out = new ArrayList<>();
                for (PartitionInfo pi : ps) {
                    out.add(new TopicPartition(topic, pi.partition()));
                }
                out.sort((x, y) -> Integer.compare(x.partition(), y.partition()));
                return out;
            }
            if (System.nanoTime() > deadline) {
                return List.of();
            }
            Thread.sleep(200);
        }
    }

    // ------------------------------------------------------------------
    // admin
    // ------------------------------------------------------------------

    static Object admin(Args a) throws Exception {
        String bootstrap = a.required("bootstrap");
        if (a.positional.size() != 1) {
            throw new UsageError("admin --bootstrap B create|list|delete|describe|describe-configs"
                    + "|list-groups|describe-group ...");
        }
        String cmd = a.positional.get(0);
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "kkp-java-admin");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "30000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "60000");
        long t = 60;
        TimeUnit s = TimeUnit.SECONDS;
        switch (cmd) {
            case "create": {
                String topic = a.required("topic");
                int partitions = a.integer("partitions", 1);
                short rf = (short) a.integer("replication-factor", 1);
                Map<String, String> configs = new TreeMap<>();
                String cs = a.str("config", "");
                for (String kv : cs.isEmpty() ? new String[0] : cs.split(",")) {
                    int eq = kv.indexOf('=');
                    if (eq <= 0) {
                        throw new UsageError("--config: expected K=V[,K=V...], got '" + cs + "'");
                    }
                    configs.put(kv.substring(0, eq), kv.substring(eq + 1));
                }
                try (Admin ad = Admin.create(p)) {
                    ad.createTopics(List.of(new NewTopic(topic, partitions, rf).configs(configs))).all().get(t, s);
                }
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("created", topic);
                m.put("partitions", partitions);
                m.put("configs", configs);
                return m;
            }
            case "list":
                try (Admin ad = Admin.create(p)) {
                    return new TreeSet<>(ad.listTopics(new ListTopicsOptions().listInternal(true))
                            .names().get(t, s));
                }
            case "delete": {
                String topic = a.required("topic");
                try (Admin ad = Admin.create(p)) {
                    ad.deleteTopics(List.of(topic)).all().get(t, s);
                }
                return Map.of("deleted", topic);
            }
            case "describe": {
                String topic = a.required("topic");
                TopicDescription d;
                try (Admin ad = Admin.create(p)) {
                    d = ad.describeTopics(List.of(topic)).allTopicNames().get(t, s).get(topic);
                }
                List<Object> parts = new ArrayList<>();
                for (TopicPartitionInfo pi : d.partitions()) {
                    Map<String, Object> pm = new LinkedHashMap<>();
                    pm.put("partition", pi.partition());
                    pm.put("leader", pi.leader() == null ? -1 : pi.leader().id());
                    pm.put("replicas", ids(pi.replicas()));
                    pm.put("isr", ids(pi.isr()));
                    parts.add(pm);
                }
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("topic", d.name());
                m.put("partitions", parts);
                return m;
            }
            case "describe-configs": {
                String topic = a.required("topic");
                ConfigResource r = new ConfigResource(ConfigResource.Type.TOPIC, topic);
                Config cfg;
                try (Admin ad = Admin.create(p)) {
                    cfg = ad.describeConfigs(List.of(r)).all().get(t, s).get(r);
                }
                Map<String, Object> m = new TreeMap<>();
                for (ConfigEntry e : cfg.entries()) {
                    m.put(e.name(), e.value());
                }
                return m;
            }
            case "list-groups": {
                // group id -> {"type", "state", "protocol"} (-> "" when the broker does not say)
                Collection<GroupListing> gs;
                try (Admin ad = Admin.create(p)) {
                    gs = ad.listGroups().all().get(t, s);
                }
                Map<String, Object> out = new TreeMap<>();
                for (GroupListing g : gs) {
                    Map<String, Object> gm = new LinkedHashMap<>();
                    gm.put("type", g.type().map(Object::toString).orElse(""));
                    gm.put("state", g.groupState().map(Object::toString).orElse(""));
                    gm.put("protocol", g.protocol());
                    out.put(g.groupId(), gm);
                }
                return out;
            }
            case "describe-group": {
                // {"group", "state", "type", "coordinator", "assignor", "members" (count),
                //  "member_list": [{"client_id", "host", "partitions"}], "offsets": {P: committed}}
                String group = a.required("group");
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("group", group);
                try (Admin ad = Admin.create(p)) {
                    try {
                        ConsumerGroupDescription d = ad.describeConsumerGroups(List.of(group)).all()
                                .get(t, s).get(group);
                        m.put("state", d.groupState().toString());
                        m.put("type", d.type().toString());
                        m.put("coordinator", d.coordinator() == null ? -1 : d.coordinator().id());
                        m.put("assignor", d.partitionAssignor());
                        m.put("members", d.members().size());
                        List<Object> members = new ArrayList<>();
                        for (MemberDescription md : d.members()) {
                            Map<String, Object> mm = new LinkedHashMap<>();
                            mm.put("client_id", md.clientId());
                            mm.put("host", md.host());
                            List<String> parts = new ArrayList<>();
                            for (TopicPartition tp : md.assignment().topicPartitions()) {
                                parts.add(tp.topic() + ":" + tp.partition());
                            }
                            parts.sort(null);
                            mm.put("partitions", parts);
                            members.add(mm);
                        }
                        m.put("member_list", members);
                    } catch (ExecutionException e) {
                        if (!(e.getCause() instanceof GroupIdNotFoundException)) {
                            throw e;
                        }
                        System.err.println("describe-group: " + describe(e));
                        m.put("state", "Dead");
                        m.put("members", 0);
                    }
                    Map<TopicPartition, OffsetAndMetadata> offs = ad.listConsumerGroupOffsets(group)
                            .partitionsToOffsetAndMetadata().get(t, s);
                    Map<String, Object> om = new TreeMap<>();
                    for (Map.Entry<TopicPartition, OffsetAndMetadata> e : offs.entrySet()) {
                        om.put(e.getKey().topic() + ":" + e.getKey().partition(),
                                e.getValue() == null ? -1L : e.getValue().offset());
                    }
                    m.put("offsets", om);
                }
                return m;
            }
            default:
                throw new UsageError("admin: unknown command '" + cmd + "'");
        }
    }

    static List<Integer> ids(List<Node> nodes) {
        List<Integer> out = new ArrayList<>();
        for (Node n : nodes) {
            out.add(n.id());
        }
        return out;
    }

    private KkpClient() {
    }
}
