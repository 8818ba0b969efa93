package testenv

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to make the schema
)

// DefaultPostgres is the test PostgreSQL when AFTERCARE_TEST_POSTGRES is
// unset: the local server's "test" database.
const DefaultPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// PostgresSchema creates a schema of its own for t in the test PostgreSQL
// (AFTERCARE_TEST_POSTGRES) and returns a URL that uses it; the schema is
// dropped when t ends. It skips t, or fails it under CI, when PostgreSQL
// is not reachable.
func PostgresSchema(t testing.TB) string {
	t.Helper()
	base := Getenv("AFTERCARE_TEST_POSTGRES", DefaultPostgres)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("AFTERCARE_TEST_POSTGRES: %v", err)
	}
	Need(t, "PostgreSQL", u.Host, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	b := make([]byte, 6)
	rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		Missing(t, "PostgreSQL at "+u.Host+" refused CREATE SCHEMA: "+err.Error())
	}
	t.Cleanup(func() {
		if admin, err := sql.Open("pgx", base); err == nil {
			admin.Exec("DROP SCHEMA " + schema + " CASCADE")
			admin.Close()
		}
	})
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
