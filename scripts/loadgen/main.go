// Command loadgen is scripts/bench_overload.py's compiled load generator: the same closed-loop clients as
// the script's Python generator (unary PostTransaction, PostTransactions of --batch-size transactions, HTTP
// POST /v1/transactions), the same requests, deadlines and retry-hint rule, at a fraction of the CPU.
//
// Why a compiled generator: on the benchmark's two shared cores, four Python generator processes driving
// 370 clients used ~60% of a core and lagged 20-30 ms at p99 on their own: more than the 2x-unloaded
// latency budget they were meant to measure, and CPU the server under test waited for.
//
// No generated protobuf code: the requests are encoded with protowire (field numbers from
// proto/ledger/v1/ledger.proto) and sent as raw bytes, so the build needs nothing but the Go module proxy.
//
// Two modes:
//   - -mode overload (bench_overload.py): the overload's mixed clients, see above.
//   - -mode closed (bench_api.py's rows): -concurrency workers, each calling as soon as its previous call
//     returned: PostTransaction (-size 0) or PostTransactions of -size transactions over -connections
//     gRPC connections, calls round-robin (default 1, as the Python client's one channel), or with -dsn
//     the PostgreSQL peer's transfers over one connection per worker, one database transaction per transfer.
//
// Protocol with the scripts: flags configure the clients; once every connection is ready it prints
// "ready" on stdout and waits for a line on stdin (the start, shared by every generator process); after
// -seconds it prints one line of JSON (overload: the Tally fields of bench_overload.py per edge, its own
// timer lag samples, CPU seconds and scheduler account; closed: per-call latencies, the transactions
// acknowledged and the errors by kind), and exits once its stdin is closed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	legTypeTransfer       = 3 // LEG_TYPE_TRANSFER
	retryDelayDefault     = 50 * time.Millisecond
	connectTimeout        = 60 * time.Second
	lagProbeInterval      = 10 * time.Millisecond
	retryAfterDefaultSecs = 1.0
	methodPost            = "/ledger.v1.Ledger/PostTransaction"
	methodPostBatch       = "/ledger.v1.Ledger/PostTransactions"
)

// Tally is bench_overload.py's Tally, field for field (latencies in seconds).
type Tally struct {
	mu                     sync.Mutex
	Admitted               []float64      `json:"admitted"`
	Acknowledged           int            `json:"acknowledged"`
	Refused                []float64      `json:"refused"`
	AdmittedWarmup         []float64      `json:"admitted_warmup"`
	RefusedWarmup          []float64      `json:"refused_warmup"`
	DeadlineExceeded       int            `json:"deadline_exceeded"`
	DeadlineExceededWarmup int            `json:"deadline_exceeded_warmup"`
	OtherErrors            map[string]int `json:"other_errors"`
}

func newTally() *Tally {
	return &Tally{
		Admitted: []float64{}, Refused: []float64{}, AdmittedWarmup: []float64{}, RefusedWarmup: []float64{},
		OtherErrors: map[string]int{},
	}
}

type config struct {
	grpcAddress, httpAddress, token, tag string
	accounts                             []string
	seconds, warmup, deadline, delayMax  time.Duration
	unary, unaryFirst                    int
	batch, batchFirst, batchSize         int
	http, httpFirst                      int
	unaryPerConnection                   int
}

type generator struct {
	cfg     config
	started time.Time
	warmAt  time.Time
	stopAt  time.Time
	tallies map[string]*Tally
}

func (g *generator) admitted(t *Tally, started time.Time, acknowledged int) {
	seconds := time.Since(started).Seconds()
	t.mu.Lock()
	defer t.mu.Unlock()
	if started.Before(g.warmAt) {
		t.AdmittedWarmup = append(t.AdmittedWarmup, seconds)
	} else {
		t.Admitted = append(t.Admitted, seconds)
	}
	t.Acknowledged += acknowledged
}

func (g *generator) refused(t *Tally, started time.Time) {
	seconds := time.Since(started).Seconds()
	t.mu.Lock()
	defer t.mu.Unlock()
	if started.Before(g.warmAt) {
		t.RefusedWarmup = append(t.RefusedWarmup, seconds)
	} else {
		t.Refused = append(t.Refused, seconds)
	}
}

func (g *generator) late(t *Tally, started time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if started.Before(g.warmAt) {
		t.DeadlineExceededWarmup++
	} else {
		t.DeadlineExceeded++
	}
}

func (g *generator) other(t *Tally, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.OtherErrors[name]++
}

