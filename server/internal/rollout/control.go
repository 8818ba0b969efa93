package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// A View is a rollout as people see it.
type View struct {
	ID           string         `json:"id"`
	ReleaseID    string         `json:"release_id"`
	Version      string         `json:"version,omitempty"`
	Status       Status         `json:"status"`
	StatusReason string         `json:"status_reason,omitempty"`
	Plan         Plan           `json:"plan"`
	Wave         int            `json:"wave"`  // newest opened wave, -1 before the first
	Steps        []int          `json:"steps"` // cumulative devices per wave
	Counts       map[string]int `json:"counts"`
	RatePerMin   float64        `json:"rate_per_minute,omitempty"`
	CreatedBy    string         `json:"created_by,omitempty"`
	CreatedAt    time.Time      `json:"created_at"`
	// Devices are the devices assigned by the rollout so far.
	Devices []string              `json:"devices"`
	Cohort  []store.RolloutDevice `json:"cohort,omitempty"`
	// Decisions are the sites' approvals, deferrals (with their deadline)
	// and declines, for the manufacturer to see.
	Decisions []store.SiteDecision `json:"decisions,omitempty"`
	// Events are what the scheduler did by itself: waves opened, halts,
	// completion, deferral reminders and ends.
	Events []store.RolloutEvent `json:"events,omitempty"`
}

// View returns one rollout with its cohort.
func (e *Engine) View(ctx context.Context, id string) (View, error) {
	st, err := e.load(ctx, id)
	if err != nil {
		return View{}, err
	}
	v := st.view()
	v.Cohort = st.devices
	if v.Decisions, err = e.opts.Store.SiteDecisions(ctx, id, ""); err != nil {
		return View{}, err
	}
	if v.Events, err = e.opts.Store.RolloutEvents(ctx, id, ""); err != nil {
		return View{}, err
	}
	return v, nil
}

func (st *state) view() View {
	v := View{ID: st.r.ID, ReleaseID: st.r.ReleaseID, Version: st.rel.Version, Status: Status(st.p.Status), StatusReason: st.p.StatusReason,
		Plan: st.plan, Wave: st.p.Wave, Steps: st.plan.steps(len(st.devices)), Counts: map[string]int{},
		CreatedBy: st.p.CreatedBy, CreatedAt: st.r.CreatedAt, Devices: []string{}}
	if st.p.Plan == "" {
		v.Steps = nil
	}
	if v.Plan.Rate != (Rate{}) {
		v.RatePerMin = st.limiter.PerMinute(v.Plan.Rate)
	}
	for _, d := range st.devices {
		v.Counts[d.State]++
		if d.State == string(DeviceAssigned) || d.State == string(DeviceSucceeded) || d.State == string(DeviceFailed) {
			v.Devices = append(v.Devices, d.DeviceID)
		}
	}
	return v
}

