package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// A Selector says which devices a rollout targets. Models defaults to the
// release's models; an empty SiteIDs means every site.
type Selector struct {
	Models  []string `json:"models,omitempty"`
	SiteIDs []string `json:"site_ids,omitempty"`
}

// A Rollout assigns a release to the devices its selector matched.
type Rollout struct {
	ID        string    `json:"id"`
	ReleaseID string    `json:"release_id"`
	Selector  Selector  `json:"selector"`
	CreatedAt time.Time `json:"created_at"`
	Devices   []string  `json:"devices"` // IDs of the devices assigned
}

// CreateRollout records a rollout and makes its release the assignment of
// each of its devices, replacing any earlier assignment.
func (s *Store) CreateRollout(ctx context.Context, r Rollout) error {
	sel, err := json.Marshal(r.Selector)
	if err != nil {
		return err
	}
	return s.tx(ctx, func(q *txq) error {
		if _, err := q.exec(ctx, `INSERT INTO rollouts (id, release_id, selector, created_at) VALUES (?, ?, ?, ?)`,
			r.ID, r.ReleaseID, string(sel), formatTime(r.CreatedAt)); err != nil {
			return fmt.Errorf("insert rollout: %w", err)
		}
		for _, id := range r.Devices {
			if _, err := q.exec(ctx, `INSERT INTO assignments (device_id, rollout_id, release_id, assigned_at) VALUES (?, ?, ?, ?)
				ON CONFLICT (device_id) DO UPDATE SET rollout_id = excluded.rollout_id,
				release_id = excluded.release_id, assigned_at = excluded.assigned_at`,
				id, r.ID, r.ReleaseID, formatTime(r.CreatedAt)); err != nil {
				return fmt.Errorf("assign device %s: %w", id, err)
			}
		}
		return nil
	})
}

// Assignment returns the rollout and release a device is assigned, or
// ok == false when it has none.
func (s *Store) Assignment(ctx context.Context, deviceID string) (rolloutID string, r Release, ok bool, err error) {
	row := s.direct().queryRow(ctx, `SELECT a.rollout_id, `+releaseColumns+` FROM assignments a
		JOIN releases r ON r.id = a.release_id WHERE a.device_id = ?`, deviceID)
	var rid string
	r, err = scanRelease(scanPrefix{row, &rid})
	if err == sql.ErrNoRows {
		return "", Release{}, false, nil
	}
	if err != nil {
		return "", Release{}, false, err
	}
	return rid, r, true, nil
}

// scanPrefix scans leading columns into prefix before handing the rest on.
type scanPrefix struct {
	sc     interface{ Scan(...any) error }
	prefix *string
}

func (p scanPrefix) Scan(dest ...any) error {
	return p.sc.Scan(append([]any{p.prefix}, dest...)...)
}

// RecordReport stores a state report from a device once. It returns false,
// changing nothing, when the device already sent a report with this
// sequence number (a redelivery). A report older than the device's newest
// is kept in its history but does not change the device's current state.
func (s *Store) RecordReport(ctx context.Context, deviceID string, r *protocol.StateReport, received time.Time) (bool, error) {
	res, err := s.RecordReports(ctx, []ReportIn{{DeviceID: deviceID, Report: r, Received: received}})
	if err != nil {
		return false, err
	}
	return res[0].Inserted, res[0].Err
}

// A ReportIn is one state report to store.
type ReportIn struct {
	DeviceID string
	Report   *protocol.StateReport
	Received time.Time
}

// A ReportResult says how storing one report ended.
type ReportResult struct {
	Inserted bool  // false: a redelivery, nothing changed
	Err      error // wraps problem.ErrNotFound for a device that is not enrolled
}

