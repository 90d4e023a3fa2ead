// Command sqlclient_go runs, through clickhouse-go v2 over HTTP (the client library of Grafana's ClickHouse
// data source, opened the way the data source opens it: clickhouse.OpenDB, database/sql), the queries the
// data source runs against the ledger's SQL endpoint (facade/api/sql.py): its health check (Ping, SELECT 1),
// the server version and time zone, the tables and columns for its query builder, a typed select of
// entries (UInt128, Int256, DateTime64(9), Map(String, String), Enum8, LowCardinality) and a parameterised
// query; then the same entries through the driver's own API (clickhouse.Open, Conn.Select). It prints one JSON document on stdout (wide integers as decimal strings, times as RFC 3339 with
// nanoseconds) for tests/api/test_sql_go_client.py to compare with the engine; any error exits 1 with the
// error on stderr.
//
// Usage: LEDGER_SQL_PASSWORD=<token> sqlclient_go -addr 127.0.0.1:8123 -database ledger -compression lz4
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// queryTimeout bounds every query (the endpoint's own limit is 60 s).
const queryTimeout = 60 * time.Second

// nanoLayout is RFC 3339 with nine fraction digits, as the service writes times.
const nanoLayout = "2006-01-02T15:04:05.000000000Z07:00"

// entriesMax bounds the typed select: the tests post a handful of transactions.
const entriesMax = 1000

type entry struct {
	EventID      string            `json:"event_id"`
	Timestamp    string            `json:"engine_timestamp"`
	Change       string            `json:"change"`
	Side         string            `json:"side"`
	AccountID    string            `json:"account_id"`
	Amount       string            `json:"amount"`
	SignedAmount string            `json:"signed_amount"`
	Currency     string            `json:"currency"`
	EngineTime   string            `json:"engine_time"`
	Labels       map[string]string `json:"labels"`
}

type column struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type report struct {
	One           uint8             `json:"one"`
	Version       string            `json:"version"`
	Timezone      string            `json:"timezone"`
	Tables        []string          `json:"tables"`
	EntryColumns  []column          `json:"entry_columns"`
	ResultTypes   map[string]string `json:"result_types"`
	Entries       []entry           `json:"entries"`
	AccountID     string            `json:"account_id"`
	AccountCount  uint64            `json:"account_entries"`
	AccountSum    string            `json:"account_signed_sum"`
	PositionalMin string            `json:"positional_amount_min"`
	PositionalN   uint64            `json:"positional_entries"`
	NativeAPI     []entry           `json:"native_api_entries"`
	WriteRefused  string            `json:"write_refused"`
}

