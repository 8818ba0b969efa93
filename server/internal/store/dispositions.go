package store

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/google/uuid"
)

// A Disposition is a decision about a vulnerability in a product line
// (ReleaseID "") or, overriding it, in one release.
type Disposition struct {
	Product       string    `json:"product"`
	VulnID        string    `json:"vuln_id"`
	ReleaseID     string    `json:"release_id,omitempty"`
	Status        string    `json:"status"`
	Justification string    `json:"justification,omitempty"`
	Detail        string    `json:"detail,omitempty"`
	TargetRelease string    `json:"target_release,omitempty"`
	FixedRelease  string    `json:"fixed_release,omitempty"`
	Source        string    `json:"source"` // "psirt", or "vex:<document>" for an imported supplier statement
	UpdatedBy     string    `json:"updated_by"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// A DispositionChange is one entry of the append-only history of
// decisions: what was decided, what it replaced, who, when and why.
type DispositionChange struct {
	ID             string    `json:"id"`
	Product        string    `json:"product"`
	VulnID         string    `json:"vuln_id"`
	ReleaseID      string    `json:"release_id,omitempty"`
	Status         string    `json:"status"`
	Justification  string    `json:"justification,omitempty"`
	Detail         string    `json:"detail,omitempty"`
	TargetRelease  string    `json:"target_release,omitempty"`
	FixedRelease   string    `json:"fixed_release,omitempty"`
	PreviousStatus string    `json:"previous_status,omitempty"` // "" for the first decision
	Actor          string    `json:"actor"`
	Reason         string    `json:"reason"`
	At             time.Time `json:"at"`
}

const dispositionColumns = `product, vuln_id, release_id, status, justification, detail, target_release, fixed_release, source, updated_by, updated_at`

func scanDisposition(sc interface{ Scan(...any) error }) (Disposition, error) {
	var d Disposition
	var at string
	err := sc.Scan(&d.Product, &d.VulnID, &d.ReleaseID, &d.Status, &d.Justification, &d.Detail, &d.TargetRelease, &d.FixedRelease, &d.Source, &d.UpdatedBy, &at)
	d.UpdatedAt = parseTime(at)
	return d, err
}

// SetDisposition records d and appends the change to the history, with
// reason, in one transaction. It returns the change.
func (s *Store) SetDisposition(ctx context.Context, d Disposition, reason string) (DispositionChange, error) {
	ch := DispositionChange{
		ID: uuid.NewString(), Product: d.Product, VulnID: d.VulnID, ReleaseID: d.ReleaseID, Status: d.Status,
		Justification: d.Justification, Detail: d.Detail, TargetRelease: d.TargetRelease, FixedRelease: d.FixedRelease,
		Actor: d.UpdatedBy, Reason: reason, At: d.UpdatedAt,
	}
	err := s.tx(ctx, func(q *txq) error {
		prev, err := scanDisposition(q.queryRow(ctx, `SELECT `+dispositionColumns+` FROM dispositions WHERE product = ? AND vuln_id = ? AND release_id = ?`,
			d.Product, d.VulnID, d.ReleaseID))
		switch {
		case err == nil:
			ch.PreviousStatus = prev.Status
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if _, err := q.exec(ctx, `INSERT INTO dispositions (`+dispositionColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (product, vuln_id, release_id) DO UPDATE SET status = excluded.status, justification = excluded.justification,
				detail = excluded.detail, target_release = excluded.target_release, fixed_release = excluded.fixed_release,
				source = excluded.source, updated_by = excluded.updated_by, updated_at = excluded.updated_at`,
			d.Product, d.VulnID, d.ReleaseID, d.Status, d.Justification, d.Detail, d.TargetRelease, d.FixedRelease, d.Source, d.UpdatedBy, formatTime(d.UpdatedAt)); err != nil {
			return err
		}
		_, err = q.exec(ctx, `INSERT INTO disposition_history (id, product, vuln_id, release_id, status, justification, detail, target_release,
			fixed_release, previous_status, actor, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			ch.ID, ch.Product, ch.VulnID, ch.ReleaseID, ch.Status, ch.Justification, ch.Detail, ch.TargetRelease, ch.FixedRelease,
			ch.PreviousStatus, ch.Actor, ch.Reason, formatTime(ch.At))
		return err
	})
	return ch, err
}

// A DispositionFilter selects dispositions; empty fields do not filter.
type DispositionFilter struct {
	Products []string
	VulnID   string
}

func (f DispositionFilter) where() (string, []any) {
	var where []string
	var args []any
	if len(f.Products) > 0 {
		where = append(where, "product IN ("+placeholders(len(f.Products))+")")
		args = appendAll(args, f.Products)
	}
	if f.VulnID != "" {
		where = append(where, "vuln_id = ?")
		args = append(args, f.VulnID)
	}
	if len(where) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(where, " AND "), args
}

// Dispositions returns the current decisions matching f.
func (s *Store) Dispositions(ctx context.Context, f DispositionFilter) ([]Disposition, error) {
	where, args := f.where()
	rows, err := s.direct().query(ctx, `SELECT `+dispositionColumns+` FROM dispositions`+where+` ORDER BY product, vuln_id, release_id`, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanDisposition)
}

// DispositionHistory returns the changes matching f, oldest first.
func (s *Store) DispositionHistory(ctx context.Context, f DispositionFilter) ([]DispositionChange, error) {
	where, args := f.where()
	rows, err := s.direct().query(ctx, `SELECT id, product, vuln_id, release_id, status, justification, detail, target_release, fixed_release,
		previous_status, actor, reason, at FROM disposition_history`+where+` ORDER BY at, id`, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (DispositionChange, error) {
		var c DispositionChange
		var at string
		err := sc.Scan(&c.ID, &c.Product, &c.VulnID, &c.ReleaseID, &c.Status, &c.Justification, &c.Detail, &c.TargetRelease,
			&c.FixedRelease, &c.PreviousStatus, &c.Actor, &c.Reason, &at)
		c.At = parseTime(at)
		return c, err
	})
}

// A VEXStatement is one statement of an imported supplier VEX document.
type VEXStatement struct {
	Document      string    `json:"document"`
	Author        string    `json:"author"`
	VulnID        string    `json:"vuln_id"`
	Product       string    `json:"product"` // a purl (with or without version) or a CPE
	Status        string    `json:"status"`  // not_affected, affected, fixed, under_investigation
	Justification string    `json:"justification,omitempty"`
	Detail        string    `json:"detail,omitempty"`
	ImportedAt    time.Time `json:"imported_at"`
}

// PutVEXStatements replaces the statements of one document.
func (s *Store) PutVEXStatements(ctx context.Context, document string, sts []VEXStatement) error {
	return s.tx(ctx, func(q *txq) error {
		if _, err := q.exec(ctx, `DELETE FROM vex_statements WHERE document = ?`, document); err != nil {
			return err
		}
		rows := make([][]any, len(sts))
		for i, st := range sts {
			rows[i] = []any{document, i, st.Author, st.VulnID, st.Product, st.Status, st.Justification, st.Detail, formatTime(st.ImportedAt)}
		}
		return q.insertRows(ctx, `INSERT INTO vex_statements (document, idx, author, vuln_id, product, status, justification, detail, imported_at) VALUES `, 9, rows)
	})
}

// VEXStatements returns every imported supplier statement.
func (s *Store) VEXStatements(ctx context.Context) ([]VEXStatement, error) {
	rows, err := s.direct().query(ctx, `SELECT document, author, vuln_id, product, status, justification, detail, imported_at FROM vex_statements ORDER BY document, idx`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (VEXStatement, error) {
		var st VEXStatement
		var at string
		err := sc.Scan(&st.Document, &st.Author, &st.VulnID, &st.Product, &st.Status, &st.Justification, &st.Detail, &at)
		st.ImportedAt = parseTime(at)
		return st, err
	})
}
