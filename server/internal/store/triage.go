package store

import (
	"context"
	"database/sql"
	"time"
)

// A TriageItem is a serious new finding waiting for a decision within its
// SLA: one per vulnerability per product line.
type TriageItem struct {
	ID       string    `json:"id"`
	Product  string    `json:"product"`
	VulnID   string    `json:"vuln_id"`
	Severity string    `json:"severity,omitempty"`
	KEV      bool      `json:"kev"`
	EPSS     float64   `json:"epss,omitempty"`
	Reasons  []string  `json:"reasons"`  // why it was opened: "kev", "severity critical", "epss 0.94 >= 0.5"
	Releases []string  `json:"releases"` // release IDs with the finding when it was opened
	OpenedAt time.Time `json:"opened_at"`
	DueAt    time.Time `json:"due_at"`
	ClosedAt time.Time `json:"closed_at,omitzero"`
	ClosedBy string    `json:"closed_by,omitempty"`
}

// A Notification waits in the outbox until it is delivered.
type Notification struct {
	ID        string    `json:"id"`
	Channel   string    `json:"channel"` // "webhook" or "email"
	Subject   string    `json:"subject"`
	Body      string    `json:"body"` // JSON for webhooks, text for email
	Attempts  int       `json:"attempts"`
	LastError string    `json:"last_error,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	SentAt    time.Time `json:"sent_at,omitzero"`
}

// Outcomes of OpenTriage.
const (
	TriageOpened    = "opened"
	TriageEscalated = "escalated" // an open item got a shorter deadline
)

// OpenTriage opens item unless the product already has an item for the
// vulnerability; an open item whose deadline item.DueAt shortens is
// escalated to item's reasons and deadline. Either way the notifications
// are queued, in the same transaction. It returns TriageOpened,
// TriageEscalated or "" (nothing changed).
func (s *Store) OpenTriage(ctx context.Context, item TriageItem, notes []Notification) (string, error) {
	outcome := ""
	err := s.tx(ctx, func(q *txq) error {
		outcome = ""
		var due string
		var closed sql.NullString
		err := q.queryRow(ctx, `SELECT due_at, closed_at FROM triage_items WHERE product = ? AND vuln_id = ?`, item.Product, item.VulnID).Scan(&due, &closed)
		switch {
		case err == sql.ErrNoRows:
			if _, err := q.exec(ctx, `INSERT INTO triage_items (id, product, vuln_id, severity, kev, epss, reasons, releases, opened_at, due_at, closed_by)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')`, item.ID, item.Product, item.VulnID, item.Severity, boolInt(item.KEV), item.EPSS,
				jsonText(nonNilStrings(item.Reasons)), jsonText(nonNilStrings(item.Releases)), formatTime(item.OpenedAt), formatTime(item.DueAt)); err != nil {
				return err
			}
			outcome = TriageOpened
		case err != nil:
			return err
		case closed.Valid || !item.DueAt.Before(parseTime(due)):
			return nil
		default:
			if _, err := q.exec(ctx, `UPDATE triage_items SET severity = ?, kev = ?, epss = ?, reasons = ?, releases = ?, due_at = ? WHERE product = ? AND vuln_id = ?`,
				item.Severity, boolInt(item.KEV), item.EPSS, jsonText(nonNilStrings(item.Reasons)), jsonText(nonNilStrings(item.Releases)),
				formatTime(item.DueAt), item.Product, item.VulnID); err != nil {
				return err
			}
			outcome = TriageEscalated
		}
		for _, nt := range notes {
			if _, err := q.exec(ctx, `INSERT INTO notifications (id, channel, subject, body, attempts, last_error, created_at) VALUES (?, ?, ?, ?, 0, '', ?)`,
				nt.ID, nt.Channel, nt.Subject, nt.Body, formatTime(nt.CreatedAt)); err != nil {
				return err
			}
		}
		return nil
	})
	return outcome, err
}

// CloseTriage closes the open item of a product's vulnerability, if any.
func (s *Store) CloseTriage(ctx context.Context, product, vulnID, by string, at time.Time) error {
	_, err := s.direct().exec(ctx, `UPDATE triage_items SET closed_at = ?, closed_by = ? WHERE product = ? AND vuln_id = ? AND closed_at IS NULL`,
		formatTime(at), by, product, vulnID)
	return err
}

// TriageItems returns the items of the given products (all when nil),
// open ones first by due time.
func (s *Store) TriageItems(ctx context.Context, products []string, openOnly bool) ([]TriageItem, error) {
	q := `SELECT id, product, vuln_id, severity, kev, epss, reasons, releases, opened_at, due_at, closed_at, closed_by FROM triage_items WHERE 1 = 1`
	var args []any
	if products != nil {
		if len(products) == 0 {
			return nil, nil
		}
		q += ` AND product IN (` + placeholders(len(products)) + `)`
		args = appendAll(args, products)
	}
	if openOnly {
		q += ` AND closed_at IS NULL`
	}
	rows, err := s.direct().query(ctx, q+` ORDER BY CASE WHEN closed_at IS NULL THEN 0 ELSE 1 END, due_at, id`, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (TriageItem, error) {
		var it TriageItem
		var kev int
		var reasons, releases, opened, due string
		var closed sql.NullString
		if err := sc.Scan(&it.ID, &it.Product, &it.VulnID, &it.Severity, &kev, &it.EPSS, &reasons, &releases, &opened, &due, &closed, &it.ClosedBy); err != nil {
			return it, err
		}
		it.KEV, it.OpenedAt, it.DueAt, it.ClosedAt = kev != 0, parseTime(opened), parseTime(due), parseNullTime(closed)
		if err := fromJSONText(reasons, &it.Reasons); err != nil {
			return it, err
		}
		if err := fromJSONText(releases, &it.Releases); err != nil {
			return it, err
		}
		return it, nil
	})
}

// PendingNotifications returns undelivered notifications, oldest first.
func (s *Store) PendingNotifications(ctx context.Context, limit int) ([]Notification, error) {
	rows, err := s.direct().query(ctx, `SELECT id, channel, subject, body, attempts, last_error, created_at FROM notifications
		WHERE sent_at IS NULL ORDER BY created_at, id LIMIT ?`, limit)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (Notification, error) {
		var n Notification
		var created string
		err := sc.Scan(&n.ID, &n.Channel, &n.Subject, &n.Body, &n.Attempts, &n.LastError, &created)
		n.CreatedAt = parseTime(created)
		return n, err
	})
}

// MarkNotification records a delivery attempt: sent, or failed with errMsg.
func (s *Store) MarkNotification(ctx context.Context, id string, sent bool, errMsg string, at time.Time) error {
	var err error
	if sent {
		_, err = s.direct().exec(ctx, `UPDATE notifications SET attempts = attempts + 1, last_error = '', sent_at = ? WHERE id = ?`, formatTime(at), id)
	} else {
		_, err = s.direct().exec(ctx, `UPDATE notifications SET attempts = attempts + 1, last_error = ? WHERE id = ?`, errMsg, id)
	}
	return err
}