// nativeEntry is one entries row as clickhouse.Conn.Select fills it (the driver's own API, by `ch` tags).
type nativeEntry struct {
	EventID      string            `ch:"event_id"`
	Timestamp    uint64            `ch:"engine_timestamp"`
	Change       string            `ch:"change"`
	Side         string            `ch:"side"`
	AccountID    big.Int           `ch:"account_id"`
	Amount       big.Int           `ch:"amount"`
	SignedAmount big.Int           `ch:"signed_amount"`
	Currency     string            `ch:"currency"`
	EngineTime   time.Time         `ch:"engine_time"`
	Labels       map[string]string `ch:"labels"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8123", "host:port of the SQL endpoint")
	database := flag.String("database", "ledger", "the read model's database")
	compression := flag.String("compression", "none", "none, lz4, zstd, gzip or deflate")
	flag.Parse()
	if err := run(*addr, *database, *compression, os.Getenv("LEDGER_SQL_PASSWORD")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func compressionOf(name string) (*clickhouse.Compression, error) {
	methods := map[string]clickhouse.CompressionMethod{
		"none":    clickhouse.CompressionNone,
		"lz4":     clickhouse.CompressionLZ4,
		"zstd":    clickhouse.CompressionZSTD,
		"gzip":    clickhouse.CompressionGZIP,
		"deflate": clickhouse.CompressionDeflate,
	}
	method, ok := methods[name]
	if !ok {
		return nil, fmt.Errorf("unknown compression %q", name)
	}
	return &clickhouse.Compression{Method: method}, nil
}

func run(addr, database, compressionName, password string) error {
	compression, err := compressionOf(compressionName)
	if err != nil {
		return err
	}
	db := clickhouse.OpenDB(&clickhouse.Options{
		Protocol:    clickhouse.HTTP,
		Addr:        []string{addr},
		Auth:        clickhouse.Auth{Database: database, Username: "default", Password: password},
		Compression: compression,
		DialTimeout: queryTimeout,
		ReadTimeout: queryTimeout,
	})
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*queryTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	var out report
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&out.One); err != nil {
		return fmt.Errorf("SELECT 1: %w", err)
	}
	if err := db.QueryRowContext(ctx, "SELECT version()").Scan(&out.Version); err != nil {
		return fmt.Errorf("SELECT version(): %w", err)
	}
	if err := db.QueryRowContext(ctx, "SELECT timezone()").Scan(&out.Timezone); err != nil {
		return fmt.Errorf("SELECT timezone(): %w", err)
	}
	if out.Tables, err = strings(ctx, db, "SHOW TABLES"); err != nil {
		return err
	}
	if out.EntryColumns, err = columns(ctx, db); err != nil {
		return err
	}
	if out.Entries, out.ResultTypes, err = entries(ctx, db); err != nil {
		return err
	}
	// A write must be refused, and the driver must report the endpoint's ClickHouse error as one.
	if _, err := db.ExecContext(ctx, "DROP TABLE entries"); err != nil {
		out.WriteRefused = err.Error()
	}
	if out.NativeAPI, err = nativeAPI(ctx, addr, database, password, compression); err != nil {
		return err
	}
	if len(out.Entries) > 0 { // Nothing projected yet: the caller asks again.
		if err := byAccount(ctx, db, &out); err != nil {
			return err
		}
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetIndent("", " ")
	return encoder.Encode(out)
}

// byAccount runs the parameterised queries on the first entry's account.
func byAccount(ctx context.Context, db *sql.DB, out *report) error {
	out.AccountID = out.Entries[0].AccountID
	// Server-side parameters ({name:Type}, sent as param_<name>), as the data source's query editor sends them.
	named := clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters{"account": out.AccountID}))
	var sum big.Int
	row := db.QueryRowContext(named,
		"SELECT count(), toString(sum(signed_amount)) FROM entries WHERE account_id = {account:UInt128}")
	var sumText string
	if err := row.Scan(&out.AccountCount, &sumText); err != nil {
		return fmt.Errorf("parameterised query: %w", err)
	}
	if _, ok := sum.SetString(sumText, 10); !ok {
		return fmt.Errorf("sum %q is not an integer", sumText)
	}
	out.AccountSum = sum.String()
	// Client-side binding (`?`), which database/sql callers use.
	out.PositionalMin = "200"
	if err := db.QueryRowContext(ctx, "SELECT count() FROM entries WHERE amount >= ?", 200).Scan(&out.PositionalN); err != nil {
		return fmt.Errorf("positional query: %w", err)
	}
	return nil
}

// nativeAPI reads the entries again through clickhouse.Open (the driver's own API, not database/sql).
func nativeAPI(ctx context.Context, addr, database, password string, compression *clickhouse.Compression) ([]entry, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol:    clickhouse.HTTP,
		Addr:        []string{addr},
		Auth:        clickhouse.Auth{Database: database, Username: "default", Password: password},
		Compression: compression,
		DialTimeout: queryTimeout,
		ReadTimeout: queryTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse.Open: %w", err)
	}
	defer conn.Close()
	var rows []nativeEntry
	if err := conn.Select(ctx, &rows, fmt.Sprintf(
		"SELECT event_id, engine_timestamp, change, side, account_id, amount, signed_amount, currency, engine_time, labels "+
			"FROM entries ORDER BY engine_timestamp, side LIMIT %d", entriesMax)); err != nil {
		return nil, fmt.Errorf("clickhouse.Conn.Select: %w", err)
	}
	found := []entry{}
	for _, row := range rows {
		found = append(found, entry{
			EventID: row.EventID, Timestamp: fmt.Sprint(row.Timestamp), Change: row.Change, Side: row.Side,
			AccountID: row.AccountID.String(), Amount: row.Amount.String(), SignedAmount: row.SignedAmount.String(),
			Currency: row.Currency, EngineTime: row.EngineTime.UTC().Format(nanoLayout), Labels: row.Labels,
		})
	}
	return found, nil
}

func strings(ctx context.Context, db *sql.DB, query string) ([]string, error) {
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", query, err)
	}
	defer rows.Close()
	found := []string{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		found = append(found, name)
	}
	return found, rows.Err()
}

func columns(ctx context.Context, db *sql.DB) ([]column, error) {
	rows, err := db.QueryContext(ctx,
		"SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'entries' ORDER BY position")
	if err != nil {
		return nil, fmt.Errorf("system.columns: %w", err)
	}
	defer rows.Close()
	found := []column{}
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.Name, &c.Type); err != nil {
			return nil, err
		}
		found = append(found, c)
	}
	return found, rows.Err()
}

func entries(ctx context.Context, db *sql.DB) ([]entry, map[string]string, error) {
	rows, err := db.QueryContext(ctx, fmt.Sprintf(
		"SELECT event_id, engine_timestamp, change, side, account_id, amount, signed_amount, currency, engine_time, labels "+
			"FROM entries ORDER BY engine_timestamp, side LIMIT %d", entriesMax))
	if err != nil {
		return nil, nil, fmt.Errorf("entries: %w", err)
	}
	defer rows.Close()
	kinds, err := rows.ColumnTypes()
	if err != nil {
		return nil, nil, err
	}
	types := map[string]string{}
	for _, kind := range kinds {
		types[kind.Name()] = kind.DatabaseTypeName()
	}
	found := []entry{}
	for rows.Next() {
		var e entry
		var timestamp uint64
		var account, amount, signed big.Int
		var when time.Time
		if err := rows.Scan(&e.EventID, &timestamp, &e.Change, &e.Side, &account, &amount, &signed, &e.Currency,
			&when, &e.Labels); err != nil {
			return nil, nil, fmt.Errorf("entries row: %w", err)
		}
		e.Timestamp = fmt.Sprint(timestamp)
		e.AccountID, e.Amount, e.SignedAmount = account.String(), amount.String(), signed.String()
		e.EngineTime = when.UTC().Format(nanoLayout)
		found = append(found, e)
	}
	return found, types, rows.Err()
}
