package store

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/aftercare/aftercare/protocol"
)

// PatchStatus sums up where a device stands against its assignment.
type PatchStatus string

// The patch statuses of a device.
const (
	// StatusCurrent: the device runs its assigned release, or has none.
	StatusCurrent PatchStatus = "current"
	// StatusPending: assigned a release it has not started installing.
	StatusPending PatchStatus = "pending"
	// StatusInstalling: an install of the assigned release is under way.
	StatusInstalling PatchStatus = "installing"
	// StatusFailed: the last install of the assigned release failed or rolled back.
	StatusFailed PatchStatus = "failed"
)

// A DevicePatch is a device with its assignment and patch status.
type DevicePatch struct {
	Device
	TargetReleaseID string      `json:"target_release_id,omitempty"`
	TargetVersion   string      `json:"target_version,omitempty"`
	Status          PatchStatus `json:"status"`
}

// PatchCounts counts a group of devices by patch status and by version.
type PatchCounts struct {
	Total      int            `json:"total"`
	Current    int            `json:"current"`
	Pending    int            `json:"pending"`
	Installing int            `json:"installing"`
	Failed     int            `json:"failed"`
	Versions   map[string]int `json:"versions"` // installed version -> devices
}

func (c *PatchCounts) add(d DevicePatch) {
	c.Total++
	switch d.Status {
	case StatusCurrent:
		c.Current++
	case StatusPending:
		c.Pending++
	case StatusInstalling:
		c.Installing++
	case StatusFailed:
		c.Failed++
	}
	if c.Versions == nil {
		c.Versions = map[string]int{}
	}
	c.Versions[d.InstalledVersion]++
}

// statusOf derives a device's patch status from its state and assignment.
func statusOf(d DevicePatch) PatchStatus {
	switch {
	case d.TargetReleaseID == "" || d.TargetVersion == d.InstalledVersion:
		return StatusCurrent
	case d.StateReleaseID != d.TargetReleaseID:
		return StatusPending
	case d.State == protocol.StateFailed || d.State == protocol.StateRolledBack:
		return StatusFailed
	case d.State.InProgress():
		return StatusInstalling
	}
	return StatusPending
}

// SitePatch is the patch state of one site.
type SitePatch struct {
	Site    Site          `json:"site"`
	Counts  PatchCounts   `json:"counts"`
	Devices []DevicePatch `json:"devices,omitempty"`
}

// SitePatchState returns the patch state of a site and each of its devices.
func (s *Store) SitePatchState(ctx context.Context, siteID string) (SitePatch, error) {
	site, err := s.Site(ctx, siteID)
	if err != nil {
		return SitePatch{}, err
	}
	sp := SitePatch{Site: site, Counts: PatchCounts{Versions: map[string]int{}}}
	err = s.eachDevicePatch(ctx, "WHERE d.site_id = ?", []any{siteID}, func(d DevicePatch) {
		sp.Counts.add(d)
		sp.Devices = append(sp.Devices, d)
	})
	return sp, err
}

// PatchSummary returns the counts of every site, without device lists.
func (s *Store) PatchSummary(ctx context.Context) ([]SitePatch, error) {
	sites, err := s.Sites(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]SitePatch, len(sites))
	index := map[string]int{}
	for i, site := range sites {
		out[i] = SitePatch{Site: site, Counts: PatchCounts{Versions: map[string]int{}}}
		index[site.ID] = i
	}
	err = s.eachDevicePatch(ctx, "", nil, func(d DevicePatch) {
		out[index[d.SiteID]].Counts.add(d)
	})
	return out, err
}

func (s *Store) eachDevicePatch(ctx context.Context, where string, args []any, fn func(DevicePatch)) error {
	rows, err := s.direct().query(ctx, `SELECT `+deviceColumns+`, a.release_id, r.version FROM devices d
		LEFT JOIN assignments a ON a.device_id = d.id
		LEFT JOIN releases r ON r.id = a.release_id `+where+` ORDER BY d.id`, args...)
	if err != nil {
		return fmt.Errorf("query patch state: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var releaseID, version sql.NullString
		d, err := scanDevice(rows, &releaseID, &version)
		if err != nil {
			return err
		}
		dp := DevicePatch{Device: d, TargetReleaseID: releaseID.String, TargetVersion: version.String}
		dp.Status = statusOf(dp)
		fn(dp)
	}
	return rows.Err()
}
