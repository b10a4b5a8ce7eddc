// Package records mirrors tests/clients/records.py (byte for byte) and the
// JSON shapes kafka_client.py prints, for the Go test clients.
package records

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
)

var words = []string{
	"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
	"india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
	"kafka", "kinesis", "proxy", "record", "batch", "0123456789", "~!@#$%^&*()", "ZZZ",
}

// Record returns (key, value) of record number i of topic, exactly as
// records.py `record()` does.
func Record(topic string, i int) ([]byte, []byte) {
	x := uint32(0x811C9DC5)
	for _, b := range []byte(fmt.Sprintf("%s|%d", topic, i)) {
		x ^= uint32(b)
		x *= 0x01000193
	}
	if x == 0 {
		x = 0x9E3779B9
	}
	next := func() uint32 {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		return x
	}
	length := 10 + int(next()%991)
	var sb strings.Builder
	n := 0
	for n < length {
		w := words[next()%uint32(len(words))]
		if sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(w)
		n += len(w) + 1
	}
	payload := sb.String()
	if len(payload) > length { // Python's [:length] clamps
		payload = payload[:length]
	}
	key := []byte(fmt.Sprintf("key-%06d", i))
	value := []byte(fmt.Sprintf("%s|%d|%s", topic, i, payload))
	return key, value
}

// IndexOfKey parses "key-000123" -> 123; -1 when the key is not one of ours.
func IndexOfKey(key []byte) int {
	if key == nil || !bytes.HasPrefix(key, []byte("key-")) || len(key) == 4 {
		return -1
	}
	for _, c := range key[4:] {
		if c < '0' || c > '9' {
			return -1
		}
	}
	i, err := strconv.Atoi(string(key[4:]))
	if err != nil {
		return -1
	}
	return i
}

// pyBytes renders b roughly like Python's repr(bytes), cut to max chars.
func pyBytes(b []byte, max int) string {
	var sb strings.Builder
	sb.WriteString("b'")
	for _, c := range b {
		switch {
		case c == '\\' || c == '\'':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c == '\n':
			sb.WriteString(`\n`)
		case c == '\r':
			sb.WriteString(`\r`)
		case c == '\t':
			sb.WriteString(`\t`)
		case c < 0x20 || c >= 0x7f:
			fmt.Fprintf(&sb, `\x%02x`, c)
		default:
			sb.WriteByte(c)
		}
	}
	sb.WriteByte('\'')
	s := sb.String()
	if max > 0 && len(s) > max {
		s = s[:max]
	}
	return s
}

// Verifier checks consumed records against the generator (records.py Verifier).
type Verifier struct {
	Topic      string
	Count      int
	Consumed   int
	Seen       map[int]struct{}
	Duplicates int
	Mismatched int
	Examples   []string
}

func NewVerifier(topic string, count int) *Verifier {
	return &Verifier{Topic: topic, Count: count, Seen: map[int]struct{}{}, Examples: []string{}}
}

func (v *Verifier) example(s string) {
	if len(v.Examples) < 5 {
		v.Examples = append(v.Examples, s)
	}
}

// Add records one consumed record; where is e.g. "p1@42".
func (v *Verifier) Add(key, value []byte, where string) {
	v.Consumed++
	i := IndexOfKey(key)
	if i < 0 || i >= v.Count {
		v.Mismatched++
		k := "None"
		if key != nil {
			k = pyBytes(key, 60)
		}
		v.example(fmt.Sprintf("unexpected key %s at %s", k, where))
		return
	}
	if _, ok := v.Seen[i]; ok {
		v.Duplicates++
		return
	}
	ek, ev := Record(v.Topic, i)
	if !bytes.Equal(value, ev) {
		v.Mismatched++
		v.example(fmt.Sprintf("value mismatch for %s at %s: got %d bytes %s, want %d bytes %s",
			ek, where, len(value), pyBytes(head(value, 40), 0), len(ev), pyBytes(head(ev, 40), 0)))
		// still counts as seen: it was delivered, just wrong
	}
	v.Seen[i] = struct{}{}
}

