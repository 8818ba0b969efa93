package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// An AlertRule raises an alert when at least Threshold events of Category,
// of at least MinSeverity and, when Event is set, with the field event =
// Event, arrive from one device within Window.
type AlertRule struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Category    protocol.Category `json:"category"`
	MinSeverity protocol.Severity `json:"min_severity"`
	Event       string            `json:"event,omitempty"`
	Threshold   int               `json:"threshold"`
	Window      time.Duration     `json:"window_ns"`
	Builtin     bool              `json:"builtin"`
	Enabled     bool              `json:"enabled"`
	CreatedAt   time.Time         `json:"created_at"`
}

// Rule bounds.
const (
	MaxRuleThreshold = 100_000
	MaxRuleWindow    = 7 * 24 * time.Hour
)

// Validate reports every invalid field at once.
func (r *AlertRule) Validate() error {
	var errs []error
	if !protocol.ValidID(r.ID) {
		errs = append(errs, fmt.Errorf("rule id %q must be 1-64 letters, digits, '.', '_' or '-'", r.ID))
	}
	if r.Name == "" || len(r.Name) > 200 {
		errs = append(errs, fmt.Errorf("rule name must be 1-200 characters"))
	}
	if !r.Category.Valid() {
		errs = append(errs, fmt.Errorf("rule category %q is not one of %q", r.Category, protocol.Categories()))
	}
	if !r.MinSeverity.Valid() {
		errs = append(errs, fmt.Errorf("rule min_severity %q is not a severity", r.MinSeverity))
	}
	if r.Event != "" && !protocol.ValidID(r.Event) {
		errs = append(errs, fmt.Errorf("rule event %q must be letters, digits, '.', '_' or '-'", r.Event))
	}
	if r.Threshold < 1 || r.Threshold > MaxRuleThreshold {
		errs = append(errs, fmt.Errorf("rule threshold %d must be 1-%d", r.Threshold, MaxRuleThreshold))
	}
	if r.Window < time.Second || r.Window > MaxRuleWindow {
		errs = append(errs, fmt.Errorf("rule window %s must be between 1s and %s", r.Window, MaxRuleWindow))
	}
	return errors.Join(errs...)
}

// Matches reports whether e counts for the rule.
func (r *AlertRule) Matches(e protocol.Event) bool {
	return r.Enabled && e.Category == r.Category && e.Severity.Rank() >= r.MinSeverity.Rank() &&
		(r.Event == "" || e.Fields["event"] == r.Event)
}

const ruleColumns = `id, name, category, min_severity, event, threshold, window_seconds, builtin, enabled, created_at`

