// franz-go side of the client test contract (see tests/clients/kafka_client.py):
//
//	franz-go-client produce --bootstrap B --topic T --count N
//	    [--codec none|gzip|snappy|lz4|zstd] [--acks 0|1|all] [--idempotent] [--timeout S]
//	franz-go-client consume --bootstrap B --topic T --count N [--group G] [--timeout S]
//	    [--isolation read_committed|read_uncommitted] [--list-indices]
//	franz-go-client admin --bootstrap B create --topic T [--partitions P] [--replication-factor R]
//	franz-go-client admin --bootstrap B list
//	franz-go-client record TOPIC START [END]   (prints generated records like records.py)
//
// produce, consume and admin take the security options of the contract (security.go).
//
// Prints exactly one JSON line on stdout; logs go to stderr (level from
// KKP_CLIENT_LOG, default WARNING). franz-go is idempotent by default: it is
// switched off unless --idempotent (acks 0 and 1 need it off).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"kkp-test-clients/records"
)

func main() {
	a := records.ParseArgs("franz-go-client", os.Args[1:], securityFlags...)
	records.Run(a, produce, consume, admin)
}

func logger() kgo.Opt {
	level := kgo.LogLevelWarn
	switch strings.ToUpper(os.Getenv("KKP_CLIENT_LOG")) {
	case "DEBUG":
		level = kgo.LogLevelDebug
	case "INFO":
		level = kgo.LogLevelInfo
	case "ERROR", "CRITICAL":
		level = kgo.LogLevelError
	}
	return kgo.WithLogger(kgo.BasicLogger(os.Stderr, level, func() string {
		return time.Now().Format("2006-01-02T15:04:05.000 ") + "franz-go "
	}))
}

func codec(name string) kgo.CompressionCodec {
	switch name {
	case "gzip":
		return kgo.GzipCompression()
	case "snappy":
		return kgo.SnappyCompression()
	case "lz4":
		return kgo.Lz4Compression()
	case "zstd":
		return kgo.ZstdCompression()
	}
	return kgo.NoCompression()
}

func acks(s string) kgo.Acks {
	switch s {
	case "0":
		return kgo.NoAck()
	case "1":
		return kgo.LeaderAck()
	}
	return kgo.AllISRAcks()
}

func produce(a *records.Args) any {
	opts := []kgo.Opt{
		kgo.SeedBrokers(a.Brokers()...),
		kgo.DefaultProduceTopic(a.Topic),
		kgo.ProducerBatchCompression(codec(a.Codec)),
		kgo.RequiredAcks(acks(a.Acks)),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.RecordDeliveryTimeout(records.Seconds(a.Timeout)),
		logger(),
	}
	opts = append(opts, security(a)...)
	if !a.Idem {
		opts = append(opts, kgo.DisableIdempotentWrite())
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		records.Fatal("franz-go client: %v", err)
	}
	defer cl.Close()

	var mu sync.Mutex
	errs := &records.Errors{}
	ok := 0
	ctx := context.Background()
	if *a.Extra["sasl-mechanism"] != "" {
		// franz-go retries a failed SASL authentication like any connection error, so the
		// records would only fail at the delivery timeout; a ping first surfaces it, the way
		// applications check their credentials at start-up.
		pctx, cancel := context.WithTimeout(ctx, records.Seconds(a.Timeout))
		err := cl.Ping(pctx)
		cancel()
		if errors.Is(err, kerr.SaslAuthenticationFailed) {
			errs.AddN(err, a.Count)
			return records.ProduceResult(0, errs)
		}
	}
	cb := func(_ *kgo.Record, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs.Add(err)
		} else {
			ok++
		}
	}
	for i := 0; i < a.Count; i++ {
		k, v := records.Record(a.Topic, i)
		cl.Produce(ctx, &kgo.Record{Key: k, Value: v}, cb)
	}
	fctx, cancel := context.WithTimeout(ctx, records.Seconds(a.Timeout))
	defer cancel()
	if err := cl.Flush(fctx); err != nil {
		mu.Lock()
		remaining := a.Count - ok - errs.Count
		mu.Unlock()
		fmt.Fprintf(os.Stderr, "flush: %v (%d records undelivered); aborting them\n", err, remaining)
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		_ = cl.AbortBufferedRecords(actx) // fails the rest through cb
		acancel()
	}
	mu.Lock()
	defer mu.Unlock()
	if rest := a.Count - ok - errs.Count; rest > 0 {
		errs.AddN(fmt.Sprintf("%d messages still undelivered after flush(%v)", rest, a.Timeout), rest)
	}
	return records.ProduceResult(ok, errs)
}