// RecordReports stores reports as RecordReport does, in one transaction
// (a group commit). A report from a device that is not enrolled gets its
// own error and the others are stored; any other failure stores none and
// is returned.
func (s *Store) RecordReports(ctx context.Context, reports []ReportIn) ([]ReportResult, error) {
	out := make([]ReportResult, len(reports))
	err := s.tx(ctx, func(q *txq) error {
		for i, in := range reports {
			inserted, err := recordReport(ctx, q, in.DeviceID, in.Report, in.Received)
			if errors.Is(err, problem.ErrNotFound) {
				out[i] = ReportResult{Err: err}
				continue
			}
			if err != nil {
				return err
			}
			out[i] = ReportResult{Inserted: inserted}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// recordReport stores one report in two statements: the insert, which
// also checks the device exists, and one update of the device's state
// and last_seen. Only a report that inserts nothing (a redelivery, or an
// unknown device) takes a third to tell the two apart.
func recordReport(ctx context.Context, q *txq, deviceID string, r *protocol.StateReport, received time.Time) (bool, error) {
	res, err := q.execRepeated(ctx, `INSERT INTO device_reports (device_id, seq, state, running, target, version, reason, dropped, reported_at, received_at)
		SELECT id, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM devices WHERE id = ?
		ON CONFLICT (device_id, seq) DO NOTHING`,
		int64(r.Seq), r.State, r.Running, r.Target, r.Version, r.Reason, int64(r.Dropped), formatTime(r.Time), formatTime(received), deviceID)
	if err != nil {
		return false, fmt.Errorf("insert report: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var one int
		if err := q.queryRow(ctx, `SELECT 1 FROM devices WHERE id = ?`, deviceID).Scan(&one); err != nil {
			return false, notFound(err, fmt.Sprintf("device %q", deviceID))
		}
		return false, nil
	}
	// In an UPDATE every expression reads the row as it was, so each CASE
	// sees the old last_seq: an older report changes only last_seen.
	// A report without a target names no release.
	_, err = q.execRepeated(ctx, `UPDATE devices SET
		state = CASE WHEN last_seq < ? THEN ? ELSE state END,
		state_reason = CASE WHEN last_seq < ? THEN ? ELSE state_reason END,
		state_release_id = CASE WHEN last_seq < ? THEN (SELECT id FROM releases WHERE target_path = ? AND target_path <> '') ELSE state_release_id END,
		installed_version = CASE WHEN last_seq < ? THEN ? ELSE installed_version END,
		last_seq = CASE WHEN last_seq < ? THEN ? ELSE last_seq END,
		last_seen = ?
		WHERE id = ?`,
		int64(r.Seq), r.State, int64(r.Seq), r.Reason, int64(r.Seq), r.Target, int64(r.Seq), r.Running, int64(r.Seq), int64(r.Seq),
		formatTime(received), deviceID)
	if err != nil {
		return false, fmt.Errorf("update device state: %w", err)
	}
	return true, nil
}

// A Report is one stored state report.
type Report struct {
	Seq        uint64         `json:"seq"`
	State      protocol.State `json:"state"`
	Running    string         `json:"running"`
	Target     string         `json:"target,omitempty"`
	Version    string         `json:"version,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	Dropped    uint64         `json:"dropped,omitempty"`
	ReportedAt time.Time      `json:"reported_at"`
	ReceivedAt time.Time      `json:"received_at"`
}

// Reports returns a device's state reports, oldest first.
func (s *Store) Reports(ctx context.Context, deviceID string) ([]Report, error) {
	rows, err := s.direct().query(ctx, `SELECT seq, state, running, target, version, reason, dropped, reported_at, received_at
		FROM device_reports WHERE device_id = ? ORDER BY seq`, deviceID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (Report, error) {
		var r Report
		var reported, received string
		err := sc.Scan(&r.Seq, &r.State, &r.Running, &r.Target, &r.Version, &r.Reason, &r.Dropped, &reported, &received)
		r.ReportedAt, r.ReceivedAt = parseTime(reported), parseTime(received)
		return r, err
	})
}
