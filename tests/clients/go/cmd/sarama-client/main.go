// sarama side of the client test contract (see tests/clients/kafka_client.py):
//
//	sarama-client produce --bootstrap B --topic T --count N
//	    [--codec none|gzip|snappy|lz4|zstd] [--acks 0|1|all] [--idempotent] [--timeout S]
//	sarama-client consume --bootstrap B --topic T --count N [--group G] [--timeout S]
//	    [--isolation read_committed|read_uncommitted] [--list-indices]
//	sarama-client admin --bootstrap B create --topic T [--partitions P] [--replication-factor R]
//	sarama-client admin --bootstrap B list
//	sarama-client record TOPIC START [END]   (prints generated records like records.py)
//
// Every command also takes --kafka-version V (sarama's Config.Version, which
// picks the request versions it sends; default 3.6.0: Kafka 4 no longer
// accepts the oldest versions, and zstd needs >= 2.1).
//
// SASL: --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 with --sasl-user and
// --sasl-password; --sasl-handshake 0 sends SaslHandshake v0 (bare tokens follow, as older
// Sarama did), otherwise v1 (SaslAuthenticate).
//
// Prints exactly one JSON line on stdout; logs go to stderr (sarama's
// logger is on when KKP_CLIENT_LOG is DEBUG or INFO).
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"kkp-test-clients/records"
)

const defaultVersion = "3.6.0"

func main() {
	a := records.ParseArgs("sarama-client", os.Args[1:], "kafka-version",
		"sasl-mechanism", "sasl-user", "sasl-password", "sasl-handshake")
	switch strings.ToUpper(os.Getenv("KKP_CLIENT_LOG")) {
	case "DEBUG", "INFO":
		sarama.Logger = log.New(os.Stderr, "sarama ", log.LstdFlags|log.Lmicroseconds)
	}
	records.Run(a, produce, consume, admin)
}

func config(a *records.Args) *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.ClientID = "kkp-sarama"
	v := defaultVersion
	if s := *a.Extra["kafka-version"]; s != "" {
		v = s
	}
	ver, err := sarama.ParseKafkaVersion(v)
	if err != nil {
		records.Usage("--kafka-version: %v", err)
	}
	cfg.Version = ver
	if m := *a.Extra["sasl-mechanism"]; m != "" {
		cfg.Net.SASL.Enable = true
		cfg.Net.SASL.Mechanism = sarama.SASLMechanism(m)
		cfg.Net.SASL.User = *a.Extra["sasl-user"]
		cfg.Net.SASL.Password = *a.Extra["sasl-password"]
		cfg.Net.SASL.Handshake = true
		cfg.Net.SASL.Version = sarama.SASLHandshakeV1
		if *a.Extra["sasl-handshake"] == "0" {
			cfg.Net.SASL.Version = sarama.SASLHandshakeV0
			// sarama's rule for v0 (Config.Validate), as in the releases that used it.
			cfg.ApiVersionsRequest = false
		}
		if strings.HasPrefix(m, "SCRAM-") {
			cfg.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return newSCRAMClient(m) }
		}
	}
	return cfg
}

