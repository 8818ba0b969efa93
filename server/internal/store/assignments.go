package store

import (
	"context"
	"fmt"
)

// A DeviceAssignment is one row of the assignments table with the target
// path of its release: what the rollout repository publishes for the
// device.
type DeviceAssignment struct {
	DeviceID   string
	SiteID     string
	RolloutID  string
	ReleaseID  string
	TargetPath string
}

// AssignedDevices returns the IDs of every device that has an assignment.
func (s *Store) AssignedDevices(ctx context.Context) ([]string, error) {
	rows, err := s.direct().query(ctx, `SELECT device_id FROM assignments`)
	if err != nil {
		return nil, fmt.Errorf("list assigned devices: %w", err)
	}
	return collect(rows, scanString)
}

// assignmentsChunk bounds the IN list of one query, far below SQLite's and
// PostgreSQL's limits on bound parameters.
const assignmentsChunk = 500

// AssignmentsOf returns the assignments of the given devices; devices
// without one are left out.
func (s *Store) AssignmentsOf(ctx context.Context, deviceIDs []string) ([]DeviceAssignment, error) {
	var out []DeviceAssignment
	for start := 0; start < len(deviceIDs); start += assignmentsChunk {
		chunk := deviceIDs[start:min(start+assignmentsChunk, len(deviceIDs))]
		rows, err := s.direct().query(ctx, `SELECT a.device_id, d.site_id, a.rollout_id, a.release_id, r.target_path
			FROM assignments a JOIN releases r ON r.id = a.release_id JOIN devices d ON d.id = a.device_id
			WHERE a.device_id IN (`+placeholders(len(chunk))+`)`, appendAll(nil, chunk)...)
		if err != nil {
			return nil, fmt.Errorf("read assignments: %w", err)
		}
		part, err := collect(rows, func(sc interface{ Scan(...any) error }) (DeviceAssignment, error) {
			var a DeviceAssignment
			err := sc.Scan(&a.DeviceID, &a.SiteID, &a.RolloutID, &a.ReleaseID, &a.TargetPath)
			return a, err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, part...)
	}
	return out, nil
}
