// Package storetest runs store tests against every database the store
// supports: SQLite in a temporary directory always, and PostgreSQL when it
// is reachable (AFTERCARE_TEST_POSTGRES, default the local server's "test"
// database), each test in a schema of its own that is dropped afterwards.
package storetest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/aftercare/aftercare/internal/testenv"
	"github.com/aftercare/aftercare/server/internal/store"
)

// ForEach runs fn as a subtest on SQLite and on PostgreSQL.
func ForEach(t *testing.T, fn func(t *testing.T, s *store.Store)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLite(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, Postgres(t)) })
}

// SQLiteURL returns a database URL for a new SQLite file in a temporary
// directory.
func SQLiteURL(t testing.TB) string {
	return "sqlite://" + filepath.Join(t.TempDir(), "test.db")
}

// SQLite opens a store on a new SQLite file.
func SQLite(t testing.TB) *store.Store {
	t.Helper()
	return open(t, SQLiteURL(t))
}

// PostgresURL creates a schema of its own for t and returns a URL that uses
// it; the schema is dropped when t ends. It skips (fails under CI) when
// PostgreSQL is not reachable.
func PostgresURL(t testing.TB) string {
	t.Helper()
	return testenv.PostgresSchema(t)
}

// Postgres opens a store on a schema of its own in PostgreSQL.
func Postgres(t testing.TB) *store.Store {
	t.Helper()
	return open(t, PostgresURL(t))
}

func open(t testing.TB, dbURL string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ForEachURL runs fn as a subtest with the URL of a new, empty database on
// SQLite and on PostgreSQL, for tests that open several stores (several
// connection pools, as several server replicas would) on one database.
func ForEachURL(t *testing.T, fn func(t *testing.T, dbURL string)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLiteURL(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, PostgresURL(t)) })
}

// Open opens a store on dbURL, closed when t ends.
func Open(t testing.TB, dbURL string) *store.Store {
	t.Helper()
	return open(t, dbURL)
}
