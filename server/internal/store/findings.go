package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// A FindingRule says why a finding was made or why it is not open; the
// vuln package fills it.
type FindingRule struct {
	Source   string `json:"source"`
	Advisory string `json:"advisory,omitempty"`
	Text     string `json:"text"`
}

// A Finding ties a vulnerability to a component of a release.
type Finding struct {
	ReleaseID        string        `json:"release_id"`
	ComponentIndex   int           `json:"component_index"`
	VulnID           string        `json:"vuln_id"`
	ComponentName    string        `json:"component_name"`
	ComponentVersion string        `json:"component_version"`
	PURL             string        `json:"purl,omitempty"`
	Advisories       []string      `json:"advisories"`
	Rules            []FindingRule `json:"rules"`
	Evidence         []FindingRule `json:"evidence,omitempty"`
	Summary          string        `json:"summary,omitempty"`
	Severity         string        `json:"severity,omitempty"`
	CVSS             float64       `json:"cvss,omitempty"`
	Patched          bool          `json:"patched"` // backport evidence or supplier VEX: not open
	FirstSeen        time.Time     `json:"first_seen"`
}

func (f Finding) key() string {
	return fmt.Sprintf("%s\x00%d\x00%s", f.ReleaseID, f.ComponentIndex, f.VulnID)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ReplaceFindings makes fs the findings of a release in one transaction:
// findings no longer matched are removed, kept ones keep their first_seen
// (and are rewritten only when their content changed), new ones get now.
// It returns the new ones.
func (s *Store) ReplaceFindings(ctx context.Context, releaseID string, fs []Finding, now time.Time) ([]Finding, error) {
	var added []Finding
	err := s.tx(ctx, func(q *txq) error {
		added = nil
		type prev struct {
			idx    int
			vuln   string
			digest string
			first  time.Time
		}
		old := map[string]prev{}
		rows, err := q.query(ctx, `SELECT component_idx, vuln_id, digest, first_seen FROM findings WHERE release_id = ?`, releaseID)
		if err != nil {
			return err
		}
		for rows.Next() {
			f := Finding{ReleaseID: releaseID}
			var p prev
			var first string
			if err := rows.Scan(&f.ComponentIndex, &f.VulnID, &p.digest, &first); err != nil {
				rows.Close()
				return err
			}
			p.idx, p.vuln, p.first = f.ComponentIndex, f.VulnID, parseTime(first)
			old[f.key()] = p
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var insert [][]any
		for _, f := range fs {
			f.ReleaseID = releaseID
			content := []any{jsonText(nonNilStrings(f.Advisories)), jsonText(nonNilRules(f.Rules)), jsonText(nonNilRules(f.Evidence)),
				f.Summary, f.Severity, f.CVSS, boolInt(f.Patched)}
			sum := sha256.Sum256([]byte(fmt.Sprint(f.ComponentName, "\x00", f.ComponentVersion, "\x00", f.PURL, "\x00", content)))
			digest := hex.EncodeToString(sum[:16])
			p, existed := old[f.key()]
			delete(old, f.key())
			switch {
			case existed && p.digest == digest:
				continue
			case existed:
				if _, err := q.exec(ctx, `DELETE FROM findings WHERE release_id = ? AND component_idx = ? AND vuln_id = ?`, releaseID, f.ComponentIndex, f.VulnID); err != nil {
					return err
				}
				f.FirstSeen = p.first
			default:
				f.FirstSeen = now
				added = append(added, f)
			}
			insert = append(insert, append([]any{f.ReleaseID, f.ComponentIndex, f.VulnID, f.ComponentName, f.ComponentVersion, f.PURL},
				append(content, formatTime(f.FirstSeen), digest)...))
		}
		for _, p := range old {
			if _, err := q.exec(ctx, `DELETE FROM findings WHERE release_id = ? AND component_idx = ? AND vuln_id = ?`, releaseID, p.idx, p.vuln); err != nil {
				return err
			}
		}
		return q.insertRows(ctx, `INSERT INTO findings (release_id, component_idx, vuln_id, component_name, component_version, purl,
			advisories, rules, evidence, summary, severity, cvss, patched, first_seen, digest) VALUES `, 15, insert)
	})
	return added, err
}

// An OpenFinding is the part of an open finding (no backport or supplier
// evidence) that triage needs.
type OpenFinding struct {
	ReleaseID string
	VulnID    string
	Severity  string
	Summary   string
}

// OpenFindings returns every finding without evidence that it is patched.
func (s *Store) OpenFindings(ctx context.Context) ([]OpenFinding, error) {
	rows, err := s.direct().query(ctx, `SELECT release_id, vuln_id, severity, summary FROM findings WHERE patched = 0 ORDER BY release_id, vuln_id`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (OpenFinding, error) {
		var f OpenFinding
		err := sc.Scan(&f.ReleaseID, &f.VulnID, &f.Severity, &f.Summary)
		return f, err
	})
}

func nonNilRules(r []FindingRule) []FindingRule {
	if r == nil {
		return []FindingRule{}
	}
	return r
}

// A FindingFilter selects findings; empty fields do not filter.
type FindingFilter struct {
	ReleaseIDs []string // nil: every release; empty non-nil: none
	VulnID     string
}

// Findings returns the findings matching f, by release, component and
// vulnerability.
func (s *Store) Findings(ctx context.Context, f FindingFilter) ([]Finding, error) {
	var where []string
	var args []any
	if f.ReleaseIDs != nil {
		if len(f.ReleaseIDs) == 0 {
			return nil, nil
		}
		where = append(where, "release_id IN ("+placeholders(len(f.ReleaseIDs))+")")
		args = appendAll(args, f.ReleaseIDs)
	}
	if f.VulnID != "" {
		where = append(where, "vuln_id = ?")
		args = append(args, f.VulnID)
	}
	q := `SELECT release_id, component_idx, vuln_id, component_name, component_version, purl, advisories, rules, evidence,
		summary, severity, cvss, patched, first_seen FROM findings`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := s.direct().query(ctx, q+" ORDER BY release_id, component_idx, vuln_id", args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanFinding)
}

func scanFinding(rows interface{ Scan(...any) error }) (Finding, error) {
	var f Finding
	var advisories, rules, evidence, first string
	var patched int
	if err := rows.Scan(&f.ReleaseID, &f.ComponentIndex, &f.VulnID, &f.ComponentName, &f.ComponentVersion, &f.PURL,
		&advisories, &rules, &evidence, &f.Summary, &f.Severity, &f.CVSS, &patched, &first); err != nil {
		return f, err
	}
	f.Patched, f.FirstSeen = patched != 0, parseTime(first)
	for _, p := range []struct {
		s string
		v any
	}{{advisories, &f.Advisories}, {rules, &f.Rules}, {evidence, &f.Evidence}} {
		if err := fromJSONText(p.s, p.v); err != nil {
			return f, err
		}
	}
	return f, nil
}

// ReleasesRunningAt returns the IDs of the releases that at least one
// device at the given sites runs (same model, installed version).
func (s *Store) ReleasesRunningAt(ctx context.Context, siteIDs []string) ([]string, error) {
	if len(siteIDs) == 0 {
		return nil, nil
	}
	return s.queryStrings(ctx, `SELECT DISTINCT r.id FROM releases r JOIN release_models rm ON rm.release_id = r.id
		JOIN devices d ON d.model = rm.model AND d.installed_version = r.version
		WHERE d.site_id IN (`+placeholders(len(siteIDs))+`) ORDER BY r.id`, appendAll(nil, siteIDs)...)
}