// legs is bench_overload.py's legs(): the same accounts and amount for request number n.
func (g *generator) legs(n int) (string, string, string) {
	accounts := g.cfg.accounts
	source, destination := accounts[n%len(accounts)], accounts[(n*7+1)%len(accounts)]
	if source == destination {
		destination = accounts[(n+1)%len(accounts)]
	}
	return source, destination, strconv.Itoa(1 + n%1000)
}

func appendString(b []byte, field protowire.Number, value string) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, value)
}

func appendMessage(b []byte, field protowire.Number, message []byte) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, message)
}

// encodeTransaction encodes a PostTransactionRequest with one TRANSFER leg, the source "bench" and the key
// as its correlation id (bench_overload.py's and bench_api.py's transaction()).
func encodeTransaction(key, source, destination, amount string) []byte {
	var leg []byte
	leg = protowire.AppendTag(leg, 1, protowire.VarintType) // Leg.type
	leg = protowire.AppendVarint(leg, legTypeTransfer)
	leg = appendString(leg, 3, source)                          // from_account_id
	leg = appendString(leg, 4, destination)                     // to_account_id
	leg = appendString(leg, 5, amount)                          // amount
	leg = appendString(leg, 6, "USD")                           // currency
	meta := appendString(appendString(nil, 1, "bench"), 2, key) // source, correlation_id
	var request []byte
	request = appendString(request, 1, key) // idempotency_key
	request = appendMessage(request, 2, leg)
	return appendMessage(request, 3, meta)
}

// transaction is bench_overload.py's transaction() for request number n.
func (g *generator) transaction(key string, n int) []byte {
	source, destination, amount := g.legs(n)
	return encodeTransaction(key, source, destination, amount)
}

// createdInBatch counts the results of a PostTransactionsResponse that carry a transaction (field 1 of
// TransactionResult), as the Python generator counts `r.HasField("transaction")`.
func createdInBatch(response []byte) (int, error) {
	created := 0
	for len(response) > 0 {
		number, kind, n := protowire.ConsumeTag(response)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		response = response[n:]
		if number != 1 || kind != protowire.BytesType {
			n = protowire.ConsumeFieldValue(number, kind, response)
			if n < 0 {
				return 0, protowire.ParseError(n)
			}
			response = response[n:]
			continue
		}
		result, n := protowire.ConsumeBytes(response)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		response = response[n:]
		if len(result) > 0 {
			field, _, m := protowire.ConsumeTag(result)
			if m > 0 && field == 1 {
				created++
			}
		}
	}
	return created, nil
}

// rawCodec sends and receives messages as the bytes they already are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func retryDelay(err error, delayMax time.Duration) time.Duration {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			return min(delayMax, info.GetRetryDelay().AsDuration())
		}
	}
	return retryDelayDefault
}

// grpcCall makes one call and returns how long to wait before the next (a refusal's retry hint).
func (g *generator) grpcCall(ctx context.Context, conn *grpc.ClientConn, t *Tally, method string, request []byte,
	count int) time.Duration {
	started := time.Now()
	callCtx, cancel := context.WithTimeout(ctx, g.cfg.deadline)
	defer cancel()
	var response []byte
	err := conn.Invoke(callCtx, method, &request, &response, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		switch status.Code(err) {
		case codes.ResourceExhausted:
			g.refused(t, started)
			return retryDelay(err, g.cfg.delayMax)
		case codes.DeadlineExceeded:
			g.late(t, started)
		default:
			g.other(t, strings.ToUpper(status.Code(err).String()))
		}
		return 0
	}
	acknowledged := 1
	if count > 1 {
		created, parseErr := createdInBatch(response)
		if parseErr != nil {
			g.other(t, "UNPARSABLE_RESPONSE")
			return 0
		}
		acknowledged = created
	}
	g.admitted(t, started, acknowledged)
	return 0
}

type httpLeg struct {
	Type          string `json:"type"`
	FromAccountID string `json:"from_account_id"`
	ToAccountID   string `json:"to_account_id"`
	Amount        string `json:"amount"`
	Currency      string `json:"currency"`
}

type httpBody struct {
	IdempotencyKey string    `json:"idempotency_key"`
	Legs           []httpLeg `json:"legs"`
}

