package vuln

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/vuln/feed"
	"github.com/aftercare/aftercare/server/internal/vuln/match"
)

// An Exposure answers "are we exposed to this vulnerability?".
type Exposure struct {
	VulnID string `json:"vuln_id"`
	// Known says whether any stored advisory describes the vulnerability;
	// false for an answer from a Query.
	Known      bool              `json:"known"`
	Advisories []string          `json:"advisories,omitempty"`
	Summary    string            `json:"summary,omitempty"`
	Severity   string            `json:"severity,omitempty"`
	KEV        *store.KEVEntry   `json:"kev,omitempty"`
	EPSS       *store.EPSSScore  `json:"epss,omitempty"`
	Exposed    bool              `json:"exposed"` // some device runs an affected release
	Releases   []ReleaseExposure `json:"releases"`
	// Organisations groups the devices running affected releases.
	Organisations []OrgExposure         `json:"organisations"`
	Devices       []store.ExposedDevice `json:"devices,omitempty"` // up to the requested limit
	Totals        store.PatchCounts     `json:"totals"`
}

// A ReleaseExposure is one release with the vulnerability.
type ReleaseExposure struct {
	ReleaseID  string              `json:"release_id"`
	Product    string              `json:"product"`
	Version    string              `json:"version"`
	State      string              `json:"state"` // open, patched, or the decision's status
	Affected   bool                `json:"affected"`
	Components []string            `json:"components"` // "name version"
	Rules      []store.FindingRule `json:"rules"`
	Devices    int                 `json:"devices"`
}

// An OrgExposure groups the exposed devices of one organisation.
type OrgExposure struct {
	Organisation string         `json:"organisation"`
	Devices      int            `json:"devices"`
	Sites        []SiteExposure `json:"sites"`
}

// A SiteExposure counts one site's devices running affected releases, by
// live patch status.
type SiteExposure struct {
	SiteID   string            `json:"site_id"`
	SiteName string            `json:"site_name"`
	Counts   store.PatchCounts `json:"counts"`
	// FixAssigned counts devices already assigned a release that does not
	// have the vulnerability: the patch is on its way.
	FixAssigned int `json:"fix_assigned"`
}

// ExposureOptions shape the answer.
type ExposureOptions struct {
	DeviceLimit int // list up to this many devices; 0 lists none
}

// maxDeviceLimit bounds one answer's device list.
const maxDeviceLimit = 10_000

// Exposure answers for a vulnerability in the feeds (by its CVE or
// advisory ID), from the stored findings.
func (s *Service) Exposure(ctx context.Context, scope Scope, vulnID string, opts ExposureOptions) (*Exposure, error) {
	vulnID = strings.TrimSpace(vulnID)
	if !vulnIDPattern.MatchString(vulnID) {
		return nil, problem.Invalid(fmt.Sprintf("vulnerability ID %q must look like CVE-2023-0286", vulnID))
	}
	if feed.ValidCVE(strings.ToUpper(vulnID)) {
		vulnID = strings.ToUpper(vulnID)
	}
	e := &Exposure{VulnID: vulnID}
	advs, err := s.opts.Store.AdvisoriesByCVE(ctx, vulnID)
	if err != nil {
		return nil, err
	}
	e.Known = len(advs) > 0
	for _, a := range advs {
		e.Advisories = append(e.Advisories, a.ID)
	}
	findings, err := s.opts.Store.Findings(ctx, store.FindingFilter{VulnID: vulnID})
	if err != nil {
		return nil, err
	}
	views, err := s.views(ctx, findings, nil)
	if err != nil {
		return nil, err
	}
	if err := s.enrich(ctx, e); err != nil {
		return nil, err
	}
	return e, s.fillExposure(ctx, scope, e, views, opts)
}