func produce(a *records.Args) any {
	cfg := config(a)
	cfg.Producer.Return.Successes = true
	cfg.Producer.Return.Errors = true
	cfg.Producer.Flush.Frequency = 5 * time.Millisecond // linger.ms=5
	switch a.Codec {
	case "gzip":
		cfg.Producer.Compression = sarama.CompressionGZIP
	case "snappy":
		cfg.Producer.Compression = sarama.CompressionSnappy
	case "lz4":
		cfg.Producer.Compression = sarama.CompressionLZ4
	case "zstd":
		cfg.Producer.Compression = sarama.CompressionZSTD
	default:
		cfg.Producer.Compression = sarama.CompressionNone
	}
	switch a.Acks {
	case "0":
		cfg.Producer.RequiredAcks = sarama.NoResponse
	case "1":
		cfg.Producer.RequiredAcks = sarama.WaitForLocal
	default:
		cfg.Producer.RequiredAcks = sarama.WaitForAll
	}
	if a.Idem {
		// sarama's preconditions for idempotence (Config.Validate).
		cfg.Producer.Idempotent = true
		cfg.Net.MaxOpenRequests = 1
		if cfg.Producer.Retry.Max < 1 {
			cfg.Producer.Retry.Max = 1
		}
	}
	errs := &records.Errors{}
	p, err := sarama.NewAsyncProducer(a.Brokers(), cfg)
	if err != nil {
		var cerr sarama.ConfigurationError
		if errors.As(err, &cerr) {
			records.Fatal("sarama producer: %v", err)
		}
		// e.g. no broker reachable: every record failed (the JSON says so)
		errs.AddN(fmt.Sprintf("sarama producer: %v", err), a.Count)
		return records.ProduceResult(0, errs)
	}
	var mu sync.Mutex
	ok := 0
	var wg sync.WaitGroup
	wg.Add(2)
	done := make(chan struct{}, a.Count+1)
	go func() {
		defer wg.Done()
		for range p.Successes() {
			mu.Lock()
			ok++
			mu.Unlock()
			done <- struct{}{}
		}
	}()
	go func() {
		defer wg.Done()
		for e := range p.Errors() {
			mu.Lock()
			errs.Add(e.Err)
			mu.Unlock()
			done <- struct{}{}
		}
	}()
	deadline := time.After(records.Seconds(a.Timeout))
	timedOut := false
	for i := 0; i < a.Count && !timedOut; i++ {
		k, v := records.Record(a.Topic, i)
		select {
		case p.Input() <- &sarama.ProducerMessage{Topic: a.Topic, Key: sarama.ByteEncoder(k), Value: sarama.ByteEncoder(v)}:
		case <-deadline:
			timedOut = true
		}
	}
	for n := 0; n < a.Count && !timedOut; n++ {
		select {
		case <-done:
		case <-deadline:
			timedOut = true
		}
	}
	if timedOut {
		// Stop waiting: whatever is still in flight counts as failed.
		mu.Lock()
		rest := a.Count - ok - errs.Count
		errs.AddN(fmt.Sprintf("%d messages still undelivered after flush(%v)", rest, a.Timeout), rest)
		res := records.ProduceResult(ok, errs)
		mu.Unlock()
		go p.AsyncClose()
		return res
	}
	if err := p.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "close: %v\n", err)
	}
	wg.Wait()
	return records.ProduceResult(ok, errs)
}