func (g *generator) httpCall(client *http.Client, t *Tally, key string, n int) time.Duration {
	source, destination, amount := g.legs(n)
	body, err := json.Marshal(httpBody{key, []httpLeg{{"LEG_TYPE_TRANSFER", source, destination, amount, "USD"}}})
	if err != nil {
		panic(err)
	}
	request, err := http.NewRequest(http.MethodPost, "http://"+g.cfg.httpAddress+"/v1/transactions",
		bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	request.Header.Set("Authorization", "Bearer "+g.cfg.token)
	request.Header.Set("Content-Type", "application/json")
	request.Header.Set("X-Request-Timeout-Ms", strconv.Itoa(int(g.cfg.deadline.Milliseconds())))
	started := time.Now()
	response, err := client.Do(request)
	if err != nil {
		var timeout interface{ Timeout() bool }
		if errors.As(err, &timeout) && timeout.Timeout() {
			g.late(t, started)
		} else {
			g.other(t, "HTTP_ERROR")
		}
		return 0
	}
	_, _ = io.Copy(io.Discard, response.Body) // Read to the end: the connection is reused.
	_ = response.Body.Close()
	switch {
	case response.StatusCode == http.StatusTooManyRequests:
		g.refused(t, started)
		seconds, parseErr := strconv.ParseFloat(response.Header.Get("Retry-After"), 64)
		if parseErr != nil {
			seconds = retryAfterDefaultSecs
		}
		return min(g.cfg.delayMax, time.Duration(seconds*float64(time.Second)))
	case response.StatusCode == http.StatusGatewayTimeout:
		g.late(t, started)
	case response.StatusCode == http.StatusOK || response.StatusCode == http.StatusCreated:
		g.admitted(t, started, 1)
	default:
		g.other(t, "HTTP "+strconv.Itoa(response.StatusCode))
	}
	return 0
}

func dial(address string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	conn.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if !conn.WaitForStateChange(ctx, state) {
			return nil, fmt.Errorf("%s: not ready after %s (%s)", address, connectTimeout, state)
		}
	}
	return conn, nil
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// schedSeconds sums every thread's scheduler account (/proc/self/task/*/schedstat): seconds on a CPU and
// seconds runnable but waiting for one; zeros where /proc has none.
func schedSeconds() (running, waiting float64) {
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		data, err := os.ReadFile("/proc/self/task/" + task.Name() + "/schedstat")
		if err != nil {
			continue
		}
		fields := strings.Fields(string(data))
		if len(fields) < 2 {
			continue
		}
		onCPU, _ := strconv.ParseFloat(fields[0], 64)
		queued, _ := strconv.ParseFloat(fields[1], 64)
		running, waiting = running+onCPU/1e9, waiting+queued/1e9
	}
	return running, waiting
}

var stdin = bufio.NewReader(os.Stdin)

// awaitStart says "ready" and waits for the start: a line on stdin.
func awaitStart() error {
	fmt.Println("ready")
	if _, err := stdin.ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the start: %w", err)
	}
	return nil
}

// report writes the result (one line of JSON), then waits for stdin to close before the connections do:
// the script measures the server's processes first (a PostgreSQL backend's CPU leaves /proc with it).
func report(result map[string]any) error {
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, stdin)
	return nil
}

func run(cfg config) error {
	unaryConnections := (cfg.unary + cfg.unaryPerConnection - 1) / cfg.unaryPerConnection
	conns := make([]*grpc.ClientConn, 0, unaryConnections+cfg.batch)
	for range unaryConnections + cfg.batch {
		conn, err := dial(cfg.grpcAddress)
		if err != nil {
			return err
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	client := &http.Client{
		Timeout:   cfg.deadline,
		Transport: &http.Transport{MaxIdleConnsPerHost: cfg.http + 4, MaxConnsPerHost: cfg.http + 4},
	}
	if err := awaitStart(); err != nil {
		return err
	}
	cpuStarted := cpuSeconds()
	runningStarted, waitingStarted := schedSeconds()
	g := &generator{cfg: cfg, started: time.Now(), tallies: map[string]*Tally{
		"unary": newTally(), "batch": newTally(), "http": newTally(),
	}}
	g.warmAt, g.stopAt = g.started.Add(cfg.warmup), g.started.Add(cfg.seconds)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+cfg.token)
	var workers sync.WaitGroup
	for worker := range cfg.unary {
		workers.Go(func() {
			number, conn := cfg.unaryFirst+worker, conns[worker/cfg.unaryPerConnection]
			for n := 0; time.Now().Before(g.stopAt); n++ {
				request := g.transaction(fmt.Sprintf("%su-%d-%d", cfg.tag, number, n), n+number)
				time.Sleep(g.grpcCall(ctx, conn, g.tallies["unary"], methodPost, request, 1))
			}
		})
	}
	for worker := range cfg.batch {
		workers.Go(func() {
			number, conn := cfg.batchFirst+worker, conns[len(conns)-1-worker]
			for n := 0; time.Now().Before(g.stopAt); n++ {
				var request []byte
				for i := range cfg.batchSize {
					item := g.transaction(fmt.Sprintf("%sb-%d-%d-%d", cfg.tag, number, n, i), n*cfg.batchSize+i)
					request = appendMessage(request, 1, item) // PostTransactionsRequest.transactions
				}
				time.Sleep(g.grpcCall(ctx, conn, g.tallies["batch"], methodPostBatch, request, cfg.batchSize))
			}
		})
	}
	for worker := range cfg.http {
		workers.Go(func() {
			number := cfg.httpFirst + worker
			for n := 0; time.Now().Before(g.stopAt); n++ {
				time.Sleep(g.httpCall(client, g.tallies["http"], fmt.Sprintf("%sh-%d-%d", cfg.tag, number, n), n+number))
			}
		})
	}
	lag := []float64{}
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for time.Now().Before(g.stopAt) {
			started := time.Now()
			time.Sleep(lagProbeInterval)
			lag = append(lag, max(0, (time.Since(started)-lagProbeInterval).Seconds()))
		}
	}()
	workers.Wait()
	<-probeDone
	running, waiting := schedSeconds()
	return report(map[string]any{
		"tallies": g.tallies, "lag_seconds": lag, "cpu_seconds": cpuSeconds() - cpuStarted,
		"running_seconds": running - runningStarted, "waiting_seconds": waiting - waitingStarted,
	})
}