// ExposureQuery answers for a vulnerability given by the asker (not yet
// in the feeds): every release component q names, in q's version range.
func (s *Service) ExposureQuery(ctx context.Context, scope Scope, q match.Query, opts ExposureOptions) (*Exposure, error) {
	if err := q.Validate(); err != nil {
		return nil, problem.InvalidFrom(err)
	}
	e := &Exposure{VulnID: q.VulnID}
	rels, err := s.releasesByID(ctx)
	if err != nil {
		return nil, err
	}
	var views []FindingView
	var problems []string
	err = s.opts.Store.SBOMComponents(ctx, nil, func(c store.SBOMComponent) error {
		h, ok, err := match.MatchQuery(q, match.Component{Name: c.Name, Version: c.Version, PURL: c.PURL, CPEs: c.CPEs, Patched: c.Patched})
		if err != nil {
			if len(problems) < 10 {
				problems = append(problems, err.Error())
			}
			return nil
		}
		if !ok {
			return nil
		}
		rel := rels[c.ReleaseID]
		v := FindingView{Finding: findingOf(c, h), Product: rel.Product, ReleaseVersion: rel.Version, State: StateOpen}
		if h.Patched {
			v.State = StatePatched
		}
		views = append(views, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(views) == 0 && len(problems) > 0 {
		return nil, problem.Invalid(problems...)
	}
	if err := s.enrich(ctx, e); err != nil {
		return nil, err
	}
	return e, s.fillExposure(ctx, scope, e, views, opts)
}

// enrich adds KEV and EPSS data of e's vulnerability.
func (s *Service) enrich(ctx context.Context, e *Exposure) error {
	kev, err := s.opts.Store.KEVFor(ctx, []string{e.VulnID})
	if err != nil {
		return err
	}
	epss, err := s.opts.Store.EPSSFor(ctx, []string{e.VulnID})
	if err != nil {
		return err
	}
	if k, ok := kev[e.VulnID]; ok {
		e.KEV = &k
	}
	if k, ok := epss[e.VulnID]; ok {
		e.EPSS = &k
	}
	return nil
}

// fillExposure groups findings by release and counts the devices running
// the affected ones, within scope.
func (s *Service) fillExposure(ctx context.Context, scope Scope, e *Exposure, views []FindingView, opts ExposureOptions) error {
	visible, err := s.visibleReleases(ctx, scope)
	if err != nil {
		return err
	}
	byRelease := map[string]*ReleaseExposure{}
	var order []string
	for _, v := range views {
		if visible != nil && !slices.Contains(visible, v.ReleaseID) {
			continue
		}
		re := byRelease[v.ReleaseID]
		if re == nil {
			re = &ReleaseExposure{ReleaseID: v.ReleaseID, Product: v.Product, Version: v.ReleaseVersion, State: v.State}
			byRelease[v.ReleaseID] = re
			order = append(order, v.ReleaseID)
		}
		// The release is affected while any of its findings is open or
		// decided as affected (a decision of not_affected, mitigated or
		// fixed, or backport evidence, clears it).
		switch v.State {
		case StateOpen, StatusAffected, StatusPatchPlanned:
			re.Affected = true
			re.State = v.State
		}
		re.Components = appendUnique(re.Components, v.ComponentName+" "+v.ComponentVersion)
		re.Rules = append(re.Rules, v.Rules...)
		if e.Summary == "" {
			e.Summary = v.Summary
		}
		if match.SeverityRank(v.Severity) > match.SeverityRank(e.Severity) {
			e.Severity = v.Severity
		}
	}
	var affected []string
	for _, id := range order {
		if byRelease[id].Affected {
			affected = append(affected, id)
		}
	}
	groups, err := s.opts.Store.ExposureGroups(ctx, affected, scope.sites())
	if err != nil {
		return err
	}
	orgs := map[string]*OrgExposure{}
	sites := map[string]*SiteExposure{}
	siteOrder := map[string][]string{} // organisation -> site IDs in order
	e.Totals.Versions = map[string]int{}
	for _, g := range groups {
		o := orgs[g.Organisation]
		if o == nil {
			o = &OrgExposure{Organisation: g.Organisation}
			orgs[g.Organisation] = o
		}
		st := sites[g.SiteID]
		if st == nil {
			st = &SiteExposure{SiteID: g.SiteID, SiteName: g.SiteName, Counts: store.PatchCounts{Versions: map[string]int{}}}
			sites[g.SiteID] = st
			siteOrder[g.Organisation] = append(siteOrder[g.Organisation], g.SiteID)
		}
		version := byRelease[g.ReleaseID].Version
		addCounts(&st.Counts, g.Status, version, g.Devices)
		addCounts(&e.Totals, g.Status, version, g.Devices)
		if g.TargetReleaseID != "" && !slices.Contains(affected, g.TargetReleaseID) {
			st.FixAssigned += g.Devices
		}
		o.Devices += g.Devices
		byRelease[g.ReleaseID].Devices += g.Devices
	}
	for name, o := range orgs {
		for _, id := range siteOrder[name] {
			o.Sites = append(o.Sites, *sites[id])
		}
		e.Organisations = append(e.Organisations, *o)
	}
	sort.Slice(e.Organisations, func(i, j int) bool { return e.Organisations[i].Organisation < e.Organisations[j].Organisation })
	for _, id := range order {
		e.Releases = append(e.Releases, *byRelease[id])
	}
	e.Exposed = e.Totals.Total > 0
	if opts.DeviceLimit > 0 {
		limit := min(opts.DeviceLimit, maxDeviceLimit)
		if e.Devices, err = s.opts.Store.ExposedDevices(ctx, affected, scope.sites(), limit); err != nil {
			return err
		}
	}
	if e.Releases == nil {
		e.Releases = []ReleaseExposure{}
	}
	if e.Organisations == nil {
		e.Organisations = []OrgExposure{}
	}
	return nil
}

func appendUnique(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// addCounts adds n devices of one patch status and installed version.
func addCounts(c *store.PatchCounts, status store.PatchStatus, version string, n int) {
	c.Total += n
	switch status {
	case store.StatusCurrent:
		c.Current += n
	case store.StatusPending:
		c.Pending += n
	case store.StatusInstalling:
		c.Installing += n
	case store.StatusFailed:
		c.Failed += n
	}
	c.Versions[version] += n
}
