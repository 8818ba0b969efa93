package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

// The compliance statuses of a device, beyond current, pending, installing
// and failed.
const (
	StatusDeclined PatchStatus = "declined" // its site declined the patch
	StatusDeferred PatchStatus = "deferred" // its site deferred the patch
)

// A DeviceCompliance is where one device stands against the patches meant
// for it.
type DeviceCompliance struct {
	DeviceID         string         `json:"device_id"`
	SiteID           string         `json:"site_id"`
	InstalledVersion string         `json:"installed_version"`
	TargetVersion    string         `json:"target_version,omitempty"`
	State            protocol.State `json:"state"`
	Status           PatchStatus    `json:"status"`
	// AwaitingApproval: pending because its site has not approved yet.
	AwaitingApproval bool      `json:"awaiting_approval,omitempty"`
	Reason           string    `json:"reason,omitempty"` // why failed, held, deferred or declined
	RolloutID        string    `json:"rollout_id,omitempty"`
	LastSeen         time.Time `json:"last_seen,omitzero"`
}

// ComplianceCounts counts the devices of a site or organisation by status.
type ComplianceCounts struct {
	Total            int `json:"total"`
	Current          int `json:"current"`
	Pending          int `json:"pending"`
	AwaitingApproval int `json:"awaiting_approval"` // of Pending
	Installing       int `json:"installing"`
	Failed           int `json:"failed"`
	Declined         int `json:"declined"`
	Deferred         int `json:"deferred"`
}

func (c *ComplianceCounts) add(d DeviceCompliance) {
	c.Total++
	switch d.Status {
	case StatusCurrent:
		c.Current++
	case StatusPending:
		c.Pending++
		if d.AwaitingApproval {
			c.AwaitingApproval++
		}
	case StatusInstalling:
		c.Installing++
	case StatusFailed:
		c.Failed++
	case StatusDeclined:
		c.Declined++
	case StatusDeferred:
		c.Deferred++
	}
}

// A Decline is a patch a site declined: risk that stays visible.
type Decline struct {
	SiteID    string    `json:"site_id"`
	RolloutID string    `json:"rollout_id"`
	Product   string    `json:"product"`
	Version   string    `json:"version"`
	Notes     string    `json:"notes,omitempty"` // the release notes: what it fixes
	Reason    string    `json:"reason"`
	Actor     string    `json:"actor"`
	DecidedAt time.Time `json:"decided_at"`
}

// SiteCompliance is the compliance of one site.
type SiteCompliance struct {
	Site     Site               `json:"site"`
	Counts   ComplianceCounts   `json:"counts"`
	Declined []Decline          `json:"declined,omitempty"`
	Devices  []DeviceCompliance `json:"devices,omitempty"`
}

// complianceQuery joins each device of a site with its assignment and the
// newest rollout it belongs to (a window function over the site's rollout
// rows, served by the rollout_devices_site index).
const complianceQuery = `WITH latest AS (SELECT device_id, state, reason, rollout_id,
		ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY joined_at DESC, rollout_id DESC) AS n
		FROM rollout_devices WHERE site_id = ?)
	SELECT d.id, d.site_id, d.installed_version, d.state, d.state_reason, d.state_release_id, d.last_seen,
	a.release_id, r.version, rd.state, rd.reason, rd.rollout_id
	FROM devices d
	LEFT JOIN assignments a ON a.device_id = d.id
	LEFT JOIN releases r ON r.id = a.release_id
	LEFT JOIN latest rd ON rd.device_id = d.id AND rd.n = 1
	WHERE d.site_id = ? ORDER BY d.id`

