// Package agent is the device agent's main loop: it finishes an install
// across a reboot, then checks for an assignment at start, on every MQTT
// hint and on a jittered poll timer, and installs it when the rollout and
// release repositories vouch for it. Every state change goes to the on-disk
// outbox and from there to the server.
//
// A check goes: rollout repository refresh and this device's entry, release
// repository refresh and the same image signed there (update) -> device
// checks (model, version, signed rollback flag) -> stream into the
// inactive slot (install) -> arm the slot -> ErrReboot. The caller
// reboots; the next Run commits or reports the rollback.
//
// Every refusal is reported to the server with its reason and logged as a
// WARN "security event" with the fields event, code, rollout_id, target
// and err.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"time"

	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/agent/internal/report"
	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/agent/internal/update"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

// ErrReboot is returned by Run when the device must reboot to continue: a
// new slot is armed, or an unhealthy slot must fall back.
var ErrReboot = errors.New("agent: reboot required")

// Options configures an Agent.
type Options struct {
	ServerURL        string   // fleet server API base URL; required
	Identity         Identity // from enrollment; required
	BrokerURL        string   // overrides Identity.BrokerURL when set
	Model            string   // required
	HardwareRevision string
	FactoryVersion   string // version of the booted slot at first start; required
	BootstrapRoot    []byte // release repository root shipped in the image; required
	RolloutRoot      []byte // rollout repository root shipped in the image; required
	StateDir         string // required
	Boot             install.Bootloader
	Slots            map[firmware.Slot]string
	// Health decides whether a freshly booted slot may be committed; nil
	// accepts every boot.
	Health       func(context.Context) error
	PollInterval time.Duration // default 1h; each wait is jittered by ±20%
	OutboxBytes  int64         // outbox budget; default report.DefaultMaxBytes
	HTTP         *http.Client  // required; its transport has timeouts
	// Limits guard metadata and image downloads against slow retrieval;
	// the zero value means slowread.DefaultLimits.
	Limits slowread.Limits
	// BusyHook is a local command asked before arming and rebooting; a
	// non-zero exit means the device is in clinical use. Empty: never busy.
	BusyHook string
	Log      *slog.Logger // required
	Now      func() time.Time
}

// Agent is one device's agent. Run it once per boot.
type Agent struct {
	opts    Options
	log     *slog.Logger
	inst    *install.Installer
	updater *update.Client
	outbox  *report.Outbox
	state   *stateFile
	// held is an image written to the inactive slot and waiting for a
	// maintenance window or for the device to be free; nil when none.
	held *heldInstall
	// problem is the last refusal or slow retrieval reported without an
	// assignment to remember it by; it is not reported again until a
	// check gets past it.
	problem string
}