// List returns every staged rollout, without cohorts.
func (e *Engine) List(ctx context.Context) ([]View, error) {
	plans, err := e.opts.Store.RolloutPlans(ctx)
	if err != nil {
		return nil, err
	}
	out := []View{}
	for _, p := range plans {
		st, err := e.load(ctx, p.RolloutID)
		if err != nil {
			return nil, err
		}
		out = append(out, st.view())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

// control runs a human decision on a rollout under the engine's lock and
// audits it, refused or not.
func (e *Engine) control(ctx context.Context, action, id, actor, reason string, fn func(st *state, now time.Time) ([]string, error)) (View, error) {
	e.mu.Lock()
	err := func() error {
		if strings.TrimSpace(actor) == "" {
			return problem.Invalid("actor is required")
		}
		st, err := e.load(ctx, id)
		if err != nil {
			return err
		}
		if st.p.Plan == "" {
			return fmt.Errorf("rollout %s predates staged rollouts and has finished: %w", id, problem.ErrConflict)
		}
		unassign, err := fn(st, e.opts.Now())
		if err != nil {
			return err
		}
		return e.save(ctx, st, nil, nil, unassign)
	}()
	e.mu.Unlock()
	if err := e.audit(ctx, Decision{Action: action, Actor: actor, Reason: reason, RolloutID: id}, err); err != nil {
		return View{}, err
	}
	e.opts.Log.Info("rollout decision", "rollout_id", id, "action", action, "actor", actor)
	if err := e.Tick(ctx, id); err != nil {
		e.opts.Log.Warn("rollout step after decision failed; the scheduler retries", "rollout_id", id, "err", err)
	}
	return e.View(ctx, id)
}

func requireReason(action, reason string) error {
	if strings.TrimSpace(reason) == "" {
		return problem.Invalid(fmt.Sprintf("reason is required to %s a rollout", action))
	}
	return nil
}

// Pause stops a running rollout from assigning more devices; devices
// already installing go on.
func (e *Engine) Pause(ctx context.Context, id, actor, reason string) (View, error) {
	return e.control(ctx, "rollout.pause", id, actor, reason, func(st *state, now time.Time) ([]string, error) {
		if err := requireReason("pause", reason); err != nil {
			return nil, err
		}
		if s := Status(st.p.Status); s != StatusRunning && s != StatusCompleted {
			return nil, errStatus("pause", s, StatusRunning, StatusCompleted)
		}
		st.p.Status, st.p.StatusReason = string(StatusPaused), "paused by "+actor+": "+reason
		return nil, nil
	})
}

// Resume continues a paused or halted rollout. A reason is required; the
// failures seen so far are accepted, so the threshold counts from here.
func (e *Engine) Resume(ctx context.Context, id, actor, reason string) (View, error) {
	return e.control(ctx, "rollout.resume", id, actor, reason, func(st *state, now time.Time) ([]string, error) {
		if err := requireReason("resume", reason); err != nil {
			return nil, err
		}
		if s := Status(st.p.Status); s != StatusPaused && s != StatusHalted {
			return nil, errStatus("resume", s, StatusPaused, StatusHalted)
		}
		st.p.Status, st.p.StatusReason = string(StatusRunning), ""
		st.p.FailBase = st.count(DeviceFailed)
		st.p.DoneBase = st.count(DeviceFailed, DeviceSucceeded)
		return nil, nil
	})
}

// Abort ends a rollout: devices not yet installing never will, and the
// assignments of devices that have not finished are withdrawn.
func (e *Engine) Abort(ctx context.Context, id, actor, reason string) (View, error) {
	return e.control(ctx, "rollout.abort", id, actor, reason, func(st *state, now time.Time) ([]string, error) {
		if err := requireReason("abort", reason); err != nil {
			return nil, err
		}
		return e.abortLocked(st, now, "aborted by "+actor+": "+reason)
	})
}

func (e *Engine) abortLocked(st *state, now time.Time, why string) ([]string, error) {
	if s := Status(st.p.Status); s == StatusAborted {
		return nil, errStatus("abort", s, StatusRunning, StatusPaused, StatusHalted, StatusCompleted)
	}
	st.p.Status, st.p.StatusReason = string(StatusAborted), why
	var unassign []string
	for i, d := range st.devices {
		switch DeviceState(d.State) {
		case DeviceSucceeded, DeviceFailed, DeviceDeclined, DeviceCancelled:
		case DeviceAssigned:
			unassign = append(unassign, d.DeviceID)
			st.set(i, DeviceCancelled, why, now)
		default:
			st.set(i, DeviceCancelled, why, now)
		}
	}
	return unassign, nil
}

// Rollback aborts a rollout and rolls its devices that took the release
// back to the release each ran before, in a new one-wave rollout. It is
// refused unless the offline release keys signed every such release with
// allow_rollback.
func (e *Engine) Rollback(ctx context.Context, id, actor, reason string) ([]View, error) {
	var created []string
	e.mu.Lock()
	err := e.rollbackLocked(ctx, id, actor, reason, &created)
	e.mu.Unlock()
	if err := e.audit(ctx, Decision{Action: "rollout.rollback", Actor: actor, Reason: reason, RolloutID: id,
		Detail: "new rollouts: " + strings.Join(created, ", ")}, err); err != nil {
		return nil, err
	}
	var out []View
	for _, nid := range created {
		if err := e.Tick(ctx, nid); err != nil {
			e.opts.Log.Warn("first rollback step failed; the scheduler retries", "rollout_id", nid, "err", err)
		}
		v, err := e.View(ctx, nid)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (e *Engine) rollbackLocked(ctx context.Context, id, actor, reason string, created *[]string) error {
	if strings.TrimSpace(actor) == "" {
		return problem.Invalid("actor is required")
	}
	if err := requireReason("roll back", reason); err != nil {
		return err
	}
	st, err := e.load(ctx, id)
	if err != nil {
		return err
	}
	if st.p.Plan == "" {
		return fmt.Errorf("rollout %s predates staged rollouts; roll back with a new rollout of a release signed with allow_rollback: %w", id, problem.ErrConflict)
	}
	byVersion := map[string][]string{}
	for _, d := range st.devices {
		if d.State == string(DeviceSucceeded) || d.State == string(DeviceAssigned) || d.State == string(DeviceFailed) {
			byVersion[d.FromVersion] = append(byVersion[d.FromVersion], d.DeviceID)
		}
	}
	if len(byVersion) == 0 {
		return fmt.Errorf("rollout %s has changed no device; abort it instead: %w", id, problem.ErrConflict)
	}
	versions := make([]string, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	var problems []string
	previous := map[string]store.Release{}
	for _, v := range versions {
		rel, err := e.opts.Store.ReleaseByVersion(ctx, st.rel.Product, v)
		if errors.Is(err, problem.ErrNotFound) {
			problems = append(problems, fmt.Sprintf("%d device(s) ran %s %s before, which is not a release in the catalog", len(byVersion[v]), st.rel.Product, v))
			continue
		} else if err != nil {
			return err
		}
		ok := false
		if e.opts.Releases != nil {
			if ok, err = e.opts.Releases.AllowsRollback(rel.TargetPath); err != nil {
				return err
			}
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("release %s %s (%s) is not signed with allow_rollback; the offline release keys must flag it first (aftercare-sign release --allow-rollback)", rel.Product, rel.Version, rel.TargetPath))
			continue
		}
		previous[v] = rel
	}
	if len(problems) > 0 {
		return fmt.Errorf("cannot roll back rollout %s: %s: %w", id, strings.Join(problems, "; "), problem.ErrConflict)
	}
	now := e.opts.Now()
	unassign, err := e.abortLocked(st, now, "rolled back by "+actor+": "+reason)
	if err != nil {
		return err
	}
	if err := e.save(ctx, st, nil, nil, unassign); err != nil {
		return err
	}
	for _, v := range versions {
		plan := Plan{Cohort: Cohort{DeviceIDs: byVersion[v]}, Severity: st.plan.Severity, Rollback: true,
			SiteBudget: st.plan.SiteBudget, RoleBudget: st.plan.RoleBudget, Rate: st.plan.Rate}
		r, err := e.createLocked(ctx, Request{ReleaseID: previous[v].ID, Plan: plan, Actor: actor, Reason: reason})
		if err != nil {
			return fmt.Errorf("create the rollback rollout to %s: %w", v, err)
		}
		*created = append(*created, r.ID)
	}
	return nil
}