// partitions returns the partition ids of topic, retrying until deadline.
func partitions(ctx context.Context, adm *kadm.Client, topic string, deadline time.Time) ([]int32, error) {
	var last error
	for {
		tds, err := adm.ListTopics(ctx, topic)
		if err == nil {
			td, found := tds[topic]
			switch {
			case !found:
				err = fmt.Errorf("topic %s not in metadata", topic)
			case td.Err != nil:
				err = td.Err
			case len(td.Partitions) == 0:
				err = fmt.Errorf("topic %s has no partitions", topic)
			default:
				ps := td.Partitions.Numbers()
				sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
				return ps, nil
			}
		}
		last = err
		if time.Now().After(deadline) {
			return nil, last
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func consume(a *records.Args) any {
	start := time.Now()
	deadline := start.Add(records.Seconds(a.Timeout))
	v := records.NewVerifier(a.Topic, a.Count)
	opts := []kgo.Opt{
		kgo.SeedBrokers(a.Brokers()...),
		kgo.FetchMaxWait(500 * time.Millisecond),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		logger(),
	}
	opts = append(opts, security(a)...)
	if a.Isolation == "read_committed" {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	var amu sync.Mutex
	assigned := map[int32]bool{}
	if a.Group != "" {
		opts = append(opts,
			kgo.ConsumerGroup(a.Group),
			kgo.ConsumeTopics(a.Topic),
			kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
				amu.Lock()
				defer amu.Unlock()
				for _, p := range m[a.Topic] {
					assigned[p] = true
				}
			}),
		)
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		records.Fatal("franz-go client: %v", err)
	}
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	if a.Group == "" {
		// Explicit offset 0 on every partition (see kafka_client.py).
		ps, err := partitions(ctx, adm, a.Topic, deadline)
		if err != nil {
			cl.Close()
			records.Fatal("no metadata for topic %s: %v", a.Topic, err)
		}
		m := map[int32]kgo.Offset{}
		for _, p := range ps {
			m[p] = kgo.NewOffset().At(0)
		}
		cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{a.Topic: m})
	}
	errs := []string{}
	addErr := func(s string) {
		if len(errs) < 5 {
			errs = append(errs, s)
		}
	}
	for !v.Done() && time.Now().Before(deadline) {
		wait := time.Until(deadline)
		if wait > 500*time.Millisecond {
			wait = 500 * time.Millisecond
		}
		pctx, cancel := context.WithTimeout(ctx, wait)
		fs := cl.PollFetches(pctx)
		cancel()
		fs.EachError(func(t string, p int32, err error) {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return
			}
			addErr(fmt.Sprintf("%s[%d]: %v", t, p, err))
		})
		fs.EachRecord(func(r *kgo.Record) {
			v.Add(r.Key, r.Value, fmt.Sprintf("p%d@%d", r.Partition, r.Offset))
		})
	}
	var committed map[int32]int64
	if a.Group != "" {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := cl.CommitUncommittedOffsets(cctx); err != nil {
			addErr(fmt.Sprintf("commit: %v", err))
		}
		cancel()
		committed = map[int32]int64{}
		cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		if ps, err := partitions(cctx, adm, a.Topic, time.Now()); err == nil {
			for _, p := range ps {
				committed[p] = -1
			}
		}
		offs, err := adm.FetchOffsetsForTopics(cctx, a.Group, a.Topic)
		cancel()
		if err != nil {
			addErr(fmt.Sprintf("fetch committed offsets: %v", err))
		}
		for p, o := range offs[a.Topic] {
			if o.Err == nil {
				committed[p] = o.At
			} else {
				committed[p] = -1
			}
		}
	}
	cl.Close()
	out := v.Summary()
	out.Set("errors", errs)
	if a.Group != "" {
		amu.Lock()
		records.GroupSummary(out, assigned, committed)
		amu.Unlock()
	}
	if a.ListIdx {
		out.Set("indices", v.Indices())
	}
	return out
}

func admin(a *records.Args) any {
	cl, err := kgo.NewClient(append(security(a), kgo.SeedBrokers(a.Brokers()...), logger())...)
	if err != nil {
		records.Fatal("franz-go client: %v", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch a.AdminCmd {
	case "create":
		r, err := adm.CreateTopic(ctx, int32(a.Partitions), int16(a.Replication), nil, a.Topic)
		if err == nil {
			err = r.Err
		}
		if err != nil {
			records.Fatal("create topic %s: %v %s", a.Topic, err, r.ErrMessage)
		}
		return records.NewObj().Set("created", a.Topic).Set("partitions", a.Partitions)
	default: // list
		tds, err := adm.ListTopicsWithInternal(ctx)
		if err != nil {
			records.Fatal("list topics: %v", err)
		}
		names := tds.Names()
		sort.Strings(names)
		return names
	}
}
