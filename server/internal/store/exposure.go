package store

import (
	"context"
	"database/sql"
)

// patchStatusSQL derives a device's PatchStatus in SQL, as statusOf does in
// Go: d is the device, a its assignment, t the assigned release.
const patchStatusSQL = `CASE
	WHEN a.release_id IS NULL OR t.version = d.installed_version THEN 'current'
	WHEN d.state_release_id IS NULL OR d.state_release_id <> a.release_id THEN 'pending'
	WHEN d.state IN ('failed', 'rolled-back') THEN 'failed'
	WHEN d.state IN ('downloading', 'verified', 'installed', 'booted') THEN 'installing'
	ELSE 'pending' END`

// runningJoin joins the devices running each release (same model,
// installed version) with their assignment.
const runningJoin = ` FROM release_models rm
	JOIN releases r ON r.id = rm.release_id
	JOIN devices d ON d.model = rm.model AND d.installed_version = r.version
	JOIN sites s ON s.id = d.site_id
	LEFT JOIN assignments a ON a.device_id = d.id
	LEFT JOIN releases t ON t.id = a.release_id `

// An ExposureGroup counts the devices of one site that run one release, by
// patch status and by the release they are assigned.
type ExposureGroup struct {
	SiteID          string      `json:"site_id"`
	SiteName        string      `json:"site_name"`
	Organisation    string      `json:"organisation"`
	ReleaseID       string      `json:"release_id"`
	TargetReleaseID string      `json:"target_release_id,omitempty"`
	Status          PatchStatus `json:"status"`
	Devices         int         `json:"devices"`
}

// ExposureGroups counts the devices running any of releaseIDs, grouped by
// site, release, assigned release and patch status; siteIDs limits the
// sites (nil: all).
func (s *Store) ExposureGroups(ctx context.Context, releaseIDs, siteIDs []string) ([]ExposureGroup, error) {
	where, args, ok := exposureWhere(releaseIDs, siteIDs)
	if !ok {
		return nil, nil
	}
	rows, err := s.direct().query(ctx, `SELECT s.id, s.name, s.organisation, rm.release_id, COALESCE(a.release_id, ''), `+patchStatusSQL+` AS status, COUNT(*)`+
		runningJoin+where+` GROUP BY s.id, s.name, s.organisation, rm.release_id, COALESCE(a.release_id, ''), status
		ORDER BY s.organisation, s.name, rm.release_id, status`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ExposureGroup
	for rows.Next() {
		var g ExposureGroup
		if err := rows.Scan(&g.SiteID, &g.SiteName, &g.Organisation, &g.ReleaseID, &g.TargetReleaseID, &g.Status, &g.Devices); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

func exposureWhere(releaseIDs, siteIDs []string) (string, []any, bool) {
	if len(releaseIDs) == 0 || (siteIDs != nil && len(siteIDs) == 0) {
		return "", nil, false
	}
	where := `WHERE rm.release_id IN (` + placeholders(len(releaseIDs)) + `)`
	args := appendAll(nil, releaseIDs)
	if siteIDs != nil {
		where += ` AND d.site_id IN (` + placeholders(len(siteIDs)) + `)`
		args = appendAll(args, siteIDs)
	}
	return where, args, true
}

// An ExposedDevice is a device running an affected release.
type ExposedDevice struct {
	DevicePatch
	ReleaseID string `json:"release_id"`
}

// ExposedDevices lists up to limit devices running any of releaseIDs at
// siteIDs (nil: all sites), by site and device ID.
func (s *Store) ExposedDevices(ctx context.Context, releaseIDs, siteIDs []string, limit int) ([]ExposedDevice, error) {
	where, args, ok := exposureWhere(releaseIDs, siteIDs)
	if !ok {
		return nil, nil
	}
	rows, err := s.direct().query(ctx, `SELECT `+deviceColumns+`, a.release_id, t.version, rm.release_id`+runningJoin+where+
		` ORDER BY d.site_id, d.id LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ExposedDevice
	for rows.Next() {
		var target, targetVersion sql.NullString
		var e ExposedDevice
		d, err := scanDevice(rows, &target, &targetVersion, &e.ReleaseID)
		if err != nil {
			return nil, err
		}
		e.DevicePatch = DevicePatch{Device: d, TargetReleaseID: target.String, TargetVersion: targetVersion.String}
		e.Status = statusOf(e.DevicePatch)
		out = append(out, e)
	}
	return out, rows.Err()
}
