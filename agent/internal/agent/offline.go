package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/aftercare/aftercare/agent/internal/update"
	"github.com/aftercare/aftercare/internal/atomicfile"
)

// ErrNothingToInstall is returned by InstallOffline when the repositories
// assign this device nothing new: no entry for it, or the release it runs.
var ErrNothingToInstall = errors.New("agent: nothing to install")

// InstallOffline installs the assignment once, without the broker: for an
// offline bundle, the agent is built with the bundle's HTTP client and
// offline.BaseURL as its server URL, so the metadata and image go through
// the same verification as an online update. It returns ErrReboot when a
// slot is armed, a *update.VerifyError (ErrRefused) naming the reason when
// the bundle is refused, ErrNothingToInstall, or another error.
//
// The reports it makes (downloading, verified, installed, or failed with
// the reason) wait in the outbox until the agent next reaches the broker.
func (a *Agent) InstallOffline(ctx context.Context) error {
	// The first refresh finds out what the bundle assigns, so that an
	// empty or stale bundle gets a plain answer; check refreshes again
	// from the same files, which changes nothing.
	asg, err := a.updater.Assignment(ctx)
	if err != nil {
		var ve *update.VerifyError
		target := ""
		if errors.As(err, &ve) {
			target = ve.Target
		}
		a.refuseOrRetry(ctx, "", target, "", err)
		return err
	}
	if asg == nil {
		return fmt.Errorf("%w: the rollout repository in the bundle assigns no release to device %s", ErrNothingToInstall, a.opts.Identity.DeviceID)
	}
	_, running, err := a.inst.Running()
	if err != nil {
		return err
	}
	if asg.Target.Manifest.Version == running.Version {
		return fmt.Errorf("%w: the bundle assigns %s, which this device already runs", ErrNothingToInstall, running.Version)
	}
	// Installing a bundle is an operator's explicit request: an earlier
	// refusal of the same assignment (say, from a damaged copy of this
	// bundle) must not silently skip it.
	a.state.forget()
	err = a.check(ctx)
	if err != nil {
		return err
	}
	// check reports a refusal and records it instead of returning it.
	if r := a.state.refusal(); r != nil && r.RolloutID == asg.RolloutID && r.Target == asg.Target.Path {
		return &update.VerifyError{Target: r.Target, Code: "refused", Detail: r.Reason}
	}
	return fmt.Errorf("offline install of %s did not arm a slot; see the log", asg.Target.Path)
}

// refusal returns the refused assignment, or nil.
func (s *stateFile) refusal() *refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.v.Refused == nil {
		return nil
	}
	r := *s.v.Refused
	return &r
}

// forget drops a remembered refusal.
func (s *stateFile) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.v.Refused == nil {
		return
	}
	s.v.Refused = nil
	if b, err := json.Marshal(s.v); err == nil {
		atomicfile.WriteFile(s.path, b, 0o600)
	}
}
