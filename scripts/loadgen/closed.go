package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The PostgreSQL peer's statements, as bench_api.py's PG_LOCK, PG_INSERT, PG_DEBIT and PG_CREDIT.
const (
	pgLock   = "SELECT id FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE"
	pgInsert = "INSERT INTO transfers (idempotency_key, debit_account_id, credit_account_id, amount) " +
		"VALUES ($1, $2, $3, $4)"
	pgDebit  = "UPDATE accounts SET balance = balance - $1 WHERE id = $2"
	pgCredit = "UPDATE accounts SET balance = balance + $1 WHERE id = $2"
)

type closedConfig struct {
	grpcAddress, token, tag, dsn string
	accounts                     []string
	seconds                      time.Duration
	concurrency, size            int
	connections                  int // gRPC connections the calls are spread over, round-robin (not the peer's)
}

// call makes one closed-loop call for worker's n-th turn; returns the transactions acknowledged.
type call func(ctx context.Context, worker, n int) (int, error)

// transferPair is bench_api.py's transfer_pair: the account indexes of the n-th transfer.
func transferPair(n, accounts int) (int, int) {
	source, destination := n%accounts, (n*7+1)%accounts
	if source == destination {
		destination = (n + 1) % accounts
	}
	return source, destination
}

// benchTransaction encodes bench_api.py's transaction(): one TRANSFER leg between transferPair's accounts.
func benchTransaction(accounts []string, key string, n int) []byte {
	source, destination := transferPair(n, len(accounts))
	return encodeTransaction(key, accounts[source], accounts[destination], fmt.Sprint(1+n%1000))
}

// grpcCaller calls over cfg.connections gRPC connections (each its own grpc.ClientConn, so its own TCP
// connection: a server with SO_REUSEPORT listeners, such as front processes, gets each on one of them), the
// calls taken round-robin: as a payment service with a pool of connections, rather than one.
func grpcCaller(cfg closedConfig) (call, func(), error) {
	conns := make([]*grpc.ClientConn, 0, cfg.connections)
	closeAll := func() {
		for _, conn := range conns {
			conn.Close()
		}
	}
	for range cfg.connections {
		conn, err := dial(cfg.grpcAddress)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, conn)
	}
	var turn atomic.Uint64
	next := func() *grpc.ClientConn { return conns[(turn.Add(1)-1)%uint64(len(conns))] }
	if cfg.size == 0 {
		return func(ctx context.Context, worker, n int) (int, error) {
			request := benchTransaction(cfg.accounts, fmt.Sprintf("%s-u%d-%d-%d", cfg.tag, cfg.concurrency, worker, n),
				n+worker)
			var response []byte
			return 1, next().Invoke(ctx, methodPost, &request, &response, grpc.ForceCodec(rawCodec{}))
		}, closeAll, nil
	}
	return func(ctx context.Context, worker, n int) (int, error) {
		var request []byte
		for i := range cfg.size {
			key := fmt.Sprintf("%s-b%dx%d-%d-%d-%d", cfg.tag, cfg.size, cfg.concurrency, worker, n, i)
			request = appendMessage(request, 1, benchTransaction(cfg.accounts, key, n*cfg.size+i))
		}
		var response []byte
		if err := next().Invoke(ctx, methodPostBatch, &request, &response, grpc.ForceCodec(rawCodec{})); err != nil {
			return 0, err
		}
		return createdInBatch(response)
	}, closeAll, nil
}

func postgresCaller(cfg closedConfig) (call, func(), error) {
	connections := make([]*pgx.Conn, cfg.concurrency)
	closeAll := func() {
		for _, connection := range connections {
			if connection != nil {
				connection.Close(context.Background())
			}
		}
	}
	for i := range connections {
		connection, err := pgx.Connect(context.Background(), cfg.dsn)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		connections[i] = connection
	}
	post := func(ctx context.Context, connection *pgx.Conn, key string, n int) error {
		source, destination := transferPair(n, len(cfg.accounts))
		amount := int64(1 + n%1000)
		return pgx.BeginFunc(ctx, connection, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, pgLock, []int64{int64(source), int64(destination)}); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, pgInsert, key, source, destination, amount); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, pgDebit, amount, source); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, pgCredit, amount, destination)
			return err
		})
	}
	if cfg.size == 0 {
		return func(ctx context.Context, worker, n int) (int, error) {
			key := fmt.Sprintf("u%d-%d-%d", cfg.concurrency, worker, n)
			return 1, post(ctx, connections[worker], key, n+worker)
		}, closeAll, nil
	}
	return func(ctx context.Context, worker, n int) (int, error) {
		for i := range cfg.size { // One database transaction per transfer, like the ledger's results.
			key := fmt.Sprintf("b%dx%d-%d-%d-%d", cfg.size, cfg.concurrency, worker, n, i)
			if err := post(ctx, connections[worker], key, n*cfg.size+i); err != nil {
				return i, err
			}
		}
		return cfg.size, nil
	}, closeAll, nil
}

// errorKind names a failed call as bench_api.py does: the gRPC status code name, or the error's type.
func errorKind(err error) string {
	if code, ok := status.FromError(err); ok {
		return strings.ToUpper(code.Code().String())
	}
	return fmt.Sprintf("%T", err)
}

func runClosed(cfg closedConfig) error {
	var (
		caller  call
		release func()
		err     error
	)
	if cfg.dsn != "" {
		caller, release, err = postgresCaller(cfg)
	} else {
		caller, release, err = grpcCaller(cfg)
	}
	if err != nil {
		return err
	}
	defer release()
	if err := awaitStart(); err != nil {
		return err
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+cfg.token)
	var (
		mu        sync.Mutex
		latencies = []float64{}
		done      int
		errors    = map[string]int{}
		workers   sync.WaitGroup
	)
	started := time.Now()
	stopAt := started.Add(cfg.seconds)
	for worker := range cfg.concurrency {
		workers.Go(func() {
			mine := make([]float64, 0, 1024)
			acknowledged := 0
			failures := map[string]int{}
			for n := 0; time.Now().Before(stopAt); n++ {
				callStarted := time.Now()
				count, callErr := caller(ctx, worker, n)
				mine = append(mine, time.Since(callStarted).Seconds())
				if callErr != nil {
					failures[errorKind(callErr)]++
					continue
				}
				acknowledged += count
			}
			mu.Lock()
			defer mu.Unlock()
			latencies, done = append(latencies, mine...), done+acknowledged
			for kind, count := range failures {
				errors[kind] += count
			}
		})
	}
	workers.Wait()
	return report(map[string]any{
		"latencies": latencies, "done": done, "errors": errors, "elapsed_seconds": time.Since(started).Seconds(),
	})
}
