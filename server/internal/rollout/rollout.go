// Package rollout is the staged rollout engine: a release goes to a cohort
// of devices in waves (a canary of N devices, then cumulative percentages
// such as 1 % → 10 % → 50 % → 100 %), with a soak time between waves, a
// failure threshold that halts the rollout by itself, disruption budgets
// per site and per (site, device role), a rate policy, and the policies of
// the sites: install automatically or only after hospital IT approves, and
// only inside weekly maintenance windows.
//
// How it works. Create validates a Plan, matches the cohort and gives every
// device a rank: devices are ordered per site by sha256(rollout ID, device
// ID), and the sites are taken round-robin (in the order of sha256(rollout
// ID, site ID)), so every wave is deterministic and spread across sites.
// Nothing is assigned yet. Tick, run by the scheduler (Run) on the injected
// clock, then for each active rollout:
//
//  1. adds devices that entered the cohort since (dynamic rollouts);
//  2. reads the outcome of every assigned device from its state reports:
//     succeeded when it runs the release, failed when it reported failed or
//     rolled-back for it;
//  3. halts the rollout when the failure rate since the last resume is over
//     the threshold, naming the first failures;
//  4. once every selected device of the current wave has an outcome, waits
//     the soak time, then opens the next wave by selecting devices in rank
//     order;
//  5. holds devices of approval sites until their IT approves (or while
//     deferred or declined);
//  6. assigns the release to selected devices within the disruption budgets
//     and the rate policy, through the assignments table, and tells the
//     publisher (the TUF rollout repository) and the devices.
//
// A step records what it did by itself (a wave opened, a halt, completion,
// a deferral's reminder and end) as events, in its own transaction, each
// key once per rollout.
//
// Every human decision (create, pause, resume, abort, roll back, approve,
// defer, decline, site policy) takes an actor and a reason and is passed to
// the Audit hook, refused attempts too. The package knows neither HTTP nor
// the access model.
//
// An Engine is safe for concurrent use; within one process its steps and
// decisions are serialised, and the store refuses a plan update based on a
// stale read.
package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aftercare/aftercare/server/internal/store"
)

// Status is where a rollout stands.
type Status string

// The statuses of a rollout.
const (
	StatusRunning   Status = "running"
	StatusPaused    Status = "paused"
	StatusHalted    Status = "halted" // by itself, over the failure threshold
	StatusAborted   Status = "aborted"
	StatusCompleted Status = "completed" // a dynamic rollout still takes in new devices
)

// activeStatuses are those in which a device belongs to its rollout: a
// second rollout for it is refused.
var activeStatuses = []string{string(StatusRunning), string(StatusPaused), string(StatusHalted), string(StatusCompleted)}

// DeviceState is where one device of a rollout stands.
type DeviceState string

// The states of a device in a rollout.
const (
	DeviceQueued    DeviceState = "queued"   // in the cohort, in no opened wave yet
	DeviceSelected  DeviceState = "selected" // in an opened wave, waiting for budget or rate
	DeviceHeld      DeviceState = "held"     // waiting for its site's approval
	DeviceDeferred  DeviceState = "deferred" // its site deferred the patch
	DeviceDeclined  DeviceState = "declined" // its site declined the patch
	DeviceAssigned  DeviceState = "assigned" // the release is assigned; installing
	DeviceSucceeded DeviceState = "succeeded"
	DeviceFailed    DeviceState = "failed"
	DeviceCancelled DeviceState = "cancelled" // the rollout was aborted first
)

// finishedStates are those after which a device may join another rollout.
var finishedStates = []string{string(DeviceSucceeded), string(DeviceFailed), string(DeviceCancelled), string(DeviceDeclined)}

// EventKind names what the scheduler did by itself (store.RolloutEvent).
type EventKind string