// partitions returns the partition ids of topic, retrying until deadline.
func partitions(cl sarama.Client, topic string, deadline time.Time) ([]int32, error) {
	for {
		err := cl.RefreshMetadata(topic)
		var ps []int32
		if err == nil {
			ps, err = cl.Partitions(topic)
		}
		if err == nil && len(ps) == 0 {
			err = fmt.Errorf("topic %s has no partitions", topic)
		}
		if err == nil {
			sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
			return ps, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type msg struct {
	key, value []byte
	where      string
}

type errList struct {
	mu   sync.Mutex
	list []string
}

func (e *errList) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.list) < 5 {
		e.list = append(e.list, s)
	}
}

func consume(a *records.Args) any {
	deadline := time.Now().Add(records.Seconds(a.Timeout))
	v := records.NewVerifier(a.Topic, a.Count)
	cfg := config(a)
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	cfg.Consumer.MaxWaitTime = 500 * time.Millisecond
	if a.Isolation == "read_committed" {
		cfg.Consumer.IsolationLevel = sarama.ReadCommitted
	}
	cl, err := sarama.NewClient(a.Brokers(), cfg)
	if err != nil {
		records.Fatal("sarama client: %v", err)
	}
	defer cl.Close()
	ps, err := partitions(cl, a.Topic, deadline)
	if err != nil {
		records.Fatal("no metadata for topic %s: %v", a.Topic, err)
	}
	errs := &errList{}
	msgs := make(chan msg, 4096)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	var stop func() // stops the consumers once the verifier is done
	var amu sync.Mutex
	assigned := map[int32]bool{}
	if a.Group == "" {
		c, err := sarama.NewConsumerFromClient(cl)
		if err != nil {
			records.Fatal("sarama consumer: %v", err)
		}
		var pcs []sarama.PartitionConsumer
		var wg sync.WaitGroup
		for _, p := range ps {
			pc, err := c.ConsumePartition(a.Topic, p, sarama.OffsetOldest)
			if err != nil {
				records.Fatal("consume partition %d: %v", p, err)
			}
			pcs = append(pcs, pc)
			wg.Add(2)
			go func() {
				defer wg.Done()
				for m := range pc.Messages() {
					select {
					case msgs <- msg{m.Key, m.Value, fmt.Sprintf("p%d@%d", m.Partition, m.Offset)}:
					case <-ctx.Done():
					}
				}
			}()
			go func() {
				defer wg.Done()
				for e := range pc.Errors() {
					errs.add(e.Error())
				}
			}()
		}
		stop = func() {
			cancel()
			for _, pc := range pcs {
				pc.AsyncClose()
			}
			wg.Wait()
			_ = c.Close()
		}
	} else {
		g, err := sarama.NewConsumerGroupFromClient(a.Group, cl)
		if err != nil {
			records.Fatal("sarama consumer group: %v", err)
		}
		h := &handler{topic: a.Topic, msgs: msgs, onAssign: func(parts []int32) {
			amu.Lock()
			defer amu.Unlock()
			for _, p := range parts {
				assigned[p] = true
			}
		}}
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			for ctx.Err() == nil {
				if err := g.Consume(ctx, []string{a.Topic}, h); err != nil {
					if errors.Is(err, sarama.ErrClosedConsumerGroup) {
						return
					}
					errs.add(err.Error())
					time.Sleep(200 * time.Millisecond)
				}
			}
		}()
		go func() {
			for e := range g.Errors() {
				errs.add(e.Error())
			}
		}()
		stop = func() {
			cancel()
			<-finished
			if err := g.Close(); err != nil {
				errs.add(fmt.Sprintf("close: %v", err))
			}
		}
	}

	timer := time.NewTimer(time.Until(deadline))
loop:
	for !v.Done() {
		select {
		case m := <-msgs:
			v.Add(m.key, m.value, m.where)
		case <-timer.C:
			break loop
		}
	}
	stop()
	// Records already handed over (and, in a group, marked for commit) still
	// count, like the rest of a fetched batch in kafka_client.py.
drain:
	for {
		select {
		case m := <-msgs:
			v.Add(m.key, m.value, m.where)
		default:
			break drain
		}
	}

	var committed map[int32]int64
	if a.Group != "" {
		committed = map[int32]int64{}
		for _, p := range ps {
			committed[p] = -1
		}
		adm, err := sarama.NewClusterAdminFromClient(cl)
		if err != nil {
			errs.add(fmt.Sprintf("admin: %v", err))
		} else {
			resp, err := adm.ListConsumerGroupOffsets(a.Group, map[string][]int32{a.Topic: ps})
			if err != nil {
				errs.add(fmt.Sprintf("fetch committed offsets: %v", err))
			} else {
				for _, p := range ps {
					if b := resp.GetBlock(a.Topic, p); b != nil && errors.Is(b.Err, sarama.ErrNoError) {
						committed[p] = b.Offset
					}
				}
			}
		}
	}
	out := v.Summary()
	errs.mu.Lock()
	list := append([]string{}, errs.list...)
	errs.mu.Unlock()
	out.Set("errors", list)
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

// handler feeds a consumer group's claims into msgs, marking every record
// it hands over (auto commit on) and committing synchronously at the end of
// each session.
type handler struct {
	topic    string
	msgs     chan<- msg
	onAssign func([]int32)
}

func (h *handler) Setup(s sarama.ConsumerGroupSession) error {
	h.onAssign(s.Claims()[h.topic])
	return nil
}

func (h *handler) Cleanup(s sarama.ConsumerGroupSession) error {
	s.Commit()
	return nil
}

func (h *handler) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for {
		select {
		case m, ok := <-c.Messages():
			if !ok {
				return nil
			}
			select {
			case h.msgs <- msg{m.Key, m.Value, fmt.Sprintf("p%d@%d", m.Partition, m.Offset)}:
				s.MarkMessage(m, "")
			case <-s.Context().Done():
				return nil
			}
		case <-s.Context().Done():
			return nil
		}
	}
}

func admin(a *records.Args) any {
	cfg := config(a)
	cfg.Admin.Timeout = 60 * time.Second
	cl, err := sarama.NewClient(a.Brokers(), cfg)
	if err != nil {
		records.Fatal("sarama client: %v", err)
	}
	defer cl.Close()
	switch a.AdminCmd {
	case "create":
		adm, err := sarama.NewClusterAdminFromClient(cl)
		if err != nil {
			records.Fatal("sarama admin: %v", err)
		}
		err = adm.CreateTopic(a.Topic, &sarama.TopicDetail{
			NumPartitions:     int32(a.Partitions),
			ReplicationFactor: int16(a.Replication),
		}, false)
		if err != nil {
			records.Fatal("create topic %s: %v", a.Topic, err)
		}
		return records.NewObj().Set("created", a.Topic).Set("partitions", a.Partitions)
	default: // list
		if err := cl.RefreshMetadata(); err != nil {
			records.Fatal("list topics: %v", err)
		}
		names, err := cl.Topics()
		if err != nil {
			records.Fatal("list topics: %v", err)
		}
		sort.Strings(names)
		return names
	}
}