func (s *Store) eachCompliance(ctx context.Context, siteID string, fn func(DeviceCompliance)) error {
	rows, err := s.direct().query(ctx, complianceQuery, siteID, siteID)
	if err != nil {
		return fmt.Errorf("query compliance: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d DeviceCompliance
		var stateReason string
		var stateRelease, lastSeen, relID, version, rdState, rdReason, rdRollout sql.NullString
		if err := rows.Scan(&d.DeviceID, &d.SiteID, &d.InstalledVersion, &d.State, &stateReason, &stateRelease, &lastSeen,
			&relID, &version, &rdState, &rdReason, &rdRollout); err != nil {
			return err
		}
		d.LastSeen, d.TargetVersion, d.RolloutID = parseNullTime(lastSeen), version.String, rdRollout.String
		assignedElsewhere := relID.Valid && version.String != d.InstalledVersion
		switch {
		case rdState.String == "declined":
			d.Status, d.Reason = StatusDeclined, rdReason.String
		case rdState.String == "deferred":
			d.Status, d.Reason = StatusDeferred, rdReason.String
		case rdState.String == "held":
			d.Status, d.Reason, d.AwaitingApproval = StatusPending, rdReason.String, true
		case assignedElsewhere && stateRelease.String == relID.String && (d.State == protocol.StateFailed || d.State == protocol.StateRolledBack):
			d.Status, d.Reason = StatusFailed, stateReason
		case assignedElsewhere && stateRelease.String == relID.String && d.State.InProgress():
			d.Status = StatusInstalling
		case assignedElsewhere, rdState.String == "queued", rdState.String == "selected":
			d.Status, d.Reason = StatusPending, rdReason.String
		default:
			d.Status = StatusCurrent
		}
		fn(d)
	}
	return rows.Err()
}

// SiteDevicesCompliance returns the compliance of one site with every
// device.
func (s *Store) SiteDevicesCompliance(ctx context.Context, siteID string) (SiteCompliance, error) {
	site, err := s.Site(ctx, siteID)
	if err != nil {
		return SiteCompliance{}, err
	}
	sc := SiteCompliance{Site: site, Devices: []DeviceCompliance{}}
	err = s.eachCompliance(ctx, siteID, func(d DeviceCompliance) {
		sc.Counts.add(d)
		sc.Devices = append(sc.Devices, d)
	})
	if err != nil {
		return SiteCompliance{}, err
	}
	declines, err := s.declines(ctx, siteID)
	sc.Declined = declines[siteID]
	return sc, err
}

// complianceCounts classifies and counts in the database, the same rules
// as eachCompliance, so only a few rows per site come back. The newest
// rollout row of each device comes from a window function (SQLite 3.25+
// and PostgreSQL).
const complianceCounts = `WITH latest AS (SELECT device_id, state,
		ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY joined_at DESC, rollout_id DESC) AS n FROM rollout_devices)
	SELECT d.site_id, CASE
		WHEN rd.state = 'declined' THEN 'declined'
		WHEN rd.state = 'deferred' THEN 'deferred'
		WHEN rd.state = 'held' THEN 'held'
		WHEN a.release_id IS NOT NULL AND r.version <> d.installed_version AND d.state_release_id = a.release_id
			AND d.state IN ('failed', 'rolled-back') THEN 'failed'
		WHEN a.release_id IS NOT NULL AND r.version <> d.installed_version AND d.state_release_id = a.release_id
			AND d.state IN ('downloading', 'verified', 'installed', 'booted') THEN 'installing'
		WHEN (a.release_id IS NOT NULL AND r.version <> d.installed_version) OR rd.state IN ('queued', 'selected') THEN 'pending'
		ELSE 'current' END AS status, COUNT(*)
	FROM devices d
	LEFT JOIN assignments a ON a.device_id = d.id
	LEFT JOIN releases r ON r.id = a.release_id
	LEFT JOIN latest rd ON rd.device_id = d.id AND rd.n = 1
	GROUP BY 1, 2`

// ComplianceSummary returns the counts of every site, with the patches
// each declined.
func (s *Store) ComplianceSummary(ctx context.Context) ([]SiteCompliance, error) {
	sites, err := s.Sites(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]SiteCompliance, len(sites))
	index := map[string]int{}
	for i, site := range sites {
		out[i] = SiteCompliance{Site: site}
		index[site.ID] = i
	}
	rows, err := s.direct().query(ctx, complianceCounts)
	if err != nil {
		return nil, fmt.Errorf("count compliance: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var siteID, status string
		var n int
		if err := rows.Scan(&siteID, &status, &n); err != nil {
			return nil, err
		}
		i, ok := index[siteID]
		if !ok {
			continue
		}
		c := &out[i].Counts
		c.Total += n
		switch PatchStatus(status) {
		case StatusCurrent:
			c.Current += n
		case StatusPending:
			c.Pending += n
		case "held":
			c.Pending += n
			c.AwaitingApproval += n
		case StatusInstalling:
			c.Installing += n
		case StatusFailed:
			c.Failed += n
		case StatusDeclined:
			c.Declined += n
		case StatusDeferred:
			c.Deferred += n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	declines, err := s.declines(ctx, "")
	for i := range out {
		out[i].Declined = declines[out[i].Site.ID]
	}
	return out, err
}

func (s *Store) declines(ctx context.Context, siteID string) (map[string][]Decline, error) {
	q := `SELECT sd.site_id, sd.rollout_id, r.product, r.version, r.manifest, sd.reason, sd.actor, sd.decided_at FROM site_decisions sd
		JOIN rollouts ro ON ro.id = sd.rollout_id JOIN releases r ON r.id = ro.release_id WHERE sd.decision = 'declined'`
	var args []any
	if siteID != "" {
		q, args = q+" AND sd.site_id = ?", []any{siteID}
	}
	rows, err := s.direct().query(ctx, q+" ORDER BY sd.decided_at", args...)
	if err != nil {
		return nil, fmt.Errorf("query declined patches: %w", err)
	}
	defer rows.Close()
	out := map[string][]Decline{}
	for rows.Next() {
		var d Decline
		var manifest, decided string
		if err := rows.Scan(&d.SiteID, &d.RolloutID, &d.Product, &d.Version, &manifest, &d.Reason, &d.Actor, &decided); err != nil {
			return nil, err
		}
		d.DecidedAt = parseTime(decided)
		d.Notes = manifestNotes(manifest)
		out[d.SiteID] = append(out[d.SiteID], d)
	}
	return out, rows.Err()
}

func manifestNotes(manifest string) string {
	var m struct {
		Notes string `json:"notes"`
	}
	json.Unmarshal([]byte(manifest), &m)
	return m.Notes
}

// OrganisationCompliance is the compliance of one organisation: the sum of
// its sites.
type OrganisationCompliance struct {
	Organisation string           `json:"organisation"`
	Sites        int              `json:"sites"`
	Counts       ComplianceCounts `json:"counts"`
	Declined     int              `json:"declined_patches"`
}

// ByOrganisation sums site compliance per organisation, by name.
func ByOrganisation(sites []SiteCompliance) []OrganisationCompliance {
	index := map[string]int{}
	var out []OrganisationCompliance
	for _, s := range sites {
		i, ok := index[s.Site.Organisation]
		if !ok {
			i = len(out)
			index[s.Site.Organisation] = i
			out = append(out, OrganisationCompliance{Organisation: s.Site.Organisation})
		}
		o := &out[i]
		o.Sites++
		o.Declined += len(s.Declined)
		c, add := &o.Counts, s.Counts
		c.Total += add.Total
		c.Current += add.Current
		c.Pending += add.Pending
		c.AwaitingApproval += add.AwaitingApproval
		c.Installing += add.Installing
		c.Failed += add.Failed
		c.Declined += add.Declined
		c.Deferred += add.Deferred
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Organisation < out[j].Organisation })
	return out
}