// New prepares an agent: installer, the repositories' client and outbox.
func New(opts Options) (*Agent, error) {
	if opts.ServerURL == "" || opts.Identity.DeviceID == "" || opts.Model == "" || opts.FactoryVersion == "" ||
		len(opts.BootstrapRoot) == 0 || len(opts.RolloutRoot) == 0 || opts.StateDir == "" || opts.Boot == nil || opts.HTTP == nil || opts.Log == nil {
		return nil, errors.New("agent: ServerURL, Identity, Model, FactoryVersion, BootstrapRoot, RolloutRoot, StateDir, Boot, HTTP and Log are required")
	}
	if opts.Limits == (slowread.Limits{}) {
		opts.Limits = slowread.DefaultLimits()
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Health == nil {
		opts.Health = func(context.Context) error { return nil }
	}
	if opts.BrokerURL == "" {
		opts.BrokerURL = opts.Identity.BrokerURL
	}
	log := opts.Log.With("device_id", opts.Identity.DeviceID)
	inst, err := install.New(install.Options{Boot: opts.Boot, Slots: opts.Slots, Dir: opts.StateDir, Log: log, Now: opts.Now}, opts.FactoryVersion)
	if err != nil {
		return nil, err
	}
	up, err := update.New(update.Options{
		ReleaseURL: opts.ServerURL + "/tuf/release", RolloutURL: opts.ServerURL + "/tuf/rollout",
		ReleaseRoot: opts.BootstrapRoot, RolloutRoot: opts.RolloutRoot, DeviceID: opts.Identity.DeviceID,
		StateDir: filepath.Join(opts.StateDir, "tuf"), HTTP: opts.HTTP, Limits: opts.Limits, Now: opts.Now, Log: log,
	})
	if err != nil {
		return nil, err
	}
	ob, err := report.OpenOutbox(filepath.Join(opts.StateDir, "outbox"), opts.OutboxBytes)
	if err != nil {
		return nil, err
	}
	st, err := openState(filepath.Join(opts.StateDir, "agent.json"))
	if err != nil {
		return nil, err
	}
	return &Agent{opts: opts, log: log, inst: inst, updater: up, outbox: ob, state: st}, nil
}

// Run finishes any install in progress and then serves assignments until
// ctx ends (returning nil) or a reboot is needed (returning ErrReboot).
func (a *Agent) Run(ctx context.Context) error {
	link, err := report.Connect(report.LinkOptions{
		BrokerURL: a.opts.BrokerURL, DeviceID: a.opts.Identity.DeviceID, Credential: a.opts.Identity.Credential,
		TopicPrefix: a.opts.Identity.TopicPrefix, Log: a.log,
	})
	if err != nil {
		return err
	}
	defer link.Close()
	sendCtx, stopSend := context.WithCancel(context.Background())
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		report.Deliver(sendCtx, a.outbox, link, a.log)
	}()
	defer func() {
		stopSend()
		<-sent
	}()

	if err := a.afterBoot(ctx); err != nil {
		return a.beforeReboot(ctx, err)
	}
	for {
		err := a.check(ctx)
		if errors.Is(err, ErrReboot) {
			return a.beforeReboot(ctx, err)
		}
		if err != nil && ctx.Err() == nil {
			a.log.Warn("update check failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-link.Hints():
			a.log.Debug("hint received")
		case <-time.After(a.nextCheck()):
		}
	}
}

// jitter spreads polls by ±20% so a fleet does not poll in step.
func jitter(d time.Duration) time.Duration {
	return d*8/10 + rand.N(d*4/10+1)
}

// beforeReboot gives the sender a moment to deliver what is queued, so the
// server hears "installed" before the device goes quiet; what is not sent
// stays in the outbox for the next boot.
func (a *Agent) beforeReboot(ctx context.Context, err error) error {
	if !errors.Is(err, ErrReboot) {
		return err
	}
	deadline := time.After(3 * time.Second)
	for {
		pending, perr := a.outbox.Pending()
		if perr != nil || len(pending) == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-deadline:
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// afterBoot reports how the install in progress before the reboot ended.
func (a *Agent) afterBoot(ctx context.Context) error {
	health := func(ctx context.Context, j install.Job) error {
		a.report(protocol.StateBooted, j.Target, j.Version, "")
		return a.opts.Health(ctx)
	}
	out, err := a.inst.AfterBoot(ctx, health)
	if err != nil {
		return err
	}
	j := out.Job
	switch out.Kind {
	case install.NoInstall:
		a.report(protocol.StateIdle, "", "", "")
	case install.Committed:
		a.report(protocol.StateCommitted, j.Target, j.Version, "")
	case install.Unhealthy:
		a.report(protocol.StateFailed, j.Target, j.Version, out.Reason)
		return ErrReboot
	case install.RolledBack:
		a.report(protocol.StateRolledBack, j.Target, j.Version, out.Reason)
		a.state.refuse(j.RolloutID, j.Target, out.Reason)
	case install.Interrupted:
		a.report(protocol.StateFailed, j.Target, j.Version, out.Reason)
	}
	return nil
}

// report appends a state report for the running slot to the outbox.
func (a *Agent) report(state protocol.State, target, version, reason string) {
	_, running, err := a.inst.Running()
	if err != nil {
		a.log.Error("cannot read running slot for report", "err", err)
	}
	r, err := a.outbox.Append(protocol.StateReport{State: state, Running: running.Version, Target: target, Version: version, Reason: reason}, a.opts.Now())
	if err != nil {
		a.log.Error("report not queued", "state", state, "err", err)
		return
	}
	a.log.Info("state", "seq", r.Seq, "state", state, "running", running.Version, "target", target, "reason", reason)
}

// check installs the device's assignment if it is new, signed and allowed.
func (a *Agent) check(ctx context.Context) error {
	asg, err := a.updater.Assignment(ctx)
	if err != nil {
		// A refusal names the assigned target when it got that far.
		var ve *update.VerifyError
		target := ""
		if errors.As(err, &ve) {
			target = ve.Target
		}
		return a.refuseOrRetry(ctx, "", target, "", err)
	}
	if asg == nil {
		a.settled()
		return nil
	}
	t := asg.Target
	_, running, err := a.inst.Running()
	if err != nil {
		return err
	}
	if t.Manifest.Version == running.Version || a.state.refused(asg.RolloutID, t.Path) {
		a.settled()
		return nil
	}
	if err := update.Check(t, a.opts.Model, a.opts.HardwareRevision, running.Version); err != nil {
		return a.refuseOrRetry(ctx, asg.RolloutID, t.Path, t.Manifest.Version, err)
	}
	job := install.Job{RolloutID: asg.RolloutID, Target: t.Path, Version: t.Manifest.Version, Image: t.Manifest.Image}
	slot, ok := a.written(job)
	if !ok {
		a.problem = "" // the download report below says where the device stands
		a.report(protocol.StateDownloading, job.Target, job.Version, "")
		body, err := a.download(ctx, t)
		if err != nil {
			return a.refuseOrRetry(ctx, asg.RolloutID, job.Target, job.Version, err)
		}
		slot, err = a.inst.Write(ctx, body, job)
		body.Close()
		if err != nil {
			return a.refuseOrRetry(ctx, asg.RolloutID, job.Target, job.Version, err)
		}
		a.report(protocol.StateVerified, job.Target, job.Version, "")
	}
	// Downloads may happen any time; arming and rebooting only inside the
	// site's maintenance window and when the device is not in use.
	if why, retry := a.mayInstall(ctx, asg.Windows); why != "" {
		a.hold(job, slot, why, retry)
		return nil
	}
	a.held = nil
	if err := a.inst.Arm(slot, job); err != nil {
		a.report(protocol.StateFailed, job.Target, job.Version, "arm slot: "+err.Error())
		return err
	}
	a.report(protocol.StateInstalled, job.Target, job.Version, "")
	return ErrReboot
}

// settled reports idle once a problem reported earlier has cleared and the
// device has nothing to do.
func (a *Agent) settled() {
	if a.problem != "" {
		a.problem = ""
		a.report(protocol.StateIdle, "", "", "")
	}
}

// securityCode tells whether err is a security event, and its code: a
// refusal by the signed metadata, an image that does not match what was
// signed, or slow retrieval.
func securityCode(err error) (string, bool) {
	var ve *update.VerifyError
	switch {
	case errors.As(err, &ve):
		return ve.Code, true
	case errors.Is(err, firmware.ErrMismatch):
		return "image mismatch", true
	case errors.Is(err, slowread.ErrTooSlow):
		return "slow retrieval", true
	}
	return "", false
}

// refuseOrRetry reports a failed check. A security event (see
// securityCode) is logged and reported with its reason; a refusal of an
// assignment is remembered for its rollout so the device does not retry
// it, while slow retrieval and refusals of a repository as a whole are
// retried at the next check (reported once until they clear). Any other
// failure (the network, the disk) is reported when it hit an install and
// retried.
func (a *Agent) refuseOrRetry(ctx context.Context, rolloutID, target, version string, err error) error {
	if ctx.Err() != nil {
		// Shutting down mid-check is not a failed install.
		return err
	}
	code, security := securityCode(err)
	if !security {
		if target != "" {
			a.report(protocol.StateFailed, target, version, err.Error())
		}
		return err
	}
	event := "assignment refused"
	switch {
	case code == "slow retrieval":
		event = "slow retrieval"
	case target == "":
		event = "repository refused"
	}
	a.log.Warn("security event", "event", event, "code", code, "rollout_id", rolloutID, "target", target, "err", err)
	reason := err.Error()
	if rolloutID != "" && code != "slow retrieval" {
		a.report(protocol.StateFailed, target, version, reason)
		a.state.refuse(rolloutID, target, reason)
		return nil
	}
	if reason != a.problem {
		a.report(protocol.StateFailed, target, version, reason)
		a.problem = reason
	}
	if code == "slow retrieval" {
		return err
	}
	return nil
}

// download starts the image download. The installer enforces the signed
// length and digests while it reads; a declared length above the signed one
// is refused before reading anything, and a source too slow for the limits
// fails with slowread.ErrTooSlow.
func (a *Agent) download(ctx context.Context, t *update.Target) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	res, err := a.opts.HTTP.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("download %s: %w", t.Path, err)
	}
	if res.StatusCode != http.StatusOK {
		res.Body.Close()
		cancel()
		return nil, fmt.Errorf("download %s: status %s", t.Path, res.Status)
	}
	if res.ContentLength > t.Length {
		res.Body.Close()
		cancel()
		return nil, &update.VerifyError{Target: t.Path, Code: update.CodeTooLarge,
			Detail: fmt.Sprintf("the server offers %d bytes, more than the signed %d; nothing was downloaded", res.ContentLength, t.Length)}
	}
	return &body{Reader: slowread.New(res.Body, a.opts.Limits, cancel), cancel: cancel}, nil
}

// body is an image download: the limited reader and the request's cancel.
type body struct {
	*slowread.Reader
	cancel context.CancelFunc
}

func (b *body) Close() error {
	err := b.Reader.Close()
	b.cancel()
	return err
}