// AlertRules returns every rule, built-in first.
func (s *Store) AlertRules(ctx context.Context) ([]AlertRule, error) {
	rows, err := s.direct().query(ctx, `SELECT `+ruleColumns+` FROM alert_rules ORDER BY builtin DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("read alert rules: %w", err)
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (AlertRule, error) {
		var r AlertRule
		var window, builtin, enabled int64
		var created string
		err := sc.Scan(&r.ID, &r.Name, &r.Category, &r.MinSeverity, &r.Event, &r.Threshold, &window, &builtin, &enabled, &created)
		r.Window, r.Builtin, r.Enabled, r.CreatedAt = time.Duration(window)*time.Second, builtin == 1, enabled == 1, parseTime(created)
		return r, err
	})
}

// CreateAlertRule stores a custom rule with its audit records.
func (s *Store) CreateAlertRule(ctx context.Context, r AlertRule, recs ...audit.Record) error {
	if err := r.Validate(); err != nil {
		return problem.InvalidFrom(err)
	}
	return s.tx(ctx, func(q *txq) error {
		_, err := q.exec(ctx, `INSERT INTO alert_rules (`+ruleColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			r.ID, r.Name, string(r.Category), string(r.MinSeverity), r.Event, r.Threshold, int64(r.Window/time.Second), 0, boolInt(r.Enabled), formatTime(r.CreatedAt))
		if isUniqueViolation(err) {
			return fmt.Errorf("an alert rule with id %q or name %q exists: %w", r.ID, r.Name, problem.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("create alert rule: %w", err)
		}
		for _, rec := range recs {
			if _, err := q.appendAudit(ctx, rec, r.CreatedAt); err != nil {
				return err
			}
		}
		return nil
	})
}

// An Alert is a rule's threshold reached on one device.
type Alert struct {
	ID             string    `json:"id"`
	RuleID         string    `json:"rule_id"`
	DeviceID       string    `json:"device_id"`
	SiteID         string    `json:"site_id"`
	RaisedAt       time.Time `json:"raised_at"`
	FirstEventTime time.Time `json:"first_event_time"`
	LastEventTime  time.Time `json:"last_event_time"`
	LastSeq        uint64    `json:"last_seq"`
	Count          int       `json:"event_count"`
	Message        string    `json:"message"`
	AckedAt        time.Time `json:"acked_at,omitzero"`
	AckedBy        string    `json:"acked_by,omitempty"`
}

// evaluateRules raises or extends alerts for the events just inserted.
// For each rule and device with a matching new event, it counts the
// matching stored events in the window ending at the newest one; at the
// threshold it extends the device's alert for the rule whose last event
// lies within the window, or raises a new one.
func (q *txq) evaluateRules(ctx context.Context, inserted []EventRow, rules []AlertRule, now time.Time) ([]Alert, error) {
	var out []Alert
	for _, rule := range rules {
		type hit struct {
			newest EventRow
			n      int
		}
		hits := map[string]*hit{}
		var order []string
		for _, r := range inserted {
			if !rule.Matches(r.Event) {
				continue
			}
			h := hits[r.DeviceID]
			if h == nil {
				h = &hit{newest: r}
				hits[r.DeviceID] = h
				order = append(order, r.DeviceID)
			}
			h.n++
			if r.Event.Time.After(h.newest.Event.Time) {
				h.newest = r
			}
		}
		for _, dev := range order {
			a, ok, err := q.evaluateRule(ctx, rule, hits[dev].newest, hits[dev].n, now)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

func (q *txq) evaluateRule(ctx context.Context, rule AlertRule, newest EventRow, added int, now time.Time) (Alert, bool, error) {
	end := newest.Event.Time
	start := end.Add(-rule.Window)
	cond := `device_id = ? AND category = ? AND severity_rank >= ? AND event_time > ? AND event_time <= ?`
	args := []any{newest.DeviceID, string(rule.Category), rule.MinSeverity.Rank(), formatTime(start), formatTime(end)}
	if rule.Event != "" {
		cond += ` AND event = ?`
		args = append(args, rule.Event)
	}
	var n int
	var first sql.NullString
	if err := q.queryRow(ctx, `SELECT COUNT(*), MIN(event_time) FROM device_events WHERE `+cond, args...).Scan(&n, &first); err != nil {
		return Alert{}, false, fmt.Errorf("count events for rule %s: %w", rule.ID, err)
	}
	if n < rule.Threshold {
		return Alert{}, false, nil
	}
	var a Alert
	var raised, firstT, lastT string
	var lastSeq int64
	err := q.queryRow(ctx, `SELECT id, raised_at, first_event_time, last_event_time, last_seq, event_count FROM alerts
		WHERE rule_id = ? AND device_id = ? AND last_event_time >= ? ORDER BY last_event_time DESC LIMIT 1`,
		rule.ID, newest.DeviceID, formatTime(start)).Scan(&a.ID, &raised, &firstT, &lastT, &lastSeq, &a.Count)
	switch {
	case err == sql.ErrNoRows:
		a = Alert{
			ID: uuid.NewString(), RuleID: rule.ID, DeviceID: newest.DeviceID, SiteID: newest.SiteID, RaisedAt: now,
			FirstEventTime: parseTime(first.String), LastEventTime: end, LastSeq: newest.Event.Seq, Count: n,
			Message: fmt.Sprintf("%s: %d events on device %s, the latest: %s", rule.Name, n, newest.DeviceID, newest.Event.Message),
		}
		if len(a.Message) > 2048 {
			a.Message = a.Message[:2048]
		}
		_, err = q.exec(ctx, `INSERT INTO alerts (id, rule_id, device_id, site_id, raised_at, first_event_time, last_event_time, last_seq, event_count, message)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, a.ID, a.RuleID, a.DeviceID, a.SiteID, formatTime(a.RaisedAt),
			formatTime(a.FirstEventTime), formatTime(a.LastEventTime), int64(a.LastSeq), a.Count, a.Message)
		if err != nil {
			return Alert{}, false, fmt.Errorf("raise alert: %w", err)
		}
		return a, true, nil
	case err != nil:
		return Alert{}, false, fmt.Errorf("find open alert: %w", err)
	}
	a.RuleID, a.DeviceID, a.SiteID, a.RaisedAt, a.FirstEventTime = rule.ID, newest.DeviceID, newest.SiteID, parseTime(raised), parseTime(firstT)
	a.LastEventTime, a.LastSeq = parseTime(lastT), uint64(lastSeq)
	if end.After(a.LastEventTime) {
		a.LastEventTime, a.LastSeq = end, newest.Event.Seq
	}
	a.Count += added
	_, err = q.exec(ctx, `UPDATE alerts SET last_event_time = ?, last_seq = ?, event_count = ? WHERE id = ?`,
		formatTime(a.LastEventTime), int64(a.LastSeq), a.Count, a.ID)
	if err != nil {
		return Alert{}, false, fmt.Errorf("extend alert: %w", err)
	}
	return a, true, nil
}

