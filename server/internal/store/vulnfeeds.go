package store

import (
	"context"
	"database/sql"
	"time"
)

// A Feed is the state of one vulnerability feed: its last good import and
// its last attempt.
type Feed struct {
	Name          string    `json:"name"` // "osv", "osv:Alpine", "nvd", "kev", "epss"
	Kind          string    `json:"kind"` // osv, nvd, kev, epss
	Source        string    `json:"source"`
	Records       int       `json:"records"`
	SHA256        string    `json:"sha256"`
	Version       string    `json:"version,omitempty"` // KEV catalog version, EPSS score date
	ImportedAt    time.Time `json:"imported_at,omitzero"`
	ETag          string    `json:"etag,omitempty"`
	LastModified  string    `json:"last_modified,omitempty"`
	LastAttemptAt time.Time `json:"last_attempt_at,omitzero"`
	LastError     string    `json:"last_error,omitempty"` // "" when the last attempt succeeded
}

// A StoredAdvisory is an advisory as the store keeps it: its data is the
// vuln package's JSON, opaque here.
type StoredAdvisory struct {
	Source   string
	ID       string
	Modified time.Time
	Data     []byte
	Keys     []string // lookup keys
	CVEs     []string
}

// A KEVEntry is one CISA KEV entry.
type KEVEntry struct {
	CVE        string `json:"cve"`
	Name       string `json:"name"`
	DateAdded  string `json:"date_added"`
	DueDate    string `json:"due_date"`
	Ransomware string `json:"ransomware_use"`
}

// An EPSSScore is one CVE's EPSS score.
type EPSSScore struct {
	CVE        string  `json:"cve"`
	Score      float64 `json:"score"`
	Percentile float64 `json:"percentile"`
}

// ImportAdvisories stores advisories (replacing those with the same source
// and ID) and records the feed's successful import, in one transaction.
func (s *Store) ImportAdvisories(ctx context.Context, f Feed, advs []StoredAdvisory) error {
	return s.tx(ctx, func(q *txq) error {
		bySource := map[string][]string{}
		for _, a := range advs {
			bySource[a.Source] = append(bySource[a.Source], a.ID)
		}
		for source, ids := range bySource {
			for _, table := range []string{"advisories", "advisory_keys", "advisory_cves"} {
				for start := 0; start < len(ids); start += 500 {
					part := ids[start:min(start+500, len(ids))]
					if _, err := q.exec(ctx, `DELETE FROM `+table+` WHERE source = ? AND id IN (`+placeholders(len(part))+`)`,
						appendAll([]any{source}, part)...); err != nil {
						return err
					}
				}
			}
		}
		var rows, keys, cves [][]any
		for _, a := range advs {
			rows = append(rows, []any{a.Source, a.ID, formatTime(a.Modified), string(a.Data)})
			for _, k := range a.Keys {
				keys = append(keys, []any{k, a.Source, a.ID})
			}
			for _, c := range a.CVEs {
				cves = append(cves, []any{c, a.Source, a.ID})
			}
		}
		if err := q.insertRows(ctx, `INSERT INTO advisories (source, id, modified, data) VALUES `, 4, rows); err != nil {
			return err
		}
		if err := q.insertRows(ctx, `INSERT INTO advisory_keys (lookup, source, id) VALUES `, 3, keys); err != nil {
			return err
		}
		if err := q.insertRows(ctx, `INSERT INTO advisory_cves (cve, source, id) VALUES `, 3, cves); err != nil {
			return err
		}
		return q.putFeed(ctx, f)
	})
}

// ImportKEV replaces the KEV catalog and records the feed, in one
// transaction.
func (s *Store) ImportKEV(ctx context.Context, f Feed, entries []KEVEntry) error {
	return s.tx(ctx, func(q *txq) error {
		if _, err := q.exec(ctx, `DELETE FROM kev`); err != nil {
			return err
		}
		rows := make([][]any, len(entries))
		for i, e := range entries {
			rows[i] = []any{e.CVE, e.Name, e.DateAdded, e.DueDate, e.Ransomware}
		}
		if err := q.insertRows(ctx, `INSERT INTO kev (cve, name, date_added, due_date, ransomware) VALUES `, 5, dedupeRows(rows)); err != nil {
			return err
		}
		return q.putFeed(ctx, f)
	})
}

// ImportEPSS replaces the EPSS scores and records the feed, in one
// transaction.
func (s *Store) ImportEPSS(ctx context.Context, f Feed, scores []EPSSScore) error {
	return s.tx(ctx, func(q *txq) error {
		if _, err := q.exec(ctx, `DELETE FROM epss`); err != nil {
			return err
		}
		rows := make([][]any, len(scores))
		for i, e := range scores {
			rows[i] = []any{e.CVE, e.Score, e.Percentile}
		}
		if err := q.insertRows(ctx, `INSERT INTO epss (cve, score, percentile) VALUES `, 3, dedupeRows(rows)); err != nil {
			return err
		}
		return q.putFeed(ctx, f)
	})
}

// dedupeRows keeps the last row of each first-column key, so a feed that
// lists a CVE twice does not break the primary key.
func dedupeRows(rows [][]any) [][]any {
	seen := make(map[any]int, len(rows))
	out := rows[:0]
	for _, r := range rows {
		if i, ok := seen[r[0]]; ok {
			out[i] = r
			continue
		}
		seen[r[0]] = len(out)
		out = append(out, r)
	}
	return out
}

