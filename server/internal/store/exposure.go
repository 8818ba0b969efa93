package store

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
)

// patchStatusSQL derives a device's PatchStatus in SQL, as statusOf does in
// Go: d is the device, a its assignment, t the assigned release.
const patchStatusSQL = `CASE
	WHEN a.release_id IS NULL OR t.version = d.installed_version THEN 'current'
	WHEN d.state_release_id IS NULL OR d.state_release_id <> a.release_id THEN 'pending'
	WHEN d.state IN ('failed', 'rolled-back') THEN 'failed'
	WHEN d.state IN ('downloading', 'verified', 'installed', 'booted') THEN 'installing'
	ELSE 'pending' END`

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
// sites (nil: all). Results are by organisation, site, release and status.
//
// It counts in two queries so that 100,000 devices take tens of
// milliseconds: every running device from the (model, installed_version,
// site_id) index alone, then only the devices that have an assignment,
// whose status needs their state and the assigned release. A device
// without an assignment is current.
func (s *Store) ExposureGroups(ctx context.Context, releaseIDs, siteIDs []string) ([]ExposureGroup, error) {
	running, where, args, err := s.exposedFilter(ctx, releaseIDs, siteIDs)
	if err != nil || where == "" {
		return nil, err
	}
	type key struct{ site, model, version, target, status string }
	counts := map[key]int{}
	exposed := 0
	rows, err := s.direct().query(ctx, `SELECT d.site_id, d.model, d.installed_version, COUNT(*) FROM devices d WHERE `+where+`
		GROUP BY d.site_id, d.model, d.installed_version`, args...)
	if err != nil {
		return nil, fmt.Errorf("count exposed devices: %w", err)
	}
	for rows.Next() {
		var k key
		var n int
		if err := rows.Scan(&k.site, &k.model, &k.version, &n); err != nil {
			rows.Close()
			return nil, err
		}
		k.status = string(StatusCurrent)
		counts[k] += n
		exposed += n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// Visit the smaller side: with fewer assignments than exposed devices,
	// walk the assignments and look each device up (CROSS JOIN fixes that
	// order in SQLite; PostgreSQL plans it as an inner join either way).
	var assigned int
	if err := s.direct().queryRow(ctx, `SELECT COUNT(*) FROM assignments`).Scan(&assigned); err != nil {
		return nil, err
	}
	from := `devices d JOIN assignments a ON a.device_id = d.id`
	if assigned < exposed {
		from = `assignments a CROSS JOIN devices d`
	}
	rows, err = s.direct().query(ctx, `SELECT d.site_id, d.model, d.installed_version, a.release_id, `+patchStatusSQL+` AS status, COUNT(*)
		FROM `+from+` JOIN releases t ON t.id = a.release_id WHERE d.id = a.device_id AND (`+where+`)
		GROUP BY d.site_id, d.model, d.installed_version, a.release_id, status`, args...)
	if err != nil {
		return nil, fmt.Errorf("count exposed devices with assignments: %w", err)
	}
	for rows.Next() {
		var k key
		var n int
		if err := rows.Scan(&k.site, &k.model, &k.version, &k.target, &k.status, &n); err != nil {
			rows.Close()
			return nil, err
		}
		counts[k] += n
		// These devices were counted as current without an assignment.
		counts[key{site: k.site, model: k.model, version: k.version, status: string(StatusCurrent)}] -= n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	sites, err := s.Sites(ctx)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]Site, len(sites))
	for _, st := range sites {
		byID[st.ID] = st
	}
	var out []ExposureGroup
	for k, n := range counts {
		if n <= 0 {
			continue
		}
		for _, rel := range running[[2]string{k.model, k.version}] {
			st := byID[k.site]
			out = append(out, ExposureGroup{SiteID: k.site, SiteName: st.Name, Organisation: st.Organisation, ReleaseID: rel,
				TargetReleaseID: k.target, Status: PatchStatus(k.status), Devices: n})
		}
	}
	slices.SortFunc(out, func(a, b ExposureGroup) int {
		return cmp.Or(strings.Compare(a.Organisation, b.Organisation), strings.Compare(a.SiteName, b.SiteName), strings.Compare(a.SiteID, b.SiteID),
			strings.Compare(a.ReleaseID, b.ReleaseID), strings.Compare(string(a.Status), string(b.Status)), strings.Compare(a.TargetReleaseID, b.TargetReleaseID))
	})
	return out, nil
}

