package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// TableDigests returns a SHA-256 over the rows of every table (sorted, so
// row order does not matter), by table name. Tests use it to show that a
// refused request changed nothing.
func (s *Store) TableDigests(ctx context.Context) (map[string]string, error) {
	list := `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`
	if s.postgres {
		list = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`
	}
	tables, err := s.queryStrings(ctx, list)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	out := map[string]string{}
	for _, table := range tables {
		d, err := s.tableDigest(ctx, table)
		if err != nil {
			return nil, err
		}
		out[table] = d
	}
	return out, nil
}

func (s *Store) tableDigest(ctx context.Context, table string) (string, error) {
	// table comes from the catalogue, not from a caller.
	rows, err := s.db.QueryContext(ctx, `SELECT * FROM `+table)
	if err != nil {
		return "", fmt.Errorf("digest table %s: %w", table, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return "", err
	}
	var lines []string
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return "", fmt.Errorf("digest table %s: %w", table, err)
		}
		var b strings.Builder
		for _, v := range vals {
			fmt.Fprintf(&b, "%t:%q,", v.Valid, v.String)
		}
		lines = append(lines, b.String())
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	slices.Sort(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
