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

func recordReport(ctx context.Context, q *txq, deviceID string, r *protocol.StateReport, received time.Time) (bool, error) {
	var one int
	if err := q.queryRow(ctx, `SELECT 1 FROM devices WHERE id = ?`, deviceID).Scan(&one); err != nil {
		return false, notFound(err, fmt.Sprintf("device %q", deviceID))
	}
	res, err := q.exec(ctx, `INSERT INTO device_reports (device_id, seq, state, running, target, version, reason, dropped, reported_at, received_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING`,
		deviceID, int64(r.Seq), r.State, r.Running, r.Target, r.Version, r.Reason, int64(r.Dropped), formatTime(r.Time), formatTime(received))
	if err != nil {
		return false, fmt.Errorf("insert report: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil
	}
	var releaseID sql.NullString
	if r.Target != "" {
		err := q.queryRow(ctx, `SELECT id FROM releases WHERE target_path = ?`, r.Target).Scan(&releaseID)
		if err != nil && err != sql.ErrNoRows {
			return false, err
		}
	}
	_, err = q.exec(ctx, `UPDATE devices SET state = ?, state_reason = ?, state_release_id = ?, installed_version = ?, last_seq = ?
		WHERE id = ? AND last_seq < ?`,
		r.State, r.Reason, releaseID, r.Running, int64(r.Seq), deviceID, int64(r.Seq))
	if err != nil {
		return false, fmt.Errorf("update device state: %w", err)
	}
	if _, err = q.exec(ctx, `UPDATE devices SET last_seen = ? WHERE id = ?`, formatTime(received), deviceID); err != nil {
		return false, err
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
	defer rows.Close()
	var out []Report
	for rows.Next() {
		var r Report
		var reported, received string
		if err := rows.Scan(&r.Seq, &r.State, &r.Running, &r.Target, &r.Version, &r.Reason, &r.Dropped, &reported, &received); err != nil {
			return nil, err
		}
		r.ReportedAt, r.ReceivedAt = parseTime(reported), parseTime(received)
		out = append(out, r)
	}
	return out, rows.Err()
}
