package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

// An EventRow is one device event ready to store.
type EventRow struct {
	DeviceID   string
	SiteID     string
	Event      protocol.Event
	ReceivedAt time.Time
}

// A DeviceSite is what ingestion needs to know about a device.
type DeviceSite struct {
	SiteID  string
	Revoked bool
}

// DeviceSites returns the site and revocation of each of ids that is
// enrolled; unknown IDs are absent from the map.
func (s *Store) DeviceSites(ctx context.Context, ids []string) (map[string]DeviceSite, error) {
	out := make(map[string]DeviceSite, len(ids))
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 500)]
		ids = ids[len(chunk):]
		rows, err := s.direct().query(ctx, `SELECT id, site_id, revoked_at FROM devices WHERE id IN (`+placeholders(len(chunk))+`)`, appendAll(nil, chunk)...)
		if err != nil {
			return nil, fmt.Errorf("look up devices: %w", err)
		}
		for rows.Next() {
			var id string
			var d DeviceSite
			var revoked sql.NullString
			if err := rows.Scan(&id, &d.SiteID, &revoked); err != nil {
				rows.Close()
				return nil, err
			}
			d.Revoked = revoked.Valid
			out[id] = d
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// eventInsertChunk bounds the rows of one multi-row INSERT, under both
// databases' placeholder limits (13 columns each).
const eventInsertChunk = 200

// InsertEvents stores rows in one transaction, skipping any (device, seq)
// already stored, and returns the rows it inserted. Alert rules are
// evaluated for the inserted rows in the same transaction, so an alert is
// durable exactly when its events are; the alerts raised or extended are
// returned.
func (s *Store) InsertEvents(ctx context.Context, rows []EventRow, rules []AlertRule, now time.Time) (inserted []EventRow, alerts []Alert, err error) {
	err = s.tx(ctx, func(q *txq) error {
		inserted, alerts = inserted[:0], alerts[:0]
		for start := 0; start < len(rows); start += eventInsertChunk {
			chunk := rows[start:min(len(rows), start+eventInsertChunk)]
			got, err := q.insertEvents(ctx, chunk)
			if err != nil {
				return err
			}
			inserted = append(inserted, got...)
		}
		var err error
		alerts, err = q.evaluateRules(ctx, inserted, rules, now)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return inserted, alerts, nil
}

func (q *txq) insertEvents(ctx context.Context, rows []EventRow) ([]EventRow, error) {
	var b strings.Builder
	b.WriteString(`INSERT INTO device_events (device_id, seq, site_id, event_time, source, category, severity, severity_rank, message, event, fields, dropped, received_at) VALUES `)
	args := make([]any, 0, len(rows)*13)
	for i, r := range rows {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
		fields := "{}"
		if len(r.Event.Fields) > 0 {
			fb, err := json.Marshal(r.Event.Fields)
			if err != nil {
				return nil, fmt.Errorf("encode event fields: %w", err)
			}
			fields = string(fb)
		}
		e := r.Event
		args = append(args, r.DeviceID, int64(e.Seq), r.SiteID, formatTime(e.Time), e.Source, string(e.Category), string(e.Severity),
			e.Severity.Rank(), e.Message, e.Fields["event"], fields, int64(e.Dropped), formatTime(r.ReceivedAt))
	}
	b.WriteString(` ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq`)
	res, err := q.query(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("insert events: %w", err)
	}
	defer res.Close()
	type key struct {
		device string
		seq    int64
	}
	got := map[key]bool{}
	for res.Next() {
		var k key
		if err := res.Scan(&k.device, &k.seq); err != nil {
			return nil, err
		}
		got[k] = true
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("insert events: %w", err)
	}
	// A row given twice (a message redelivered into the same group) was
	// inserted once: report it once.
	out := make([]EventRow, 0, len(got))
	for _, r := range rows {
		if k := (key{r.DeviceID, int64(r.Event.Seq)}); got[k] {
			out = append(out, r)
			delete(got, k)
		}
	}
	return out, nil
}

// A StoredEvent is one event as stored, with where it came from.
type StoredEvent struct {
	DeviceID     string            `json:"device_id"`
	SiteID       string            `json:"site_id"`
	Organisation string            `json:"organisation,omitempty"`
	Seq          uint64            `json:"seq"`
	Time         time.Time         `json:"time"`
	Source       string            `json:"source"`
	Category     protocol.Category `json:"category"`
	Severity     protocol.Severity `json:"severity"`
	Message      string            `json:"message"`
	Fields       map[string]string `json:"fields,omitempty"`
	Dropped      uint64            `json:"dropped,omitempty"`
	ReceivedAt   time.Time         `json:"received_at"`
}

// An EventFilter selects events. Zero fields do not filter.
type EventFilter struct {
	// SiteIDs restricts to these sites (the caller's scope); nil: every
	// site. An empty non-nil slice matches nothing.
	SiteIDs        []string
	OrganisationID string
	SiteID         string
	DeviceID       string
	From, To       time.Time // From inclusive, To exclusive
	MinSeverity    protocol.Severity
	Category       protocol.Category
	Limit          int // default and maximum 10,000
}

// MaxEventRows bounds one query's answer.
const MaxEventRows = 10_000

// Events returns the events matching f, oldest first.
func (s *Store) Events(ctx context.Context, f EventFilter) ([]StoredEvent, error) {
	var where []string
	var args []any
	if f.SiteIDs != nil {
		if len(f.SiteIDs) == 0 {
			return nil, nil
		}
		where = append(where, "e.site_id IN ("+placeholders(len(f.SiteIDs))+")")
		args = appendAll(args, f.SiteIDs)
	}
	add := func(cond string, v any) {
		where = append(where, cond)
		args = append(args, v)
	}
	if f.OrganisationID != "" {
		add("s.organisation_id = ?", f.OrganisationID)
	}
	if f.SiteID != "" {
		add("e.site_id = ?", f.SiteID)
	}
	if f.DeviceID != "" {
		add("e.device_id = ?", f.DeviceID)
	}
	if !f.From.IsZero() {
		add("e.event_time >= ?", formatTime(f.From))
	}
	if !f.To.IsZero() {
		add("e.event_time < ?", formatTime(f.To))
	}
	if f.MinSeverity != "" {
		add("e.severity_rank >= ?", f.MinSeverity.Rank())
	}
	if f.Category != "" {
		add("e.category = ?", string(f.Category))
	}
	if f.Limit <= 0 || f.Limit > MaxEventRows {
		f.Limit = MaxEventRows
	}
	query := `SELECT e.device_id, e.site_id, s.organisation, e.seq, e.event_time, e.source, e.category, e.severity, e.message, e.fields, e.dropped, e.received_at
		FROM device_events e JOIN sites s ON s.id = e.site_id`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += fmt.Sprintf(" ORDER BY e.event_time, e.device_id, e.seq LIMIT %d", f.Limit)
	rows, err := s.direct().query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query events: %w", err)
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (StoredEvent, error) {
		var e StoredEvent
		var at, received, fields string
		var seq, dropped int64
		if err := sc.Scan(&e.DeviceID, &e.SiteID, &e.Organisation, &seq, &at, &e.Source, &e.Category, &e.Severity, &e.Message, &fields, &dropped, &received); err != nil {
			return e, err
		}
		e.Seq, e.Dropped, e.Time, e.ReceivedAt = uint64(seq), uint64(dropped), parseTime(at), parseTime(received)
		if fields != "{}" {
			json.Unmarshal([]byte(fields), &e.Fields)
		}
		return e, nil
	})
}

// A Gap is a run of sequence numbers a device used (a later one arrived)
// for which the server holds neither a report nor an event.
type Gap struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"` // inclusive
}

// SeqGaps returns the gaps in a device's sequence across state reports and
// events, the highest sequence number received, and the number of entries
// the device said it dropped from its full buffer.
func (s *Store) SeqGaps(ctx context.Context, deviceID string) (gaps []Gap, last, dropped uint64, err error) {
	rows, err := s.direct().query(ctx, `SELECT seq, dropped FROM device_reports WHERE device_id = ?
		UNION ALL SELECT seq, dropped FROM device_events WHERE device_id = ? ORDER BY 1`, deviceID, deviceID)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("read device sequence: %w", err)
	}
	defer rows.Close()
	next := uint64(1)
	for rows.Next() {
		var seq, d int64
		if err := rows.Scan(&seq, &d); err != nil {
			return nil, 0, 0, err
		}
		dropped += uint64(d)
		if uint64(seq) > next {
			gaps = append(gaps, Gap{From: next, To: uint64(seq) - 1})
		}
		if uint64(seq) >= next {
			next = uint64(seq) + 1
		}
	}
	return gaps, next - 1, dropped, rows.Err()
}

// CountEvents counts the stored events of a device, or of every device
// when deviceID is empty.
func (s *Store) CountEvents(ctx context.Context, deviceID string) (int64, error) {
	var n int64
	var err error
	if deviceID == "" {
		err = s.direct().queryRow(ctx, `SELECT COUNT(*) FROM device_events`).Scan(&n)
	} else {
		err = s.direct().queryRow(ctx, `SELECT COUNT(*) FROM device_events WHERE device_id = ?`, deviceID).Scan(&n)
	}
	if err != nil {
		return 0, fmt.Errorf("count events: %w", err)
	}
	return n, nil
}
