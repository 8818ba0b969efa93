package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/aftercare/aftercare/server/internal/audit"
)

// auditLockKey is the PostgreSQL advisory lock that serialises appends to
// the audit log ("AUDT" in ASCII).
const auditLockKey = 0x41554454

// AppendAudit appends rec, at time at, to the audit log in a transaction of
// its own. Use the store's decision methods that take a record where the
// entry must commit with the decision.
func (s *Store) AppendAudit(ctx context.Context, rec audit.Record, at time.Time) (audit.Entry, error) {
	var e audit.Entry
	err := s.tx(ctx, func(q *txq) error {
		var err error
		e, err = q.appendAudit(ctx, rec, at)
		return err
	})
	return e, err
}

// appendAudit appends one entry inside the caller's transaction. Appends
// are serialised so the chain never forks: on PostgreSQL by a transaction
// advisory lock held until commit, on SQLite by its single writer (every
// transaction begins IMMEDIATE). The seq primary key refuses a fork even
// if that ever failed.
func (q *txq) appendAudit(ctx context.Context, rec audit.Record, at time.Time) (audit.Entry, error) {
	if q.s.postgres {
		if _, err := q.exec(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(auditLockKey)); err != nil {
			return audit.Entry{}, fmt.Errorf("lock audit log: %w", err)
		}
	}
	var seq int64
	var prev string
	err := q.queryRow(ctx, `SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1`).Scan(&seq, &prev)
	if err != nil && err != sql.ErrNoRows {
		return audit.Entry{}, fmt.Errorf("read audit head: %w", err)
	}
	e, err := audit.New(rec, at, seq, prev)
	if err != nil {
		return audit.Entry{}, err
	}
	_, err = q.exec(ctx, `INSERT INTO audit_log (seq, at, actor, role, action, object, outcome, reason, details, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.Seq, e.At.Format(audit.TimeLayout), e.Actor, e.Role, e.Action, e.Object, e.Outcome, e.Reason, string(e.Details), e.PrevHash, e.Hash)
	if err != nil {
		return audit.Entry{}, fmt.Errorf("append audit entry: %w", err)
	}
	return e, nil
}

// An AuditFilter selects audit entries; an empty field does not filter.
type AuditFilter struct {
	AfterSeq int64  // entries with a larger seq
	Actor    string // exact
	Action   string // exact, or a prefix ending in "." such as "rollout."
	Limit    int    // at most this many; 0 means 1000
}

// maxAuditPage bounds one page of audit entries.
const maxAuditPage = 10_000

// AuditEntries returns entries in seq order.
func (s *Store) AuditEntries(ctx context.Context, f AuditFilter) ([]audit.Entry, error) {
	where := []string{"seq > ?"}
	args := []any{f.AfterSeq}
	if f.Actor != "" {
		where = append(where, "actor = ?")
		args = append(args, f.Actor)
	}
	if strings.HasSuffix(f.Action, ".") {
		where = append(where, "SUBSTR(action, 1, ?) = ?")
		args = append(args, len(f.Action), f.Action)
	} else if f.Action != "" {
		where = append(where, "action = ?")
		args = append(args, f.Action)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	limit = min(limit, maxAuditPage)
	rows, err := s.direct().query(ctx, `SELECT seq, at, actor, role, action, object, outcome, reason, details, prev_hash, hash FROM audit_log
		WHERE `+strings.Join(where, " AND ")+` ORDER BY seq LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (audit.Entry, error) {
		var e audit.Entry
		var at, details string
		err := sc.Scan(&e.Seq, &at, &e.Actor, &e.Role, &e.Action, &e.Object, &e.Outcome, &e.Reason, &details, &e.PrevHash, &e.Hash)
		if err != nil {
			return e, fmt.Errorf("read audit log: %w", err)
		}
		e.At, err = time.Parse(audit.TimeLayout, at)
		if err != nil {
			// A time that does not parse was written by hand; keep
			// the zero time so Verify reports the edit.
			e.At = time.Time{}
		}
		e.Details = json.RawMessage(details)
		return e, nil
	})
}

// VerifyAudit checks the whole audit log, page by page, and returns its
// head (last seq and hash). A broken chain is an *audit.ChainError.
func (s *Store) VerifyAudit(ctx context.Context) (int64, string, error) {
	var v audit.Verifier
	after := int64(0)
	for {
		page, err := s.AuditEntries(ctx, AuditFilter{AfterSeq: after, Limit: maxAuditPage})
		if err != nil {
			return 0, "", err
		}
		for _, e := range page {
			if err := v.Next(e); err != nil {
				return 0, "", err
			}
		}
		if len(page) < maxAuditPage {
			seq, hash := v.Head()
			return seq, hash, nil
		}
		after = page[len(page)-1].Seq
	}
}