func main() {
	var cfg config
	var closed closedConfig
	var mode, accounts string
	flag.StringVar(&mode, "mode", "overload", "overload (bench_overload.py) or closed (bench_api.py's rows)")
	flag.StringVar(&cfg.grpcAddress, "grpc", "", "gRPC host:port")
	flag.StringVar(&cfg.httpAddress, "http-address", "", "JSON gateway host:port")
	flag.StringVar(&cfg.token, "token", "", "bearer token (read+write)")
	flag.StringVar(&cfg.tag, "tag", "o", "idempotency-key prefix")
	flag.StringVar(&accounts, "accounts", "", "comma-separated account ids")
	flag.DurationVar(&cfg.seconds, "seconds", 10*time.Second, "how long the clients run")
	flag.DurationVar(&cfg.warmup, "warmup", 0, "calls started this early are the warm-up, counted apart")
	flag.DurationVar(&cfg.deadline, "deadline", 5*time.Second, "every call's deadline")
	flag.DurationVar(&cfg.delayMax, "retry-delay-max", time.Second, "the longest retry hint honoured")
	flag.IntVar(&cfg.unary, "unary", 0, "unary PostTransaction clients")
	flag.IntVar(&cfg.unaryFirst, "unary-first", 0, "number of the first unary client")
	flag.IntVar(&cfg.batch, "batch", 0, "PostTransactions clients")
	flag.IntVar(&cfg.batchFirst, "batch-first", 0, "number of the first batch client")
	flag.IntVar(&cfg.batchSize, "batch-size", 1000, "transactions per PostTransactions")
	flag.IntVar(&cfg.http, "http", 0, "HTTP clients")
	flag.IntVar(&cfg.httpFirst, "http-first", 0, "number of the first HTTP client")
	flag.IntVar(&cfg.unaryPerConnection, "unary-per-connection", 10, "unary clients sharing one connection")
	flag.IntVar(&closed.concurrency, "concurrency", 1, "closed: concurrent calls")
	flag.IntVar(&closed.size, "size", 0, "closed: transactions per call (0: PostTransaction, else PostTransactions)")
	flag.StringVar(&closed.dsn, "dsn", "", "closed: the PostgreSQL peer's connection string (instead of -grpc)")
	flag.IntVar(&closed.connections, "connections", 1, "closed: gRPC connections, calls spread round-robin")
	flag.Parse()
	cfg.accounts = strings.Split(accounts, ",")
	var err error
	switch {
	case accounts == "":
		err = errors.New("-accounts is required")
	case mode == "overload" && (cfg.grpcAddress == "" || cfg.unaryPerConnection < 1 || cfg.batchSize < 1):
		err = errors.New("overload: -grpc is required; -unary-per-connection, -batch-size >= 1")
	case mode == "overload":
		err = run(cfg)
	case mode == "closed" && ((cfg.grpcAddress == "") == (closed.dsn == "") || closed.concurrency < 1 || closed.size < 0 ||
		closed.connections < 1):
		err = errors.New("closed: one of -grpc, -dsn; -concurrency >= 1, -size >= 0, -connections >= 1")
	case mode == "closed":
		closed.grpcAddress, closed.token, closed.tag = cfg.grpcAddress, cfg.token, cfg.tag
		closed.accounts, closed.seconds = cfg.accounts, cfg.seconds
		err = runClosed(closed)
	default:
		err = fmt.Errorf("unknown -mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