func head(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

func (v *Verifier) Done() bool { return len(v.Seen) >= v.Count }

// Summary is the consume JSON of records.py Verifier.summary().
func (v *Verifier) Summary() *Obj {
	return NewObj().
		Set("consumed", v.Consumed).
		Set("distinct", len(v.Seen)).
		Set("missing", v.Count-len(v.Seen)).
		Set("duplicates", v.Duplicates).
		Set("mismatched", v.Mismatched).
		Set("examples", v.Examples)
}

// Indices is the sorted list of distinct indices seen.
func (v *Verifier) Indices() []int {
	out := make([]int, 0, len(v.Seen))
	for i := range v.Seen {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

// Obj is a JSON object that keeps its keys in insertion order (like the
// Python dicts kafka_client.py prints).
type Obj struct {
	keys []string
	vals map[string]any
}

func NewObj() *Obj { return &Obj{vals: map[string]any{}} }

func (o *Obj) Set(k string, v any) *Obj {
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
	return o
}

func (o *Obj) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for n, k := range o.keys {
		if n > 0 {
			buf.WriteByte(',')
		}
		kb, err := marshal(k)
		if err != nil {
			return nil, err
		}
		vb, err := marshal(o.vals[k])
		if err != nil {
			return nil, err
		}
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// Errors keeps a count and the first five messages (kafka_client.py Errors).
type Errors struct {
	Count int
	First []string
}

func (e *Errors) Add(err any) {
	e.AddN(err, 1)
}

func (e *Errors) AddN(err any, n int) {
	e.Count += n
	if len(e.First) < 5 {
		e.First = append(e.First, fmt.Sprint(err))
	}
}

// ProduceResult is kafka_client.py produce_result().
func ProduceResult(produced int, errs *Errors) *Obj {
	first := errs.First
	if first == nil {
		first = []string{}
	}
	return NewObj().Set("produced", produced).Set("errors", first).Set("error_count", errs.Count)
}

// GroupSummary adds kafka_client.py group_summary() fields to out: the
// partitions this member was ever assigned, and the group's committed
// offsets per partition (negative: nothing committed -> -1).
func GroupSummary(out *Obj, assigned map[int32]bool, committed map[int32]int64) {
	as := []int{}
	for p := range assigned {
		as = append(as, int(p))
	}
	sort.Ints(as)
	ps := []int{}
	for p := range committed {
		ps = append(ps, int(p))
	}
	sort.Ints(ps)
	c := NewObj()
	var total int64
	for _, p := range ps {
		o := committed[int32(p)]
		if o < 0 {
			o = -1
		}
		if o > 0 {
			total += o
		}
		c.Set(strconv.Itoa(p), o)
	}
	out.Set("assigned", as).Set("committed", c).Set("committed_total", total)
}

// Print writes v as the one JSON line on stdout, formatted like Python's
// json.dumps: ", " and ": " separators, non-ASCII escaped as \uXXXX.
// Run dispatches the parsed command to the client's implementation and prints its result.
func Run(a *Args, produce, consume, admin func(*Args) any) {
	var out any
	switch a.Cmd {
	case "produce":
		out = produce(a)
	case "consume":
		out = consume(a)
	case "admin":
		out = admin(a)
	}
	Print(out)
}

// Seconds converts a command-line duration in (fractional) seconds.
func Seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func Print(v any) {
	b, err := marshal(v)
	if err != nil {
		Fatal("encode output: %v", err)
	}
	os.Stdout.Write(append(pyStyle(b), '\n'))
}

// pyStyle reformats compact JSON the way json.dumps writes it.
func pyStyle(b []byte) []byte {
	var out bytes.Buffer
	inString, escaped := false, false
	for _, r := range string(b) {
		switch {
		case inString && escaped:
			escaped = false
		case inString && r == '\\':
			escaped = true
		case r == '"':
			inString = !inString
		case !inString && (r == ',' || r == ':'):
			out.WriteRune(r)
			out.WriteByte(' ')
			continue
		}
		if r >= 0x7f {
			for _, u := range utf16.Encode([]rune{r}) {
				fmt.Fprintf(&out, "\\u%04x", u)
			}
			continue
		}
		out.WriteRune(r)
	}
	return out.Bytes()
}

// PrintRecords implements `record TOPIC START [END]` (records.py __main__).
func PrintRecords(args []string) {
	if len(args) < 2 {
		Usage("record TOPIC START [END]")
	}
	start, err := strconv.Atoi(args[1])
	if err != nil {
		Usage("record: START must be an integer")
	}
	end := start + 1
	if len(args) > 2 {
		if end, err = strconv.Atoi(args[2]); err != nil {
			Usage("record: END must be an integer")
		}
	}
	w := bufio.NewWriterSize(os.Stdout, 1<<16)
	for n := start; n < end; n++ {
		k, v := Record(args[0], n)
		w.Write(k)
		w.WriteByte('\n')
		w.Write(v)
		w.WriteByte('\n')
	}
	w.Flush()
}

// Fatal reports a fatal error on stderr and exits 1.
func Fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "fatal: "+format+"\n", a...)
	os.Exit(1)
}

// Usage reports a usage error on stderr and exits 2 (like argparse).
func Usage(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "usage error: "+format+"\n", a...)
	os.Exit(2)
}

// Common command-line arguments of every client (kafka_client.py's CLI).
type Args struct {
	Cmd       string // produce, consume
	Bootstrap string
	Topic     string
	Count     int
	Codec     string
	Acks      string
	Idem      bool
	Legacy    bool
	Timeout   float64
	Group     string
	Isolation string
	ListIdx   bool
	// admin
	AdminCmd    string
	Partitions  int
	Replication int
	// client specific (sarama: --kafka-version)
	Extra map[string]*string
}

// ParseArgs parses `produce|consume|admin|record ...`. `record` is handled
// (printed) here and exits. extra names client-specific string flags.
func ParseArgs(prog string, argv []string, extra ...string) *Args {
	if len(argv) < 1 {
		Usage("%s produce|consume|admin|record ...", prog)
	}
	a := &Args{Cmd: argv[0], Extra: map[string]*string{}}
	fs := flag.NewFlagSet(prog+" "+a.Cmd, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&a.Bootstrap, "bootstrap", "", "bootstrap servers")
	for _, e := range extra {
		a.Extra[e] = fs.String(e, "", e)
	}
	rest := argv[1:]
	switch a.Cmd {
	case "record":
		PrintRecords(rest)
		os.Exit(0)
	case "produce":
		fs.StringVar(&a.Topic, "topic", "", "topic")
		fs.IntVar(&a.Count, "count", -1, "number of records")
		fs.StringVar(&a.Codec, "codec", "none", "none|gzip|snappy|lz4|zstd")
		fs.StringVar(&a.Acks, "acks", "all", "0|1|all")
		fs.BoolVar(&a.Idem, "idempotent", false, "idempotent producer")
		fs.BoolVar(&a.Legacy, "legacy-api", false, "not supported")
		fs.Float64Var(&a.Timeout, "timeout", 60, "seconds")
	case "consume":
		fs.StringVar(&a.Topic, "topic", "", "topic")
		fs.IntVar(&a.Count, "count", -1, "number of records")
		fs.StringVar(&a.Group, "group", "", "consumer group")
		fs.Float64Var(&a.Timeout, "timeout", 60, "seconds")
		fs.StringVar(&a.Isolation, "isolation", "read_uncommitted", "read_committed|read_uncommitted")
		fs.BoolVar(&a.ListIdx, "list-indices", false, "add the sorted distinct indices seen")
	case "admin":
		// admin --bootstrap B create --topic T --partitions P | list
		if err := fs.Parse(rest); err != nil {
			os.Exit(2)
		}
		rest = fs.Args()
		if len(rest) < 1 {
			Usage("admin --bootstrap B create|list ...")
		}
		a.AdminCmd = rest[0]
		fs = flag.NewFlagSet(prog+" admin "+a.AdminCmd, flag.ContinueOnError)
		fs.SetOutput(os.Stderr)
		fs.StringVar(&a.Bootstrap, "bootstrap", a.Bootstrap, "bootstrap servers")
		for _, e := range extra {
			fs.StringVar(a.Extra[e], e, *a.Extra[e], e)
		}
		switch a.AdminCmd {
		case "create":
			fs.StringVar(&a.Topic, "topic", "", "topic")
			fs.IntVar(&a.Partitions, "partitions", 1, "partitions")
			fs.IntVar(&a.Replication, "replication-factor", 1, "replication factor")
		case "list":
		default:
			Usage("admin: unknown command %q (create|list)", a.AdminCmd)
		}
		rest = rest[1:]
	default:
		Usage("%s produce|consume|admin|record ... (got %q)", prog, a.Cmd)
	}
	if err := fs.Parse(rest); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		Usage("unrecognized arguments: %s", strings.Join(fs.Args(), " "))
	}
	if a.Bootstrap == "" {
		Usage("--bootstrap is required")
	}
	if (a.Cmd == "produce" || a.Cmd == "consume" || a.AdminCmd == "create") && a.Topic == "" {
		Usage("--topic is required")
	}
	if (a.Cmd == "produce" || a.Cmd == "consume") && a.Count < 0 {
		Usage("--count is required")
	}
	switch a.Codec {
	case "", "none", "gzip", "snappy", "lz4", "zstd":
	default:
		Usage("--codec: invalid choice %q (none|gzip|snappy|lz4|zstd)", a.Codec)
	}
	switch a.Acks {
	case "", "0", "1", "all":
	default:
		Usage("--acks: invalid choice %q (0|1|all)", a.Acks)
	}
	switch a.Isolation {
	case "", "read_committed", "read_uncommitted":
	default:
		Usage("--isolation: invalid choice %q", a.Isolation)
	}
	if a.Legacy {
		Usage("--legacy-api is only implemented for --client kafka-python")
	}
	return a
}

// Brokers splits the bootstrap list.
func (a *Args) Brokers() []string {
	var out []string
	for _, b := range strings.Split(a.Bootstrap, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}
