package store

import "database/sql"

// DB exposes the connection pool to tests that tamper with rows directly.
func (s *Store) DB() *sql.DB { return s.db }

// Rebind exposes placeholder rebinding to such tests.
func (s *Store) Rebind(q string) string { return s.rebind(q) }

// ParseURL exposes the driver and DSN of a database URL to tests.
func ParseURL(dbURL string) (driver, dsn string, err error) { return parseURL(dbURL) }
