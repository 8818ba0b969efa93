package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/google/uuid"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// A Cohort selects the devices of a rollout; an empty field does not
// filter. Labels must all match.
type Cohort struct {
	Models            []string          `json:"models,omitempty"` // default: the release's models
	HardwareRevisions []string          `json:"hardware_revisions,omitempty"`
	SiteIDs           []string          `json:"site_ids,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	InstalledVersions []string          `json:"installed_versions,omitempty"`
	DeviceIDs         []string          `json:"device_ids,omitempty"`
}

// A Budget bounds how many devices of one group install at once: at most
// Max devices and at most Percent of the group. Zero fields do not bound.
type Budget struct {
	Max     int     `json:"max,omitempty"`
	Percent float64 `json:"percent,omitempty"`
}

// limit is the number of devices of a group of size n that may install at
// once; never below 1, so a small site still makes progress.
func (b Budget) limit(n int) int {
	l := math.MaxInt
	if b.Max > 0 {
		l = b.Max
	}
	if b.Percent > 0 {
		l = min(l, int(math.Floor(b.Percent*float64(n)/100)))
	}
	return max(l, 1)
}

func (b Budget) zero() bool { return b.Max == 0 && b.Percent == 0 }

// A Plan is how a rollout proceeds.
type Plan struct {
	Cohort Cohort `json:"cohort"`
	// Canary is the number of devices of the first wave; 0 means none.
	Canary int `json:"canary,omitempty"`
	// Waves are cumulative percentages of the cohort, rising, the last
	// 100; empty means one wave of 100 %.
	Waves []float64 `json:"waves,omitempty"`
	// Soak is how long a settled wave is watched before the next opens.
	Soak Duration `json:"soak,omitempty"`
	// MaxFailurePercent halts the rollout when more of the devices
	// finished since the last resume failed; 0 means 100 (never halts).
	MaxFailurePercent float64 `json:"max_failure_percent,omitempty"`
	SiteBudget        Budget  `json:"site_budget,omitzero"` // per site
	RoleBudget        Budget  `json:"role_budget,omitzero"` // per (site, device role)
	Rate              Rate    `json:"rate,omitzero"`
	// Dynamic rollouts take in devices that enroll or enter the cohort
	// later.
	Dynamic bool `json:"dynamic,omitempty"`
	// Severity of the patch: critical, high, medium or low; default
	// medium. It bounds how long a site may defer it.
	Severity string `json:"severity,omitempty"`
	// Rollback marks a rollout back to an older release signed with
	// allow_rollback; it is made by Rollback only.
	Rollback bool `json:"rollback,omitempty"`
}

// RoleLabel is the device label that names a device's role, e.g.
// "CT scanner", for the per-role disruption budget.
const RoleLabel = "role"

// steps returns the cumulative device count each wave reaches in a cohort
// of n devices.
func (p Plan) steps(n int) []int {
	var out []int
	if p.Canary > 0 {
		out = append(out, min(p.Canary, n))
	}
	waves := p.Waves
	if len(waves) == 0 {
		waves = []float64{100}
	}
	for _, w := range waves {
		c := int(math.Ceil(w * float64(n) / 100))
		if len(out) > 0 {
			c = max(c, out[len(out)-1])
		}
		out = append(out, min(c, n))
	}
	return out
}

func (p Plan) maxFailure() float64 {
	if p.MaxFailurePercent <= 0 {
		return 100
	}
	return p.MaxFailurePercent
}

var severities = []string{"critical", "high", "medium", "low"}

const (
	maxWaves     = 20
	maxCohortIDs = 10000
	maxLabels    = 32
	maxLabelLen  = 128
)

// validate reports every problem at once.
func (p *Plan) validate() error {
	var problems []string
	if p.Canary < 0 {
		problems = append(problems, fmt.Sprintf("canary %d must not be negative", p.Canary))
	}
	if len(p.Waves) > maxWaves {
		problems = append(problems, fmt.Sprintf("waves: %d waves, more than the %d allowed", len(p.Waves), maxWaves))
	}
	for i, w := range p.Waves {
		if w <= 0 || w > 100 || (i > 0 && w <= p.Waves[i-1]) {
			problems = append(problems, fmt.Sprintf("waves %v must rise strictly, each in (0, 100]", p.Waves))
			break
		}
	}
	if len(p.Waves) > 0 && p.Waves[len(p.Waves)-1] != 100 {
		problems = append(problems, fmt.Sprintf("waves %v must end at 100", p.Waves))
	}
	if p.Soak < 0 {
		problems = append(problems, fmt.Sprintf("soak %s must not be negative", p.Soak))
	}
	if p.MaxFailurePercent < 0 || p.MaxFailurePercent > 100 {
		problems = append(problems, fmt.Sprintf("max_failure_percent %g must be between 0 and 100", p.MaxFailurePercent))
	}
	for name, b := range map[string]Budget{"site_budget": p.SiteBudget, "role_budget": p.RoleBudget} {
		if b.Max < 0 || b.Percent < 0 || b.Percent > 100 {
			problems = append(problems, fmt.Sprintf("%s %+v: max must not be negative, percent must be between 0 and 100", name, b))
		}
	}
	if err := p.Rate.validate(); err != nil {
		problems = append(problems, err.Error())
	}
	if p.Severity == "" {
		p.Severity = "medium"
	}
	if !slices.Contains(severities, p.Severity) {
		problems = append(problems, fmt.Sprintf("severity %q must be one of %s", p.Severity, strings.Join(severities, ", ")))
	}
	c := p.Cohort
	if len(c.DeviceIDs) > maxCohortIDs {
		problems = append(problems, fmt.Sprintf("cohort device_ids: %d, more than the %d allowed", len(c.DeviceIDs), maxCohortIDs))
	}
	if len(c.Labels) > maxLabels {
		problems = append(problems, fmt.Sprintf("cohort labels: %d, more than the %d allowed", len(c.Labels), maxLabels))
	}
	for k, v := range c.Labels {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen {
			problems = append(problems, fmt.Sprintf("cohort label %q=%q: name must be 1-%d characters, value at most %d", k, v, maxLabelLen, maxLabelLen))
		}
	}
	for _, v := range c.InstalledVersions {
		if !firmware.ValidVersion(v) {
			problems = append(problems, fmt.Sprintf("cohort installed_versions: %q is not a semantic version", v))
		}
	}
	return problem.Invalid(problems...)
}

// A Request asks for a rollout.
type Request struct {
	ReleaseID string `json:"release_id"`
	Plan
	Actor  string `json:"-"`
	Reason string `json:"-"`
}

// Create validates a request, matches its cohort, refuses devices that
// belong to another active rollout, records the rollout and takes its first
// step, so a plain one-wave rollout assigns every device at once.
func (e *Engine) Create(ctx context.Context, req Request) (View, error) {
	e.mu.Lock()
	r, err := e.createLocked(ctx, req)
	e.mu.Unlock()
	d := Decision{Action: "rollout.create", Actor: req.Actor, Reason: req.Reason, RolloutID: r.ID,
		Detail: fmt.Sprintf("release %s, canary %d, waves %v, soak %s, max failure %g%%", req.ReleaseID, req.Canary, req.Waves, req.Soak, req.MaxFailurePercent)}
	if err := e.audit(ctx, d, err); err != nil {
		return View{}, err
	}
	if err := e.Tick(ctx, r.ID); err != nil {
		e.opts.Log.Warn("first rollout step failed; the scheduler retries", "rollout_id", r.ID, "err", err)
	}
	return e.View(ctx, r.ID)
}

func (e *Engine) createLocked(ctx context.Context, req Request) (store.Rollout, error) {
	if strings.TrimSpace(req.Actor) == "" {
		return store.Rollout{}, problem.Invalid("actor is required")
	}
	rel, err := e.opts.Store.Release(ctx, req.ReleaseID)
	if errors.Is(err, problem.ErrNotFound) {
		return store.Rollout{}, problem.Invalid(fmt.Sprintf("release_id %q names no release", req.ReleaseID))
	}
	if err != nil {
		return store.Rollout{}, err
	}
	plan := req.Plan
	var problems []string
	if err := plan.validate(); err != nil {
		var inv *problem.InvalidError
		errors.As(err, &inv)
		problems = append(problems, inv.Problems...)
	}
	for _, m := range plan.Cohort.Models {
		if !slices.Contains(rel.Manifest.Models, m) {
			problems = append(problems, fmt.Sprintf("model %q is not one the release installs on (%s)", m, strings.Join(rel.Manifest.Models, ", ")))
		}
	}
	for _, id := range plan.Cohort.SiteIDs {
		if _, err := e.opts.Store.Site(ctx, id); errors.Is(err, problem.ErrNotFound) {
			problems = append(problems, fmt.Sprintf("site_ids: %q names no site", id))
		} else if err != nil {
			return store.Rollout{}, err
		}
	}
	if err := problem.Invalid(problems...); err != nil {
		return store.Rollout{}, err
	}
	if len(plan.Cohort.Models) == 0 {
		plan.Cohort.Models = rel.Manifest.Models
	}
	id := uuid.NewString()
	devices, err := e.matchCohort(ctx, id, plan, rel, nil)
	if err != nil {
		return store.Rollout{}, err
	}
	if err := e.refuseOverlap(ctx, devices); err != nil {
		return store.Rollout{}, err
	}
	now := e.opts.Now()
	rankDevices(id, devices, 0)
	planJSON, err := json.Marshal(plan)
	if err != nil {
		return store.Rollout{}, err
	}
	r := store.Rollout{ID: id, ReleaseID: rel.ID, CreatedAt: now, Devices: []string{},
		Selector: store.Selector{Models: plan.Cohort.Models, SiteIDs: plan.Cohort.SiteIDs}}
	p := store.RolloutPlan{RolloutID: id, Plan: string(planJSON), Status: string(StatusRunning), Wave: -1,
		WaveOpenedAt: now, RateState: "{}", CreatedBy: req.Actor, UpdatedAt: now}
	for i := range devices {
		devices[i].RolloutID, devices[i].JoinedAt, devices[i].UpdatedAt = id, now, now
	}
	if err := e.opts.Store.CreateStagedRollout(ctx, r, p, devices); err != nil {
		return store.Rollout{}, err
	}
	e.opts.Log.Info("rollout created", "rollout_id", id, "release", rel.ID, "devices", len(devices), "actor", req.Actor)
	return r, nil
}

// refuseOverlap fails naming the devices that already belong to another
// active rollout. e.mu must be held.
func (e *Engine) refuseOverlap(ctx context.Context, devices []store.RolloutDevice) error {
	ids := make([]string, len(devices))
	for i, d := range devices {
		ids[i] = d.DeviceID
	}
	busy, err := e.opts.Store.ActiveRollouts(ctx, ids, activeStatuses, finishedStates)
	if err != nil || len(busy) == 0 {
		return err
	}
	// The devices may have finished since the scheduler's last step: step
	// those rollouts now and look again.
	stepped := map[string]bool{}
	for _, r := range busy {
		if !stepped[r] {
			stepped[r] = true
			if err := e.stepLocked(ctx, r, nil); err != nil {
				return err
			}
		}
	}
	if busy, err = e.opts.Store.ActiveRollouts(ctx, ids, activeStatuses, finishedStates); err != nil || len(busy) == 0 {
		return err
	}
	var names []string
	for _, id := range ids {
		if r, ok := busy[id]; ok && len(names) < 5 {
			names = append(names, fmt.Sprintf("device %s is in rollout %s", id, r))
		}
	}
	return fmt.Errorf("%d device(s) of the cohort already belong to an active rollout (%s); abort that rollout or narrow the cohort: %w",
		len(busy), strings.Join(names, "; "), problem.ErrConflict)
}

// matchCohort returns the devices the plan's cohort selects that can take
// the release, leaving out those in skip.
func (e *Engine) matchCohort(ctx context.Context, rolloutID string, plan Plan, rel store.Release, skip map[string]bool) ([]store.RolloutDevice, error) {
	c := plan.Cohort
	all, err := e.opts.Store.Devices(ctx, store.DeviceFilter{Models: c.Models, SiteIDs: c.SiteIDs})
	if err != nil {
		return nil, err
	}
	labels, err := e.opts.Store.DeviceLabels(ctx)
	if err != nil {
		return nil, err
	}
	var out []store.RolloutDevice
	for _, d := range all {
		if skip[d.ID] || !rel.Manifest.AppliesTo(d.Model, d.HardwareRevision) {
			continue
		}
		if len(c.HardwareRevisions) > 0 && !slices.Contains(c.HardwareRevisions, d.HardwareRevision) ||
			len(c.InstalledVersions) > 0 && !slices.Contains(c.InstalledVersions, d.InstalledVersion) ||
			len(c.DeviceIDs) > 0 && !slices.Contains(c.DeviceIDs, d.ID) {
			continue
		}
		if !labelsMatch(labels[d.ID], c.Labels) {
			continue
		}
		cmp := firmware.CompareVersions(rel.Version, d.InstalledVersion)
		// A rollout never takes a device back to an older version; that
		// takes a rollback rollout of a release signed for it.
		if cmp == 0 || cmp < 0 && !plan.Rollback {
			continue
		}
		out = append(out, store.RolloutDevice{DeviceID: d.ID, SiteID: d.SiteID, Role: labels[d.ID][RoleLabel],
			Wave: -1, State: string(DeviceQueued), FromVersion: d.InstalledVersion})
	}
	return out, nil
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func hashOrder(rolloutID, id string) uint64 {
	sum := sha256.Sum256([]byte(rolloutID + "\x00" + id))
	return binary.BigEndian.Uint64(sum[:8])
}

// rankDevices gives devices ranks from first on: per site in the order of
// hash(rollout, device), the sites round-robin in the order of
// hash(rollout, site). The same rollout and devices always give the same
// ranks, and every prefix is spread across sites.
func rankDevices(rolloutID string, devices []store.RolloutDevice, first int) {
	bySite := map[string][]int{}
	var sites []string
	for i, d := range devices {
		if _, ok := bySite[d.SiteID]; !ok {
			sites = append(sites, d.SiteID)
		}
		bySite[d.SiteID] = append(bySite[d.SiteID], i)
	}
	sort.Slice(sites, func(a, b int) bool { return hashOrder(rolloutID, sites[a]) < hashOrder(rolloutID, sites[b]) })
	for _, s := range sites {
		idx := bySite[s]
		sort.Slice(idx, func(a, b int) bool {
			return hashOrder(rolloutID, devices[idx[a]].DeviceID) < hashOrder(rolloutID, devices[idx[b]].DeviceID)
		})
	}
	rank := first
	for round := 0; ; round++ {
		placed := false
		for _, s := range sites {
			if idx := bySite[s]; round < len(idx) {
				devices[idx[round]].Rank = rank
				rank++
				placed = true
			}
		}
		if !placed {
			return
		}
	}
}