// An AlertFilter selects alerts. Zero fields do not filter.
type AlertFilter struct {
	SiteIDs        []string // the caller's scope; nil: every site
	OrganisationID string
	SiteID         string
	DeviceID       string
	OpenOnly       bool // not acknowledged
}

const alertColumns = `a.id, a.rule_id, a.device_id, a.site_id, a.raised_at, a.first_event_time, a.last_event_time, a.last_seq, a.event_count, a.message, a.acked_at, a.acked_by`

// Alerts returns the alerts matching f, newest first (at most 10,000).
func (s *Store) Alerts(ctx context.Context, f AlertFilter) ([]Alert, error) {
	var where []string
	var args []any
	if f.SiteIDs != nil {
		if len(f.SiteIDs) == 0 {
			return nil, nil
		}
		where = append(where, "a.site_id IN ("+placeholders(len(f.SiteIDs))+")")
		args = appendAll(args, f.SiteIDs)
	}
	for cond, v := range map[string]string{"s.organisation_id = ?": f.OrganisationID, "a.site_id = ?": f.SiteID, "a.device_id = ?": f.DeviceID} {
		if v != "" {
			where = append(where, cond)
			args = append(args, v)
		}
	}
	if f.OpenOnly {
		where = append(where, "a.acked_at IS NULL")
	}
	query := `SELECT ` + alertColumns + ` FROM alerts a JOIN sites s ON s.id = a.site_id`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := s.direct().query(ctx, query+` ORDER BY a.raised_at DESC, a.id LIMIT 10000`, args...)
	if err != nil {
		return nil, fmt.Errorf("query alerts: %w", err)
	}
	return collect(rows, scanAlert)
}

func scanAlert(row interface{ Scan(...any) error }) (Alert, error) {
	var a Alert
	var raised, first, last string
	var acked sql.NullString
	var seq int64
	err := row.Scan(&a.ID, &a.RuleID, &a.DeviceID, &a.SiteID, &raised, &first, &last, &seq, &a.Count, &a.Message, &acked, &a.AckedBy)
	a.RaisedAt, a.FirstEventTime, a.LastEventTime, a.LastSeq, a.AckedAt = parseTime(raised), parseTime(first), parseTime(last), uint64(seq), parseNullTime(acked)
	return a, err
}

// Alert returns one alert.
func (s *Store) Alert(ctx context.Context, id string) (Alert, error) {
	a, err := scanAlert(s.direct().queryRow(ctx, `SELECT `+alertColumns+` FROM alerts a WHERE a.id = ?`, id))
	return a, notFound(err, fmt.Sprintf("alert %q", id))
}

// AckAlert marks an alert acknowledged by actor, with its audit records,
// and returns it. Acknowledging twice is a conflict.
func (s *Store) AckAlert(ctx context.Context, id, actor string, now time.Time, recs ...audit.Record) (Alert, error) {
	var a Alert
	err := s.tx(ctx, func(q *txq) error {
		res, err := q.exec(ctx, `UPDATE alerts SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL`, formatTime(now), actor, id)
		if err != nil {
			return fmt.Errorf("acknowledge alert: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if _, err := scanAlert(q.queryRow(ctx, `SELECT `+alertColumns+` FROM alerts a WHERE a.id = ?`, id)); err != nil {
				return notFound(err, fmt.Sprintf("alert %q", id))
			}
			return fmt.Errorf("alert %q is already acknowledged: %w", id, problem.ErrConflict)
		}
		for _, rec := range recs {
			if _, err := q.appendAudit(ctx, rec, now); err != nil {
				return err
			}
		}
		a, err = scanAlert(q.queryRow(ctx, `SELECT `+alertColumns+` FROM alerts a WHERE a.id = ?`, id))
		return err
	})
	return a, err
}