// The kinds of rollout events.
const (
	EventWaveOpened       EventKind = "wave.opened"
	EventHalted           EventKind = "rollout.halted"
	EventCompleted        EventKind = "rollout.completed"
	EventDeferralReminder EventKind = "deferral.reminder" // a site's deferral ends soon
	EventDeferralEnded    EventKind = "deferral.ended"    // its devices await approval again
)

// A Decision is one human decision, for the audit log.
type Decision struct {
	Action    string    `json:"action"` // "rollout.create", "rollout.pause", "site.approve", ...
	Actor     string    `json:"actor"`
	Reason    string    `json:"reason"`
	RolloutID string    `json:"rollout_id,omitempty"`
	SiteID    string    `json:"site_id,omitempty"`
	Detail    string    `json:"detail,omitempty"`
	Outcome   string    `json:"outcome"` // "done" or "refused: <why>"
	At        time.Time `json:"at"`
}

// A Publisher is told after every change of device assignments.
type Publisher interface {
	AssignmentsChanged(ctx context.Context, deviceIDs []string) error
}

// A Hinter nudges a device to check for its assignment now.
type Hinter interface {
	Hint(ctx context.Context, deviceID, reason string) error
}

// ReleaseFlags tells what the offline release keys signed for a target.
type ReleaseFlags interface {
	// AllowsRollback reports whether the release repository signs the
	// target with allow_rollback.
	AllowsRollback(targetPath string) (bool, error)
}

// Options configures an Engine.
type Options struct {
	Store *store.Store // required
	Log   *slog.Logger // required
	// Publisher publishes assignments to devices; nil publishes nothing
	// beyond the store.
	Publisher Publisher
	// Hints nudges devices; nil until the broker is connected, see
	// SetHinter.
	Hints Hinter
	// Releases answers for allow_rollback; nil refuses every roll-back.
	Releases ReleaseFlags
	// Audit is called with every human decision, refused ones too; nil
	// records nothing. An error from it fails the decision.
	Audit func(ctx context.Context, d Decision) error
	// MaxDeferral is the longest deferral per severity, counted from the
	// rollout's creation; nil means DefaultMaxDeferral.
	MaxDeferral map[string]time.Duration
	// DeferralReminder is how long before a deferral ends the scheduler
	// records a reminder event; 0 records none (the end is recorded
	// still).
	DeferralReminder time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TickInterval is how often Run steps; default 10s.
	TickInterval time.Duration
	// Leader, when set, is asked before each scheduled step; only the
	// replica that holds it steps (e.g. a lease in the shared database),
	// so scheduled work runs once across replicas. Nil: this process
	// always steps.
	Leader Leader
	// ReportsFeed says every state report this process stores is passed
	// to Reported. A scheduled step then reads the outcome of only the
	// devices that reported since the last one, and of every assigned
	// device once per FullObserve (reports stored by another replica, or
	// a device that never reports). False: every step reads them all.
	ReportsFeed bool
	// FullObserve is how often, at least, a step reads the outcome of
	// every assigned device when ReportsFeed is set; default ten
	// TickIntervals.
	FullObserve time.Duration
}

// A Leader says whether this replica may run scheduled work now.
type Leader interface {
	// Hold takes or renews the claim; false while another replica holds it.
	Hold(ctx context.Context) (bool, error)
}

// DefaultMaxDeferral is the longest a site may defer a patch, by severity.
var DefaultMaxDeferral = map[string]time.Duration{
	"critical": 7 * 24 * time.Hour,
	"high":     30 * 24 * time.Hour,
	"medium":   90 * 24 * time.Hour,
	"low":      180 * 24 * time.Hour,
}

// Engine runs staged rollouts.
type Engine struct {
	opts Options

	mu sync.Mutex // serialises steps and decisions
	// kept is, for each steppable rollout, its devices and event keys as
	// this engine last wrote them: the next step starts from them instead
	// of reading them again (see loadLocked).
	kept map[string]kept // guarded by mu
	// observedAt is when a step last read the outcome of every assigned
	// device of a rollout (see Options.ReportsFeed).
	observedAt map[string]time.Time // guarded by mu
	hints      Hinter               // guarded by hmu
	hmu        sync.Mutex
	// reported are the devices whose reports this process stored since
	// the last scheduled step (Reported).
	reported map[string]bool // guarded by rmu
	rmu      sync.Mutex
}

