// Package store keeps the fleet server's records in SQL: sites, devices,
// releases, rollouts, assignments and device reports.
//
// One schema, applied by embedded migrations, runs unchanged on SQLite
// (mattn/go-sqlite3, WAL) and PostgreSQL (pgx). Queries are written with '?'
// placeholders and rebound to $N for PostgreSQL. IDs are text made by the
// server, and times are stored as fixed-width UTC text (timeLayout), which
// sorts in time order on both databases.
//
// A Store is safe for concurrent use.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	_ "github.com/mattn/go-sqlite3"    // registers the "sqlite3" driver

	"github.com/aftercare/aftercare/server/internal/problem"
)

//go:embed migrations/*.sql
var migrations embed.FS

// timeLayout is how times are stored: UTC, fixed width, so text order is
// time order.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// Store is the fleet server's database.
type Store struct {
	db       *sql.DB
	postgres bool
}

// Open connects to the database named by dbURL and applies pending
// migrations. dbURL is "sqlite:///path/to/file.db" (or "sqlite:relative.db")
// or "postgres://user@host/db?...".
func Open(ctx context.Context, dbURL string) (*Store, error) {
	driver, dsn, err := parseURL(dbURL)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	s := &Store{db: db, postgres: driver == "pgx"}
	if !s.postgres {
		// One writer at a time is SQLite's model; more connections only
		// queue on its lock. Readers use the same pool under WAL.
		db.SetMaxOpenConns(4)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	// Replicas starting together migrate one after the other.
	if err := s.Exclusive(ctx, "store.migrate", func() error { return s.migrate(ctx) }); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func parseURL(dbURL string) (driver, dsn string, err error) {
	switch {
	case strings.HasPrefix(dbURL, "postgres://"), strings.HasPrefix(dbURL, "postgresql://"):
		return "pgx", dbURL, nil
	case strings.HasPrefix(dbURL, "sqlite:"):
		p := strings.TrimPrefix(strings.TrimPrefix(dbURL, "sqlite:"), "//")
		if p == "" {
			return "", "", fmt.Errorf("database URL %q names no file", dbURL)
		}
		q := url.Values{}
		q.Set("_journal_mode", "WAL")
		q.Set("_busy_timeout", "10000")
		q.Set("_foreign_keys", "on")
		q.Set("_synchronous", "FULL")
		// BEGIN IMMEDIATE takes the write lock up front, so two writers
		// never deadlock upgrading read locks.
		q.Set("_txlock", "immediate")
		return "sqlite3", "file:" + p + "?" + q.Encode(), nil
	}
	return "", "", fmt.Errorf("database URL %q must start with sqlite: or postgres://", dbURL)
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Postgres reports whether the store runs on PostgreSQL.
func (s *Store) Postgres() bool { return s.postgres }

// rebind turns '?' placeholders into $1, $2, ... for PostgreSQL.
func (s *Store) rebind(q string) string {
	if !s.postgres {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// tx runs fn in a transaction, committing when it returns nil.
func (s *Store) tx(ctx context.Context, fn func(q *txq) error) error {
	t, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(&txq{s: s, q: t}); err != nil {
		t.Rollback()
		return err
	}
	if err := t.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// txq runs rebound queries on a transaction or the database.
type txq struct {
	s     *Store
	q     querier
	stmts map[string]*sql.Stmt // execRepeated's, closed with the transaction
}

func (t *txq) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.q.ExecContext(ctx, t.s.rebind(query), args...)
}

// execRepeated is exec for a statement one transaction runs many times
// (as for a group of reports): it is prepared once, in the transaction,
// and closed with it. Outside a transaction it is exec.
func (t *txq) execRepeated(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, ok := t.stmts[query]
	if !ok {
		if _, inTx := t.q.(*sql.Tx); !inTx {
			return t.exec(ctx, query, args...)
		}
		var err error
		if st, err = t.q.PrepareContext(ctx, t.s.rebind(query)); err != nil {
			return nil, err
		}
		if t.stmts == nil {
			t.stmts = map[string]*sql.Stmt{}
		}
		t.stmts[query] = st
	}
	return st.ExecContext(ctx, args...)
}

func (t *txq) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return t.q.QueryContext(ctx, t.s.rebind(query), args...)
}

func (t *txq) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return t.q.QueryRowContext(ctx, t.s.rebind(query), args...)
}

// direct runs queries outside a transaction.
func (s *Store) direct() *txq { return &txq{s: s, q: s.db} }

// collect scans every row of rows with scan, then closes rows.
func collect[T any](rows *sql.Rows, scan func(interface{ Scan(...any) error }) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// scanString scans a row of one text column; with collect it reads such a
// query into a []string.
func scanString(sc interface{ Scan(...any) error }) (string, error) {
	var v string
	err := sc.Scan(&v)
	return v, err
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		version, err := strconv.Atoi(strings.SplitN(path.Base(name), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", name)
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		err = s.tx(ctx, func(q *txq) error {
			var n int
			if err := q.queryRow(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			for _, stmt := range splitStatements(string(body)) {
				if _, err := q.exec(ctx, stmt); err != nil {
					return fmt.Errorf("migration %s: %w", name, err)
				}
			}
			_, err := q.exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, version, formatTime(time.Now()))
			return err
		})
		if err != nil {
			return fmt.Errorf("apply migrations: %w", err)
		}
	}
	return nil
}

// splitStatements splits a migration at semicolons that end a line. The
// migrations hold no semicolons inside literals.
func splitStatements(body string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		cur.WriteString(line + "\n")
		if strings.HasSuffix(strings.TrimSpace(line), ";") {
			if stmt := strings.TrimSpace(cur.String()); stmt != ";" {
				out = append(out, stmt)
			}
			cur.Reset()
		}
	}
	if stmt := strings.TrimSpace(cur.String()); stmt != "" {
		out = append(out, stmt)
	}
	return out
}

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(timeLayout, s)
	return t
}

func parseNullTime(s sql.NullString) time.Time {
	if !s.Valid {
		return time.Time{}
	}
	return parseTime(s.String)
}

// isUniqueViolation reports whether err is a unique-constraint failure on
// either database.
func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed") || strings.Contains(msg, "SQLSTATE 23505")
}

// notFound maps sql.ErrNoRows to problem.ErrNotFound with a description.
func notFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, problem.ErrNotFound)
	}
	return err
}