// exposedFilter maps (model, version) to the given releases that run with
// it, and returns a WHERE clause on devices d selecting the devices that
// run them at siteIDs (nil: all sites); "" when none can.
func (s *Store) exposedFilter(ctx context.Context, releaseIDs, siteIDs []string) (map[[2]string][]string, string, []any, error) {
	if len(releaseIDs) == 0 || (siteIDs != nil && len(siteIDs) == 0) {
		return nil, "", nil, nil
	}
	running, where, args, err := s.runningReleases(ctx, releaseIDs)
	if err != nil || where == "" || siteIDs == nil {
		return running, where, args, err
	}
	return running, "(" + where + ") AND d.site_id IN (" + placeholders(len(siteIDs)) + ")", appendAll(args, siteIDs), nil
}

// runningReleases maps (model, version) to the given releases that run
// with it, and returns a WHERE clause on devices d selecting those pairs.
func (s *Store) runningReleases(ctx context.Context, releaseIDs []string) (map[[2]string][]string, string, []any, error) {
	rows, err := s.direct().query(ctx, `SELECT rm.model, r.version, r.id FROM release_models rm JOIN releases r ON r.id = rm.release_id
		WHERE r.id IN (`+placeholders(len(releaseIDs))+`) ORDER BY rm.model, r.version, r.id`, appendAll(nil, releaseIDs)...)
	if err != nil {
		return nil, "", nil, err
	}
	defer rows.Close()
	running := map[[2]string][]string{}
	versions := map[string][]string{}
	var models []string
	for rows.Next() {
		var model, version, id string
		if err := rows.Scan(&model, &version, &id); err != nil {
			return nil, "", nil, err
		}
		k := [2]string{model, version}
		if len(running[k]) == 0 {
			if len(versions[model]) == 0 {
				models = append(models, model)
			}
			versions[model] = append(versions[model], version)
		}
		running[k] = append(running[k], id)
	}
	if err := rows.Err(); err != nil {
		return nil, "", nil, err
	}
	var ors []string
	var args []any
	for _, m := range models {
		ors = append(ors, "(d.model = ? AND d.installed_version IN ("+placeholders(len(versions[m]))+"))")
		args = appendAll(append(args, m), versions[m])
	}
	return running, strings.Join(ors, " OR "), args, nil
}

// An ExposedDevice is a device running an affected release.
type ExposedDevice struct {
	DevicePatch
	ReleaseID string `json:"release_id"`
}

// ExposedDevices lists up to limit devices running any of releaseIDs at
// siteIDs (nil: all sites), by site and device ID.
func (s *Store) ExposedDevices(ctx context.Context, releaseIDs, siteIDs []string, limit int) ([]ExposedDevice, error) {
	running, where, args, err := s.exposedFilter(ctx, releaseIDs, siteIDs)
	if err != nil || where == "" {
		return nil, err
	}
	rows, err := s.direct().query(ctx, `SELECT `+deviceColumns+`, a.release_id, t.version FROM devices d
		LEFT JOIN assignments a ON a.device_id = d.id LEFT JOIN releases t ON t.id = a.release_id
		WHERE `+where+` ORDER BY d.site_id, d.id LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (ExposedDevice, error) {
		var target, targetVersion sql.NullString
		d, err := scanDevice(sc, &target, &targetVersion)
		if err != nil {
			return ExposedDevice{}, err
		}
		e := ExposedDevice{DevicePatch: DevicePatch{Device: d, TargetReleaseID: target.String, TargetVersion: targetVersion.String}}
		e.Status = statusOf(e.DevicePatch)
		e.ReleaseID = running[[2]string{d.Model, d.InstalledVersion}][0]
		return e, nil
	})
}