// New returns an Engine.
func New(opts Options) (*Engine, error) {
	if opts.Store == nil || opts.Log == nil {
		return nil, errors.New("rollout: Store and Log are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxDeferral == nil {
		opts.MaxDeferral = DefaultMaxDeferral
	}
	if opts.TickInterval <= 0 {
		opts.TickInterval = 10 * time.Second
	}
	if opts.FullObserve <= 0 {
		opts.FullObserve = 10 * opts.TickInterval
	}
	return &Engine{opts: opts, hints: opts.Hints, kept: map[string]kept{}, observedAt: map[string]time.Time{}, reported: map[string]bool{}}, nil
}

// Reported tells the engine that a device's state report was stored (see
// Options.ReportsFeed).
func (e *Engine) Reported(deviceID string) {
	e.rmu.Lock()
	e.reported[deviceID] = true
	e.rmu.Unlock()
}

// takeReported returns the devices that reported since it was last
// called, or nil when reports are not fed to the engine.
func (e *Engine) takeReported() map[string]bool {
	if !e.opts.ReportsFeed {
		return nil
	}
	e.rmu.Lock()
	defer e.rmu.Unlock()
	r := e.reported
	e.reported = map[string]bool{}
	return r
}

// SetHinter sets where hints go, once the broker connection exists.
func (e *Engine) SetHinter(h Hinter) {
	e.hmu.Lock()
	e.hints = h
	e.hmu.Unlock()
}

func (e *Engine) hint(ctx context.Context, ids []string, reason string) {
	e.hmu.Lock()
	h := e.hints
	e.hmu.Unlock()
	if h == nil {
		return
	}
	// Each hint waits for the broker's acknowledgement; hintsInFlight at
	// a time keep a wave of thousands from taking thousands of round trips.
	var wg sync.WaitGroup
	sem := make(chan struct{}, hintsInFlight)
	for _, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := h.Hint(ctx, id, reason); err != nil {
				// Devices poll too; a lost hint only delays them.
				e.opts.Log.Warn("hint not sent", "device_id", id, "err", err)
			}
		}()
	}
	wg.Wait()
}

// hintsInFlight bounds the hints awaiting the broker's acknowledgement.
const hintsInFlight = 32

// audit passes a decision to the Audit hook. refused is the reason the
// decision was refused, or nil.
func (e *Engine) audit(ctx context.Context, d Decision, refused error) error {
	d.At = e.opts.Now().UTC()
	d.Outcome = "done"
	if refused != nil {
		d.Outcome = "refused: " + refused.Error()
	}
	if e.opts.Audit == nil {
		return refused
	}
	if err := e.opts.Audit(ctx, d); err != nil {
		return errors.Join(refused, fmt.Errorf("append %s to the audit log: %w", d.Action, err))
	}
	return refused
}

// Run steps every active rollout each TickInterval until ctx ends. A step
// that fails is logged and tried again at the next tick.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.opts.TickInterval)
	defer t.Stop()
	for {
		if e.leading(ctx) {
			if err := e.tick(ctx, e.takeReported()); err != nil && ctx.Err() == nil {
				e.opts.Log.Error("rollout step failed", "err", err)
			}
		} else {
			// Another replica steps, and sees these reports in the store;
			// when this one leads again, it starts with a full read.
			e.takeReported()
			e.mu.Lock()
			clear(e.observedAt)
			e.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (e *Engine) leading(ctx context.Context) bool {
	if e.opts.Leader == nil {
		return true
	}
	ok, err := e.opts.Leader.Hold(ctx)
	if err != nil && ctx.Err() == nil {
		e.opts.Log.Warn("scheduler lease not held; skipping this step", "err", err)
	}
	return ok && err == nil
}
