package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// The approval policies of a site.
const (
	ApprovalAuto     = "auto"     // devices take patches as their wave reaches them
	ApprovalRequired = "approval" // devices are held until the site's IT approves
)

// A WeeklyWindow is a weekly maintenance window in the site's time zone:
// from Start to End wall-clock time on Day. An End at or before Start ends
// on the next day. Wall-clock times hold across DST changes: a window from
// 01:00 to 05:00 is 3 or 5 hours long on the nights the clocks change.
type WeeklyWindow struct {
	Day   string `json:"day"`   // mon, tue, wed, thu, fri, sat, sun
	Start string `json:"start"` // "HH:MM"
	End   string `json:"end"`   // "HH:MM"
}

var weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// A SitePolicy is how a site takes patches.
type SitePolicy struct {
	SiteID   string         `json:"site_id"`
	Approval string         `json:"approval"`           // auto or approval
	TimeZone string         `json:"timezone,omitempty"` // IANA name, e.g. Europe/Berlin
	Windows  []WeeklyWindow `json:"windows,omitempty"`  // none: any time
}

const maxSiteWindows = 28

func clock(s string) (int, int, bool) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, 0, false
	}
	return t.Hour(), t.Minute(), true
}

// validate reports every problem at once and loads the time zone.
func (p *SitePolicy) validate() (*time.Location, error) {
	var problems []string
	if p.Approval != ApprovalAuto && p.Approval != ApprovalRequired {
		problems = append(problems, fmt.Sprintf("approval %q must be %q or %q", p.Approval, ApprovalAuto, ApprovalRequired))
	}
	loc, err := time.LoadLocation(p.TimeZone)
	if p.TimeZone == "" && len(p.Windows) > 0 {
		problems = append(problems, "timezone is required with windows, e.g. Europe/Berlin")
	} else if err != nil || p.TimeZone == "Local" {
		problems = append(problems, fmt.Sprintf("timezone %q is not an IANA time zone such as Europe/Berlin or America/New_York", p.TimeZone))
	}
	if len(p.Windows) > maxSiteWindows {
		problems = append(problems, fmt.Sprintf("windows: %d, more than the %d allowed", len(p.Windows), maxSiteWindows))
	}
	for i, w := range p.Windows {
		if !slices.Contains(weekdays, w.Day) {
			problems = append(problems, fmt.Sprintf("windows[%d].day %q must be one of %s", i, w.Day, strings.Join(weekdays, ", ")))
		}
		if _, _, ok := clock(w.Start); !ok {
			problems = append(problems, fmt.Sprintf("windows[%d].start %q must be HH:MM", i, w.Start))
		}
		if _, _, ok := clock(w.End); !ok {
			problems = append(problems, fmt.Sprintf("windows[%d].end %q must be HH:MM", i, w.End))
		}
	}
	return loc, problem.Invalid(problems...)
}

// Expand returns the concrete windows, in UTC, that start in the weeks
// beginning at from (whole days in loc), in time order.
func Expand(windows []WeeklyWindow, loc *time.Location, from time.Time, weeks int) []protocol.Window {
	var out []protocol.Window
	local := from.In(loc)
	day0 := time.Date(local.Year(), local.Month(), local.Day(), 0, 0, 0, 0, loc)
	for i := -1; i < 7*weeks; i++ {
		// Calendar arithmetic in loc: AddDate keeps the wall clock across
		// a DST change, where adding 24h would not.
		day := day0.AddDate(0, 0, i)
		for _, w := range windows {
			if weekdays[day.Weekday()] != w.Day {
				continue
			}
			sh, sm, _ := clock(w.Start)
			eh, em, _ := clock(w.End)
			start := time.Date(day.Year(), day.Month(), day.Day(), sh, sm, 0, 0, loc)
			endDay := day
			if eh*60+em <= sh*60+sm {
				endDay = day.AddDate(0, 0, 1)
			}
			end := time.Date(endDay.Year(), endDay.Month(), endDay.Day(), eh, em, 0, 0, loc)
			if end.After(start) {
				out = append(out, protocol.Window{Start: start.UTC(), End: end.UTC()})
			}
		}
	}
	slices.SortFunc(out, func(a, b protocol.Window) int { return a.Start.Compare(b.Start) })
	return out
}

// windowWeeks is how far ahead a device's entry lists windows. The list
// starts at the Monday of the current week (UTC), so the signed entry
// changes once a week, not at every publish.
const windowWeeks = 5

func (e *Engine) sitePolicies(ctx context.Context) (map[string]SitePolicy, error) {
	rows, err := e.opts.Store.SitePolicies(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]SitePolicy{}
	for id, r := range rows {
		p := SitePolicy{SiteID: id, Approval: r.Approval, TimeZone: r.TimeZone}
		if err := json.Unmarshal([]byte(r.Windows), &p.Windows); err != nil {
			return nil, fmt.Errorf("site %s: stored windows: %w", id, err)
		}
		out[id] = p
	}
	return out, nil
}

