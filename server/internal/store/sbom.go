package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// A ReleaseSBOM records the ingestion of a release's SBOM.
type ReleaseSBOM struct {
	ReleaseID   string    `json:"release_id"`
	Format      string    `json:"format"`
	SpecVersion string    `json:"spec_version"`
	SHA256      string    `json:"sha256"`
	Components  int       `json:"components"`
	Warnings    []string  `json:"warnings"`
	Error       string    `json:"error,omitempty"` // why it could not be ingested
	IngestedAt  time.Time `json:"ingested_at"`
}

// An SBOMComponent is one component of a release's SBOM.
type SBOMComponent struct {
	ReleaseID string   `json:"release_id"`
	Index     int      `json:"index"`
	Ref       string   `json:"ref"`
	Name      string   `json:"name"`
	Version   string   `json:"version"`
	PURL      string   `json:"purl,omitempty"`
	CPEs      []string `json:"cpes,omitempty"`
	Patched   []string `json:"patched,omitempty"`
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("store: marshal %T: %v", v, err)) // only plain types are marshalled
	}
	return string(b)
}

func fromJSONText(s string, v any) error {
	if s == "" {
		return nil
	}
	return json.Unmarshal([]byte(s), v)
}

// PutReleaseSBOM records a release's SBOM and its components, replacing
// any earlier record, and the models the release is for, in one
// transaction.
func (s *Store) PutReleaseSBOM(ctx context.Context, r ReleaseSBOM, models []string, comps []SBOMComponent) error {
	return s.tx(ctx, func(q *txq) error {
		if _, err := q.exec(ctx, `DELETE FROM sbom_components WHERE release_id = ?`, r.ReleaseID); err != nil {
			return err
		}
		if _, err := q.exec(ctx, `DELETE FROM release_sboms WHERE release_id = ?`, r.ReleaseID); err != nil {
			return err
		}
		if _, err := q.exec(ctx, `INSERT INTO release_sboms (release_id, format, spec_version, sha256, components, warnings, error, ingested_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, r.ReleaseID, r.Format, r.SpecVersion, r.SHA256, len(comps), jsonText(nonNilStrings(r.Warnings)), r.Error, formatTime(r.IngestedAt)); err != nil {
			return err
		}
		if err := q.putReleaseModels(ctx, r.ReleaseID, models); err != nil {
			return err
		}
		rows := make([][]any, len(comps))
		for i, c := range comps {
			rows[i] = []any{r.ReleaseID, i, c.Ref, c.Name, c.Version, c.PURL, jsonText(nonNilStrings(c.CPEs)), jsonText(nonNilStrings(c.Patched))}
		}
		return q.insertRows(ctx, `INSERT INTO sbom_components (release_id, idx, ref, name, version, purl, cpes, patched) VALUES `, 8, rows)
	})
}

func (q *txq) putReleaseModels(ctx context.Context, releaseID string, models []string) error {
	if _, err := q.exec(ctx, `DELETE FROM release_models WHERE release_id = ?`, releaseID); err != nil {
		return err
	}
	for _, m := range models {
		if _, err := q.exec(ctx, `INSERT INTO release_models (release_id, model) VALUES (?, ?)`, releaseID, m); err != nil {
			return err
		}
	}
	return nil
}

// insertRows inserts rows of width columns with multi-row VALUES
// statements, a few hundred rows at a time.
func (q *txq) insertRows(ctx context.Context, prefix string, width int, rows [][]any) error {
	const batch = 400 // 400 * 8 columns stays under SQLite's 32766 variables
	one := "(" + placeholders(width) + ")"
	for start := 0; start < len(rows); start += batch {
		end := min(start+batch, len(rows))
		var sb []byte
		args := make([]any, 0, (end-start)*width)
		for i, r := range rows[start:end] {
			if i > 0 {
				sb = append(sb, ", "...)
			}
			sb = append(sb, one...)
			args = append(args, r...)
		}
		if _, err := q.exec(ctx, prefix+string(sb), args...); err != nil {
			return err
		}
	}
	return nil
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// ReleaseSBOM returns the SBOM record of a release.
func (s *Store) ReleaseSBOM(ctx context.Context, releaseID string) (ReleaseSBOM, error) {
	var r ReleaseSBOM
	var warnings, at string
	err := s.direct().queryRow(ctx, `SELECT release_id, format, spec_version, sha256, components, warnings, error, ingested_at
		FROM release_sboms WHERE release_id = ?`, releaseID).Scan(&r.ReleaseID, &r.Format, &r.SpecVersion, &r.SHA256, &r.Components, &warnings, &r.Error, &at)
	if err != nil {
		return r, notFound(err, fmt.Sprintf("SBOM of release %q", releaseID))
	}
	r.IngestedAt = parseTime(at)
	return r, fromJSONText(warnings, &r.Warnings)
}

// ReleasesWithoutSBOMRecord returns the releases whose SBOM has not been
// ingested (nor failed to be), oldest first.
func (s *Store) ReleasesWithoutSBOMRecord(ctx context.Context) ([]Release, error) {
	rows, err := s.direct().query(ctx, `SELECT `+releaseColumns+` FROM releases r
		WHERE NOT EXISTS (SELECT 1 FROM release_sboms b WHERE b.release_id = r.id) ORDER BY r.created_at, r.id`)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanRelease)
}

// SBOMComponents calls fn for every component of the given releases (all
// releases when releaseIDs is nil), by release and index.
func (s *Store) SBOMComponents(ctx context.Context, releaseIDs []string, fn func(SBOMComponent) error) error {
	q := `SELECT release_id, idx, ref, name, version, purl, cpes, patched FROM sbom_components`
	var args []any
	if releaseIDs != nil {
		if len(releaseIDs) == 0 {
			return nil
		}
		q += ` WHERE release_id IN (` + placeholders(len(releaseIDs)) + `)`
		args = appendAll(args, releaseIDs)
	}
	rows, err := s.direct().query(ctx, q+` ORDER BY release_id, idx`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var c SBOMComponent
		var cpes, patched string
		if err := rows.Scan(&c.ReleaseID, &c.Index, &c.Ref, &c.Name, &c.Version, &c.PURL, &cpes, &patched); err != nil {
			return err
		}
		if err := fromJSONText(cpes, &c.CPEs); err != nil {
			return err
		}
		if err := fromJSONText(patched, &c.Patched); err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
	}
	return rows.Err()
}

// ReleaseIDsWithSBOM returns the releases with ingested components.
func (s *Store) ReleaseIDsWithSBOM(ctx context.Context) ([]string, error) {
	return s.queryStrings(ctx, `SELECT release_id FROM release_sboms WHERE error = '' ORDER BY release_id`)
}

// queryStrings runs a query of one text column.
func (s *Store) queryStrings(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := s.direct().query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanString)
}
