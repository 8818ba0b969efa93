package rollout

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// DecisionKind is what a site's IT decided about a patch.
type DecisionKind string

// The decisions of a site's IT.
const (
	DecisionApproved DecisionKind = "approved"
	DecisionDeferred DecisionKind = "deferred"
	DecisionDeclined DecisionKind = "declined"
)

// A Pending is a patch waiting for, or decided by, a site's IT.
type Pending struct {
	RolloutID string `json:"rollout_id"`
	ReleaseID string `json:"release_id"`
	Product   string `json:"product"`
	Version   string `json:"version"`
	Notes     string `json:"notes,omitempty"`
	Severity  string `json:"severity"`
	Devices   int    `json:"devices"` // devices of the site it holds
	// Decision is the site's current decision, if any.
	Decision *store.SiteDecision `json:"decision,omitempty"`
	// MaxDeferUntil is the latest a deferral may reach for this severity;
	// the manufacturer sees it as the deadline.
	MaxDeferUntil time.Time `json:"max_defer_until"`
	Overdue       bool      `json:"overdue,omitempty"` // a deferral has ended without approval
	// Events are the rollout's reminders and deferral ends for the site.
	Events []store.RolloutEvent `json:"events,omitempty"`
}

// Pending returns the patches held for a site's decision: awaiting
// approval, deferred or declined.
func (e *Engine) Pending(ctx context.Context, siteID string) ([]Pending, error) {
	if _, err := e.opts.Store.Site(ctx, siteID); err != nil {
		return nil, err
	}
	ids, err := e.opts.Store.SiteRollouts(ctx, siteID, string(DeviceHeld), string(DeviceDeferred), string(DeviceDeclined))
	if err != nil {
		return nil, err
	}
	decisions, err := e.opts.Store.SiteDecisions(ctx, "", siteID)
	if err != nil {
		return nil, err
	}
	out := []Pending{}
	now := e.opts.Now()
	for _, id := range ids {
		st, err := e.load(ctx, id)
		if err != nil {
			return nil, err
		}
		p := Pending{RolloutID: id, ReleaseID: st.rel.ID, Product: st.rel.Product, Version: st.rel.Version,
			Notes: st.rel.Manifest.Notes, Severity: st.plan.Severity, MaxDeferUntil: e.maxDeferUntil(st)}
		for _, d := range st.devices {
			if d.SiteID == siteID && (d.State == string(DeviceHeld) || d.State == string(DeviceDeferred) || d.State == string(DeviceDeclined)) {
				p.Devices++
			}
		}
		for i := range decisions {
			if decisions[i].RolloutID == id {
				p.Decision = &decisions[i]
				p.Overdue = decisions[i].Decision == string(DecisionDeferred) && !now.Before(decisions[i].DeferredUntil)
			}
		}
		if p.Events, err = e.opts.Store.RolloutEvents(ctx, id, siteID); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (e *Engine) maxDeferUntil(st *state) time.Time {
	return st.r.CreatedAt.Add(e.opts.MaxDeferral[st.plan.Severity]).UTC()
}

// Approve lets a site's held devices take a rollout's release.
func (e *Engine) Approve(ctx context.Context, siteID, rolloutID, actor, reason string) error {
	return e.decide(ctx, siteID, rolloutID, DecisionApproved, time.Time{}, actor, reason)
}

// Defer holds a site's devices until a later time, no later than the
// maximum deferral of the patch's severity.
func (e *Engine) Defer(ctx context.Context, siteID, rolloutID string, until time.Time, actor, reason string) error {
	return e.decide(ctx, siteID, rolloutID, DecisionDeferred, until, actor, reason)
}

// Decline keeps a site's devices off a release; the compliance summary
// shows it as risk.
func (e *Engine) Decline(ctx context.Context, siteID, rolloutID, actor, reason string) error {
	return e.decide(ctx, siteID, rolloutID, DecisionDeclined, time.Time{}, actor, reason)
}

func (e *Engine) decide(ctx context.Context, siteID, rolloutID string, kind DecisionKind, until time.Time, actor, reason string) error {
	e.mu.Lock()
	err := e.decideLocked(ctx, siteID, rolloutID, kind, until, actor, reason)
	e.mu.Unlock()
	d := Decision{Action: "site." + strings.TrimSuffix(string(kind), "d"), Actor: actor, Reason: reason, RolloutID: rolloutID, SiteID: siteID}
	if kind == DecisionDeferred {
		d.Action, d.Detail = "site.defer", "until "+until.UTC().Format(time.RFC3339)
	}
	if err := e.audit(ctx, d, err); err != nil {
		return err
	}
	e.opts.Log.Info("site decision", "site_id", siteID, "rollout_id", rolloutID, "decision", kind, "actor", actor)
	if err := e.Tick(ctx, rolloutID); err != nil {
		e.opts.Log.Warn("rollout step after a site decision failed; the scheduler retries", "rollout_id", rolloutID, "err", err)
	}
	return nil
}

func (e *Engine) decideLocked(ctx context.Context, siteID, rolloutID string, kind DecisionKind, until time.Time, actor, reason string) error {
	var problems []string
	if strings.TrimSpace(actor) == "" {
		problems = append(problems, "actor is required")
	}
	if kind != DecisionApproved && strings.TrimSpace(reason) == "" {
		problems = append(problems, fmt.Sprintf("reason is required to %s", strings.TrimSuffix(string(kind), "d")))
	}
	if err := problem.Invalid(problems...); err != nil {
		return err
	}
	st, err := e.load(ctx, rolloutID)
	if err != nil {
		return err
	}
	held := 0
	for _, d := range st.devices {
		if d.SiteID == siteID && d.State != string(DeviceCancelled) {
			held++
		}
	}
	if held == 0 {
		// Not found, not forbidden: a site learns nothing about rollouts
		// that do not concern it.
		return fmt.Errorf("rollout %q has no device at site %q: %w", rolloutID, siteID, problem.ErrNotFound)
	}
	if s := Status(st.p.Status); s == StatusAborted {
		return fmt.Errorf("rollout %s was aborted; there is nothing to decide: %w", rolloutID, problem.ErrConflict)
	}
	now := e.opts.Now()
	if kind == DecisionDeferred {
		limit := e.maxDeferUntil(st)
		switch {
		case !until.After(now):
			return problem.Invalid(fmt.Sprintf("until %s must be in the future", until.UTC().Format(time.RFC3339)))
		case until.After(limit):
			return problem.Invalid(fmt.Sprintf("until %s is past the maximum deferral for a %s patch (%s, until %s)",
				until.UTC().Format(time.RFC3339), st.plan.Severity, e.opts.MaxDeferral[st.plan.Severity], limit.Format(time.RFC3339)))
		}
	}
	return e.opts.Store.SetSiteDecision(ctx, store.SiteDecision{RolloutID: rolloutID, SiteID: siteID, Decision: string(kind),
		DeferredUntil: until, Reason: reason, Actor: actor, DecidedAt: now})
}