// SitePolicy returns a site's policy; a site never set is auto, any time.
func (e *Engine) SitePolicy(ctx context.Context, siteID string) (SitePolicy, error) {
	if _, err := e.opts.Store.Site(ctx, siteID); err != nil {
		return SitePolicy{}, err
	}
	all, err := e.sitePolicies(ctx)
	if err != nil {
		return SitePolicy{}, err
	}
	p, ok := all[siteID]
	if !ok {
		p = SitePolicy{SiteID: siteID, Approval: ApprovalAuto}
	}
	return p, nil
}

// SetSitePolicy stores a site's approval policy and maintenance windows
// and publishes the new windows to the site's assigned devices.
func (e *Engine) SetSitePolicy(ctx context.Context, p SitePolicy, actor, reason string) error {
	err := e.setSitePolicy(ctx, p, actor)
	b, _ := json.Marshal(p)
	if err := e.audit(ctx, Decision{Action: "site.policy", Actor: actor, Reason: reason, SiteID: p.SiteID, Detail: string(b)}, err); err != nil {
		return err
	}
	if err := e.Tick(ctx); err != nil {
		e.opts.Log.Warn("rollout step after a site policy change failed; the scheduler retries", "site_id", p.SiteID, "err", err)
	}
	return nil
}

func (e *Engine) setSitePolicy(ctx context.Context, p SitePolicy, actor string) error {
	if strings.TrimSpace(actor) == "" {
		return problem.Invalid("actor is required")
	}
	if _, err := p.validate(); err != nil {
		return err
	}
	if p.Windows == nil {
		p.Windows = []WeeklyWindow{}
	}
	windows, err := json.Marshal(p.Windows)
	if err != nil {
		return err
	}
	if err := e.opts.Store.SetSitePolicy(ctx, store.SitePolicy{SiteID: p.SiteID, Approval: p.Approval, TimeZone: p.TimeZone,
		Windows: string(windows), UpdatedAt: e.opts.Now()}); err != nil {
		return err
	}
	e.opts.Log.Info("site policy set", "site_id", p.SiteID, "approval", p.Approval, "timezone", p.TimeZone, "windows", len(p.Windows), "actor", actor)
	if e.opts.Publisher == nil {
		return nil
	}
	devices, err := e.opts.Store.Devices(ctx, store.DeviceFilter{SiteIDs: []string{p.SiteID}})
	if err != nil {
		return err
	}
	ids := make([]string, len(devices))
	for i, d := range devices {
		ids[i] = d.ID
	}
	if err := e.opts.Publisher.AssignmentsChanged(ctx, ids); err != nil {
		return fmt.Errorf("publish the site's windows: %w", err)
	}
	return nil
}

// Windows returns, for each given site with maintenance windows, the
// concrete windows of the coming weeks for its devices' rollout entries.
func (e *Engine) Windows(ctx context.Context, siteIDs []string) (map[string][]protocol.Window, error) {
	return SiteWindows(ctx, e.opts.Store, e.opts.Now(), siteIDs)
}

// SiteWindows is Windows for a caller without an Engine (the rollout
// repository's assignment source): the windows of the weeks from the
// Monday (UTC) of now's week.
func SiteWindows(ctx context.Context, st *store.Store, now time.Time, siteIDs []string) (map[string][]protocol.Window, error) {
	rows, err := st.SitePolicies(ctx)
	if err != nil {
		return nil, err
	}
	now = now.UTC()
	monday := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC).AddDate(0, 0, -((int(now.Weekday()) + 6) % 7))
	out := map[string][]protocol.Window{}
	for _, id := range siteIDs {
		p, ok := rows[id]
		if !ok || p.Windows == "" || p.Windows == "[]" {
			continue
		}
		if _, done := out[id]; done {
			continue
		}
		var weekly []WeeklyWindow
		if err := json.Unmarshal([]byte(p.Windows), &weekly); err != nil {
			return nil, fmt.Errorf("site %s: stored windows: %w", id, err)
		}
		loc, err := time.LoadLocation(p.TimeZone)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("site %s: time zone %q", id, p.TimeZone), err)
		}
		out[id] = Expand(weekly, loc, monday, windowWeeks)
	}
	return out, nil
}

// SetDeviceLabels sets labels of a device (an empty value removes one);
// the label "role" names its role for the disruption budget.
func (e *Engine) SetDeviceLabels(ctx context.Context, deviceID string, labels map[string]string, actor string) error {
	err := e.opts.Store.SetDeviceLabels(ctx, deviceID, labels)
	b, _ := json.Marshal(labels)
	if err := e.audit(ctx, Decision{Action: "device.labels", Actor: actor, Detail: "device " + deviceID + ": " + string(b)}, err); err != nil {
		return err
	}
	e.opts.Log.Info("device labels set", "device_id", deviceID, "labels", len(labels), "actor", actor)
	return nil
}

// SiteCompliance returns the patch state of one site and its devices.
func (e *Engine) SiteCompliance(ctx context.Context, siteID string) (store.SiteCompliance, error) {
	return e.opts.Store.SiteDevicesCompliance(ctx, siteID)
}

// Compliance returns the compliance summary of every site.
func (e *Engine) Compliance(ctx context.Context) ([]store.SiteCompliance, error) {
	return e.opts.Store.ComplianceSummary(ctx)
}