func (q *txq) putFeed(ctx context.Context, f Feed) error {
	_, err := q.exec(ctx, `INSERT INTO feeds (name, kind, source, records, sha256, version, imported_at, etag, last_modified, last_attempt_at, last_error)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')
		ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, source = excluded.source, records = excluded.records, sha256 = excluded.sha256,
			version = excluded.version, imported_at = excluded.imported_at, etag = excluded.etag, last_modified = excluded.last_modified,
			last_attempt_at = excluded.last_attempt_at, last_error = ''`,
		f.Name, f.Kind, f.Source, f.Records, f.SHA256, f.Version, formatTime(f.ImportedAt), f.ETag, f.LastModified, formatTime(f.ImportedAt))
	return err
}

// RecordFeedAttempt records an attempt to refresh a feed that did not
// import anything: errMsg says why ("" for "not modified"). The last good
// import stays as it was.
func (s *Store) RecordFeedAttempt(ctx context.Context, name, kind, errMsg string, at time.Time) error {
	_, err := s.direct().exec(ctx, `INSERT INTO feeds (name, kind, source, records, sha256, version, etag, last_modified, last_attempt_at, last_error)
		VALUES (?, ?, '', 0, '', '', '', '', ?, ?)
		ON CONFLICT (name) DO UPDATE SET last_attempt_at = excluded.last_attempt_at, last_error = excluded.last_error`,
		name, kind, formatTime(at), errMsg)
	return err
}

// Feeds returns every feed's state, by name.
func (s *Store) Feeds(ctx context.Context) ([]Feed, error) {
	rows, err := s.direct().query(ctx, `SELECT name, kind, source, records, sha256, version, imported_at, etag, last_modified, last_attempt_at, last_error FROM feeds ORDER BY name`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (Feed, error) {
		var f Feed
		var imported, attempt sql.NullString
		err := sc.Scan(&f.Name, &f.Kind, &f.Source, &f.Records, &f.SHA256, &f.Version, &imported, &f.ETag, &f.LastModified, &attempt, &f.LastError)
		f.ImportedAt, f.LastAttemptAt = parseNullTime(imported), parseNullTime(attempt)
		return f, err
	})
}

// AdvisoriesByKeys returns the data of every advisory found under one of
// keys, each once.
func (s *Store) AdvisoriesByKeys(ctx context.Context, keys []string) ([]StoredAdvisory, error) {
	var out []StoredAdvisory
	seen := map[[2]string]bool{}
	const batch = 500
	for start := 0; start < len(keys); start += batch {
		part := keys[start:min(start+batch, len(keys))]
		rows, err := s.direct().query(ctx, `SELECT a.source, a.id, a.modified, a.data FROM advisories a
			JOIN advisory_keys k ON k.source = a.source AND k.id = a.id WHERE k.lookup IN (`+placeholders(len(part))+`)`, appendAll(nil, part)...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var a StoredAdvisory
			var modified, data string
			if err := rows.Scan(&a.Source, &a.ID, &modified, &data); err != nil {
				rows.Close()
				return nil, err
			}
			if seen[[2]string{a.Source, a.ID}] {
				continue
			}
			seen[[2]string{a.Source, a.ID}] = true
			a.Modified, a.Data = parseTime(modified), []byte(data)
			out = append(out, a)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// AdvisoriesByCVE returns the advisories that describe a CVE (or have it as
// their ID).
func (s *Store) AdvisoriesByCVE(ctx context.Context, cve string) ([]StoredAdvisory, error) {
	rows, err := s.direct().query(ctx, `SELECT a.source, a.id, a.modified, a.data FROM advisories a
		WHERE a.id = ? OR EXISTS (SELECT 1 FROM advisory_cves c WHERE c.source = a.source AND c.id = a.id AND c.cve = ?) ORDER BY a.source, a.id`, cve, cve)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (StoredAdvisory, error) {
		var a StoredAdvisory
		var modified, data string
		err := sc.Scan(&a.Source, &a.ID, &modified, &data)
		a.Modified, a.Data = parseTime(modified), []byte(data)
		return a, err
	})
}

// KEVFor returns the KEV entries of the given CVEs.
func (s *Store) KEVFor(ctx context.Context, cves []string) (map[string]KEVEntry, error) {
	out := map[string]KEVEntry{}
	err := s.eachBatch(ctx, cves, `SELECT cve, name, date_added, due_date, ransomware FROM kev WHERE cve IN `, func(rows *sql.Rows) error {
		var e KEVEntry
		if err := rows.Scan(&e.CVE, &e.Name, &e.DateAdded, &e.DueDate, &e.Ransomware); err != nil {
			return err
		}
		out[e.CVE] = e
		return nil
	})
	return out, err
}

// EPSSFor returns the EPSS scores of the given CVEs.
func (s *Store) EPSSFor(ctx context.Context, cves []string) (map[string]EPSSScore, error) {
	out := map[string]EPSSScore{}
	err := s.eachBatch(ctx, cves, `SELECT cve, score, percentile FROM epss WHERE cve IN `, func(rows *sql.Rows) error {
		var e EPSSScore
		if err := rows.Scan(&e.CVE, &e.Score, &e.Percentile); err != nil {
			return err
		}
		out[e.CVE] = e
		return nil
	})
	return out, err
}

// eachBatch runs query + "(?, ?, ...)" over ids in batches and calls fn per row.
func (s *Store) eachBatch(ctx context.Context, ids []string, query string, fn func(*sql.Rows) error) error {
	const batch = 500
	for start := 0; start < len(ids); start += batch {
		part := ids[start:min(start+batch, len(ids))]
		rows, err := s.direct().query(ctx, query+`(`+placeholders(len(part))+`)`, appendAll(nil, part)...)
		if err != nil {
			return err
		}
		for rows.Next() {
			if err := fn(rows); err != nil {
				rows.Close()
				return err
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}
