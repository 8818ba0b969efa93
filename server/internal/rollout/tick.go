package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// Tick takes one step of the given rollouts, or of every active one when
// none is named. Each step reads the outcome of every assigned device.
func (e *Engine) Tick(ctx context.Context, rolloutIDs ...string) error {
	return e.tick(ctx, nil, rolloutIDs...)
}

// tick is Tick. reported, unless nil, are the devices that reported since
// the last scheduled step (Options.ReportsFeed): the steps read only their
// outcomes, and every assigned device's once per FullObserve.
func (e *Engine) tick(ctx context.Context, reported map[string]bool, rolloutIDs ...string) error {
	if len(rolloutIDs) == 0 {
		plans, err := e.opts.Store.RolloutPlans(ctx, activeStatuses...)
		if err != nil {
			return err
		}
		for _, p := range plans {
			if p.Status == string(StatusCompleted) {
				// A completed rollout needs steps only while it can still
				// change: dynamic, or devices waiting for their site.
				var plan Plan
				if err := json.Unmarshal([]byte(p.Plan), &plan); err != nil {
					return fmt.Errorf("rollout %s: stored plan: %w", p.RolloutID, err)
				}
				waiting, err := e.opts.Store.RolloutHasDevicesIn(ctx, p.RolloutID, string(DeviceHeld), string(DeviceDeferred),
					string(DeviceSelected), string(DeviceQueued), string(DeviceAssigned))
				if err != nil {
					return err
				}
				if !plan.Dynamic && !waiting {
					continue
				}
			}
			rolloutIDs = append(rolloutIDs, p.RolloutID)
		}
	}
	var errs []error
	for _, id := range rolloutIDs {
		e.mu.Lock()
		err := e.stepLocked(ctx, id, reported)
		if err != nil {
			delete(e.observedAt, id) // the reports it took may be lost: read them all next time
		}
		e.mu.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("step rollout %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// state is one rollout as a step sees it.
type state struct {
	r       store.Rollout
	p       store.RolloutPlan
	plan    Plan
	rel     store.Release
	limiter Limiter
	devices []store.RolloutDevice
	// orig is each device's wave, state and reason as loaded: a step
	// writes only the devices whose final values differ.
	orig map[string][3]string
	// recorded are the keys of the rollout's events as loaded; events are
	// the new ones of this step, written with it.
	recorded map[string]bool
	events   []store.RolloutEvent
}

// record notes an event of the step unless the rollout recorded its key
// before.
func (st *state) record(kind EventKind, key, siteID, detail string, now time.Time) {
	if st.recorded[key] {
		return
	}
	st.recorded[key] = true
	st.events = append(st.events, store.RolloutEvent{RolloutID: st.r.ID, Key: key, Kind: string(kind), SiteID: siteID, Detail: detail, At: now})
}

func key(d store.RolloutDevice) [3]string {
	return [3]string{fmt.Sprint(d.Wave), d.State, d.Reason}
}

// kept is a rollout's devices and event keys as a step wrote them, with
// the plan's updated_at that write stored.
type kept struct {
	version  time.Time
	devices  []store.RolloutDevice
	recorded map[string]bool
}

// keepLocked notes st's devices and event keys as written with version,
// for the next step, while the rollout may take more steps. e.mu must be
// held.
func (e *Engine) keepLocked(st *state, version time.Time) {
	if !slices.Contains(activeStatuses, st.p.Status) ||
		(st.p.Status == string(StatusCompleted) && !st.plan.Dynamic && st.count(DeviceHeld, DeviceDeferred, DeviceSelected, DeviceQueued, DeviceAssigned) == 0) {
		delete(e.kept, st.r.ID)
		delete(e.observedAt, st.r.ID)
		return
	}
	// As the store returns them: by rank, times in UTC to the microsecond.
	devices := slices.Clone(st.devices)
	for i := range devices {
		d := &devices[i]
		d.JoinedAt, d.UpdatedAt = d.JoinedAt.UTC().Truncate(time.Microsecond), d.UpdatedAt.UTC().Truncate(time.Microsecond)
	}
	slices.SortStableFunc(devices, func(a, b store.RolloutDevice) int { return a.Rank - b.Rank })
	e.kept[st.r.ID] = kept{version: version, devices: devices, recorded: maps.Clone(st.recorded)}
}

// loadLocked is load for a step: when the plan's updated_at is the one
// this engine's last write of the rollout stored, nobody changed its
// devices or events since (store.ApplyTick), and the step starts from
// what that write left instead of reading them again. e.mu must be held.
func (e *Engine) loadLocked(ctx context.Context, id string) (*state, error) {
	k, ok := e.kept[id]
	delete(e.kept, id) // the step changes them; save keeps them again
	if !ok {
		return e.load(ctx, id)
	}
	return e.read(ctx, id, &k)
}

func (e *Engine) load(ctx context.Context, id string) (*state, error) {
	return e.read(ctx, id, nil)
}

// read loads a rollout; the devices and event keys come from k when its
// version is the plan's.
func (e *Engine) read(ctx context.Context, id string, k *kept) (*state, error) {
	r, p, err := e.opts.Store.StagedRollout(ctx, id)
	if err != nil {
		return nil, err
	}
	st := &state{r: r, p: p, orig: map[string][3]string{}}
	if p.Plan == "" {
		return st, nil // from before staged rollouts
	}
	if err := json.Unmarshal([]byte(p.Plan), &st.plan); err != nil {
		return nil, fmt.Errorf("rollout %s: stored plan: %w", id, err)
	}
	if err := json.Unmarshal([]byte(p.RateState), &st.limiter); err != nil {
		return nil, fmt.Errorf("rollout %s: stored rate state: %w", id, err)
	}
	if st.rel, err = e.opts.Store.Release(ctx, r.ReleaseID); err != nil {
		return nil, err
	}
	if k != nil && k.version.Equal(p.UpdatedAt) {
		st.devices, st.recorded = k.devices, k.recorded
	} else {
		if st.devices, err = e.opts.Store.RolloutDevices(ctx, id); err != nil {
			return nil, err
		}
		if st.recorded, err = e.opts.Store.RolloutEventKeys(ctx, id); err != nil {
			return nil, err
		}
	}
	for _, d := range st.devices {
		st.orig[d.DeviceID] = key(d)
	}
	return st, nil
}

func (st *state) set(i int, s DeviceState, reason string, now time.Time) {
	d := &st.devices[i]
	if d.State == string(s) && d.Reason == reason {
		return
	}
	d.State, d.Reason, d.UpdatedAt = string(s), reason, now
}

func (st *state) count(states ...DeviceState) int {
	n := 0
	for _, d := range st.devices {
		if slices.Contains(states, DeviceState(d.State)) {
			n++
		}
	}
	return n
}

// save writes the step and tells the publisher and the devices. e.mu
// must be held.
func (e *Engine) save(ctx context.Context, st *state, joined []store.RolloutDevice, assign, unassign []string) error {
	now := e.opts.Now()
	readAt := st.p.UpdatedAt
	rate, err := json.Marshal(st.limiter)
	if err != nil {
		return err
	}
	plan, err := json.Marshal(st.plan)
	if err != nil {
		return err
	}
	st.p.RateState, st.p.Plan, st.p.UpdatedAt = string(rate), string(plan), now
	// Joined devices are inserted with their values after this step; the
	// others are updated when they differ from what was loaded.
	var changed []store.RolloutDevice
	current := map[string]store.RolloutDevice{}
	for _, d := range st.devices {
		current[d.DeviceID] = d
		if k, ok := st.orig[d.DeviceID]; ok && k != key(d) {
			changed = append(changed, d)
		}
	}
	for i, d := range joined {
		joined[i] = current[d.DeviceID]
	}
	version, err := e.opts.Store.ApplyTick(ctx, store.TickUpdate{Plan: st.p, Joined: joined, Changed: changed,
		Assign: assign, Unassign: unassign, ReleaseID: st.r.ReleaseID, At: now, Events: st.events}, readAt)
	if err != nil {
		return err
	}
	e.keepLocked(st, version)
	for _, ev := range st.events {
		e.opts.Log.Info("rollout event", "rollout_id", st.r.ID, "kind", ev.Kind, "site_id", ev.SiteID, "detail", ev.Detail)
	}
	touched := append(slices.Clone(assign), unassign...)
	if len(touched) > 0 && e.opts.Publisher != nil {
		if err := e.opts.Publisher.AssignmentsChanged(ctx, touched); err != nil {
			// The assignments are committed; the periodic sync publishes them.
			e.opts.Log.Error("publishing assignments failed", "rollout_id", st.r.ID, "err", err)
		}
	}
	e.hint(ctx, touched, "rollout")
	return nil
}

// stepLocked takes one step of a rollout. reported are as for tick. e.mu
// must be held.
func (e *Engine) stepLocked(ctx context.Context, id string, reported map[string]bool) error {
	st, err := e.loadLocked(ctx, id)
	if err != nil || st.p.Plan == "" {
		return err
	}
	status := Status(st.p.Status)
	if !slices.Contains(activeStatuses, string(status)) {
		return nil
	}
	now := e.opts.Now()
	log := e.opts.Log.With("rollout_id", id)

	var joined []store.RolloutDevice
	if st.plan.Dynamic && (status == StatusRunning || status == StatusCompleted) {
		if joined, err = e.joinLocked(ctx, st, now); err != nil {
			return err
		}
		if len(joined) > 0 && status == StatusCompleted {
			st.p.Status, status = string(StatusRunning), StatusRunning
		}
	}
	if err := e.observe(ctx, st, reported, now); err != nil {
		return err
	}
	if st.p.Wave >= 0 && st.settled() && st.p.SettledAt.IsZero() {
		st.p.SettledAt = now
	}
	if status == StatusRunning {
		if reason := st.overThreshold(); reason != "" {
			st.p.Status, st.p.StatusReason = string(StatusHalted), reason
			log.Warn("rollout halted", "reason", reason)
			st.record(EventHalted, fmt.Sprintf("halted/%d/%d", st.p.FailBase, st.p.DoneBase), "", reason, now)
			return e.save(ctx, st, joined, nil, nil)
		}
	}
	if status != StatusRunning && status != StatusCompleted {
		return e.save(ctx, st, joined, nil, nil)
	}
	// A completed rollout still assigns devices whose site approves late.
	st.promote(now, log)
	if err := e.gate(ctx, st, now); err != nil {
		return err
	}
	assign := e.pick(st, now)
	if st.settled() && st.p.Wave == len(st.plan.steps(len(st.devices)))-1 && st.count(DeviceQueued) == 0 {
		if st.p.Status != string(StatusCompleted) {
			log.Info("rollout completed", "succeeded", st.count(DeviceSucceeded), "failed", st.count(DeviceFailed))
			st.record(EventCompleted, fmt.Sprintf("completed/%d", len(st.devices)), "",
				fmt.Sprintf("%d devices succeeded, %d failed", st.count(DeviceSucceeded), st.count(DeviceFailed)), now)
		}
		st.p.Status, st.p.StatusReason = string(StatusCompleted), ""
	} else {
		st.p.Status = string(StatusRunning)
	}
	return e.save(ctx, st, joined, assign, nil)
}

// joinLocked adds devices that entered the cohort since the last step and
// belong to no other active rollout.
func (e *Engine) joinLocked(ctx context.Context, st *state, now time.Time) ([]store.RolloutDevice, error) {
	have := map[string]bool{}
	for _, d := range st.devices {
		have[d.DeviceID] = true
	}
	fresh, err := e.matchCohort(ctx, st.r.ID, st.plan, st.rel, have)
	if err != nil || len(fresh) == 0 {
		return nil, err
	}
	ids := make([]string, len(fresh))
	for i, d := range fresh {
		ids[i] = d.DeviceID
	}
	busy, err := e.opts.Store.ActiveRollouts(ctx, ids, activeStatuses, finishedStates)
	if err != nil {
		return nil, err
	}
	fresh = slices.DeleteFunc(fresh, func(d store.RolloutDevice) bool { return busy[d.DeviceID] != "" })
	last := -1
	for _, d := range st.devices {
		last = max(last, d.Rank)
	}
	rankDevices(st.r.ID, fresh, last+1)
	for i := range fresh {
		fresh[i].RolloutID, fresh[i].JoinedAt, fresh[i].UpdatedAt = st.r.ID, now, now
	}
	st.devices = append(st.devices, fresh...)
	e.opts.Log.Info("devices joined rollout", "rollout_id", st.r.ID, "devices", len(fresh))
	return fresh, nil
}

// observe reads the outcome of the assigned devices: every one, or with
// reported (see tick) only those that reported, unless the rollout's last
// full read is FullObserve old.
func (e *Engine) observe(ctx context.Context, st *state, reported map[string]bool, now time.Time) error {
	full := reported == nil || now.Sub(e.observedAt[st.r.ID]) >= e.opts.FullObserve
	if full && reported != nil {
		e.observedAt[st.r.ID] = now
	}
	var assigned []string
	for _, d := range st.devices {
		if d.State == string(DeviceAssigned) && (full || reported[d.DeviceID]) {
			assigned = append(assigned, d.DeviceID)
		}
	}
	if len(assigned) == 0 {
		return nil
	}
	rows, err := e.opts.Store.DevicesByID(ctx, assigned)
	if err != nil {
		return err
	}
	failed, err := e.opts.Store.FailedReports(ctx, assigned, st.rel.TargetPath, st.r.CreatedAt)
	if err != nil {
		return err
	}
	for i, d := range st.devices {
		dev, ok := rows[d.DeviceID]
		if !ok || d.State != string(DeviceAssigned) {
			continue
		}
		// A failure counts first: a device reports "failed" while it still
		// runs the new version (its health check failed after the boot),
		// then "rolled-back" on the old one.
		switch {
		case dev.StateReleaseID == st.rel.ID && (dev.State == protocol.StateFailed || dev.State == protocol.StateRolledBack):
			st.set(i, DeviceFailed, fmt.Sprintf("%s: %s", dev.State, dev.StateReason), now)
		case failed[d.DeviceID] != "":
			st.set(i, DeviceFailed, failed[d.DeviceID], now)
		case dev.InstalledVersion == st.rel.Version && (dev.State == protocol.StateCommitted || dev.State == protocol.StateIdle):
			st.set(i, DeviceSucceeded, "", now)
		}
	}
	st.limiter.SucceededTotal(st.plan.Rate, st.count(DeviceSucceeded))
	return nil
}

// overThreshold returns why the rollout must halt, or "".
func (st *state) overThreshold() string {
	failed := st.count(DeviceFailed) - st.p.FailBase
	done := st.count(DeviceFailed, DeviceSucceeded) - st.p.DoneBase
	if failed <= 0 || done <= 0 {
		return ""
	}
	rate := 100 * float64(failed) / float64(done)
	if rate <= st.plan.maxFailure() {
		return ""
	}
	var first []store.RolloutDevice
	for _, d := range st.devices {
		if d.State == string(DeviceFailed) {
			first = append(first, d)
		}
	}
	slices.SortStableFunc(first, func(a, b store.RolloutDevice) int { return a.UpdatedAt.Compare(b.UpdatedAt) })
	var names []string
	for _, d := range first[:min(3, len(first))] {
		names = append(names, fmt.Sprintf("device %s at site %s (%s)", d.DeviceID, d.SiteID, d.Reason))
	}
	return fmt.Sprintf("halted: %d of %d devices finished since the last resume failed (%.1f%%), over the %g%% threshold; first failures: %s",
		failed, done, rate, st.plan.maxFailure(), strings.Join(names, "; "))
}

// settled reports whether every selected device of the opened waves has an
// outcome. Devices held by their site do not hold up the others.
func (st *state) settled() bool {
	for _, d := range st.devices {
		if d.Wave >= 0 && (d.State == string(DeviceSelected) || d.State == string(DeviceAssigned)) {
			return false
		}
	}
	return true
}

// promote opens the next wave once the current one settled and soaked.
func (st *state) promote(now time.Time, log interface {
	Info(msg string, args ...any)
}) {
	steps := st.plan.steps(len(st.devices))
	if st.p.Wave >= 0 {
		if !st.settled() {
			st.p.SettledAt = time.Time{}
			// A wave of a dynamic rollout may gain devices later; keep
			// filling the opened waves below.
		} else if st.p.SettledAt.IsZero() {
			st.p.SettledAt = now
		}
	}
	ready := st.p.Wave < 0 || (st.settled() && !st.p.SettledAt.IsZero() && now.Sub(st.p.SettledAt) >= time.Duration(st.plan.Soak))
	if ready && st.p.Wave < len(steps)-1 {
		st.p.Wave++
		st.p.WaveOpenedAt, st.p.SettledAt = now, time.Time{}
		log.Info("wave opened", "wave", st.p.Wave, "devices", steps[st.p.Wave])
		st.record(EventWaveOpened, fmt.Sprintf("wave/%d", st.p.Wave), "", fmt.Sprintf("wave %d opened: %d devices in all", st.p.Wave, steps[st.p.Wave]), now)
	}
	// Fill the opened waves up to their cumulative size; a dynamic cohort
	// grows, so this runs on every step.
	if st.p.Wave < 0 {
		return
	}
	target := steps[st.p.Wave]
	selected := 0
	for _, d := range st.devices {
		if d.Wave >= 0 {
			selected++
		}
	}
	for i := range st.devices {
		if selected >= target {
			break
		}
		if st.devices[i].Wave < 0 {
			st.devices[i].Wave = st.p.Wave
			st.set(i, DeviceSelected, "", now)
			selected++
		}
	}
	if !st.settled() {
		st.p.SettledAt = time.Time{}
	}
}

// gate applies the sites' approval policies to selected devices.
func (e *Engine) gate(ctx context.Context, st *state, now time.Time) error {
	policies, err := e.sitePolicies(ctx)
	if err != nil {
		return err
	}
	decisions, err := e.opts.Store.SiteDecisions(ctx, st.r.ID, "")
	if err != nil {
		return err
	}
	bySite := map[string]store.SiteDecision{}
	for _, d := range decisions {
		bySite[d.SiteID] = d
	}
	e.deferralEvents(st, bySite, now)
	for i, d := range st.devices {
		s := DeviceState(d.State)
		if s != DeviceSelected && s != DeviceHeld && s != DeviceDeferred && s != DeviceDeclined {
			continue
		}
		if policies[d.SiteID].Approval != ApprovalRequired {
			st.set(i, DeviceSelected, "", now)
			continue
		}
		dec, ok := bySite[d.SiteID]
		switch {
		case !ok:
			st.set(i, DeviceHeld, "awaiting approval by the site's IT", now)
		case dec.Decision == string(DecisionApproved):
			st.set(i, DeviceSelected, "", now)
		case dec.Decision == string(DecisionDeclined):
			st.set(i, DeviceDeclined, "declined by "+dec.Actor+": "+dec.Reason, now)
		case dec.Decision == string(DecisionDeferred) && now.Before(dec.DeferredUntil):
			st.set(i, DeviceDeferred, fmt.Sprintf("deferred until %s by %s: %s", dec.DeferredUntil.UTC().Format(time.RFC3339), dec.Actor, dec.Reason), now)
		default:
			st.set(i, DeviceHeld, fmt.Sprintf("deferral ended %s; awaiting approval by the site's IT", dec.DeferredUntil.UTC().Format(time.RFC3339)), now)
		}
	}
	return nil
}

// deferralEvents records, once per deferral, a reminder when a site's
// deferral ends within the DeferralReminder and the end of the deferral,
// after which its devices wait for approval again. Only sites with devices
// that have not started installing count (those of waves not opened yet
// too: the deferral holds them once their wave opens).
func (e *Engine) deferralEvents(st *state, bySite map[string]store.SiteDecision, now time.Time) {
	waiting := map[string]bool{}
	for _, d := range st.devices {
		switch DeviceState(d.State) {
		case DeviceQueued, DeviceSelected, DeviceHeld, DeviceDeferred:
			waiting[d.SiteID] = true
		}
	}
	sites := slices.Sorted(maps.Keys(waiting))
	for _, site := range sites {
		dec, ok := bySite[site]
		if !ok || dec.Decision != string(DecisionDeferred) {
			continue
		}
		until := dec.DeferredUntil.UTC().Format(time.RFC3339)
		switch {
		case !now.Before(dec.DeferredUntil):
			st.record(EventDeferralEnded, "deferral-ended/"+site+"/"+until, site,
				fmt.Sprintf("the deferral by %s ended %s; the site's devices await approval again", dec.Actor, until), now)
		case e.opts.DeferralReminder > 0 && dec.DeferredUntil.Sub(now) <= e.opts.DeferralReminder:
			st.record(EventDeferralReminder, "deferral-reminder/"+site+"/"+until, site,
				fmt.Sprintf("the deferral by %s ends %s (in %s): approve, defer again or decline", dec.Actor, until, dec.DeferredUntil.Sub(now).Round(time.Second)), now)
		}
	}
}

// pick assigns selected devices, in rank order, within the disruption
// budgets and the rate.
func (e *Engine) pick(st *state, now time.Time) []string {
	siteSize, roleSize := map[string]int{}, map[[2]string]int{}
	siteBusy, roleBusy := map[string]int{}, map[[2]string]int{}
	var candidates []int
	for i, d := range st.devices {
		role := [2]string{d.SiteID, d.Role}
		siteSize[d.SiteID]++
		roleSize[role]++
		switch DeviceState(d.State) {
		case DeviceAssigned:
			siteBusy[d.SiteID]++
			roleBusy[role]++
		case DeviceSelected:
			candidates = append(candidates, i)
		}
	}
	var within []int
	for _, i := range candidates {
		d := st.devices[i]
		role := [2]string{d.SiteID, d.Role}
		if !st.plan.SiteBudget.zero() && siteBusy[d.SiteID] >= st.plan.SiteBudget.limit(siteSize[d.SiteID]) {
			st.set(i, DeviceSelected, "waiting: site disruption budget in use", now)
			continue
		}
		if d.Role != "" && !st.plan.RoleBudget.zero() && roleBusy[role] >= st.plan.RoleBudget.limit(roleSize[role]) {
			st.set(i, DeviceSelected, fmt.Sprintf("waiting: disruption budget for %q at this site in use", d.Role), now)
			continue
		}
		siteBusy[d.SiteID]++
		roleBusy[role]++
		within = append(within, i)
	}
	n := st.limiter.Take(st.plan.Rate, now, len(within))
	var assign []string
	for k, i := range within {
		if k >= n {
			st.set(i, DeviceSelected, "waiting: rate limit", now)
			continue
		}
		st.set(i, DeviceAssigned, "", now)
		assign = append(assign, st.devices[i].DeviceID)
	}
	return assign
}

// errStatus refuses a control action in the wrong status.
func errStatus(action string, s Status, allowed ...Status) error {
	var names []string
	for _, a := range allowed {
		names = append(names, string(a))
	}
	return fmt.Errorf("cannot %s a rollout that is %s (only one that is %s): %w", action, s, strings.Join(names, " or "), problem.ErrConflict)
}
