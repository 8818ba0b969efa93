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
// Every refusal is reported to the server with its reason, logged as a
// WARN "security event" with the fields event, code, rollout_id, target
// and err, and queued as an integrity event (events.go). Rollbacks, slot
// changes the agent did not make and configuration changes are events
// too; journald, file tails and the syslog socket add theirs while Run
// runs (agent/internal/events).
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"time"

	"github.com/aftercare/aftercare/agent/internal/download"
	"github.com/aftercare/aftercare/agent/internal/events"
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
	ServerURL string   // fleet server API base URL; required
	Identity  Identity // from enrollment; required
	// Credentials are the device's key and certificate for mutual TLS with
	// the broker and, over https, the API; they are renewed in the last
	// third of their life. nil connects to the broker without a client
	// certificate (tests with a plain broker).
	Credentials *Credentials
	// ServerRoots verify the server's HTTPS certificate when a renewed
	// certificate is tried; nil means the system roots.
	ServerRoots      *x509.CertPool
	BrokerURL        string // overrides Identity.BrokerURL when set
	Model            string // required
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
	// ConfigHash identifies the agent's effective configuration; a change
	// since the previous start is reported as a config event. Empty: not
	// checked.
	ConfigHash string
	// EventSources feed security events (journald, file tails, the syslog
	// socket) into the outbox while Run runs; nil: only the agent's own.
	EventSources []events.Source
	Log          *slog.Logger // required
	Now          func() time.Time
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
	lo := report.LinkOptions{
		BrokerURL: a.opts.BrokerURL, DeviceID: a.opts.Identity.DeviceID,
		TopicPrefix: a.opts.Identity.TopicPrefix, Log: a.log,
	}
	if a.opts.Credentials != nil {
		lo.TLS = a.opts.Credentials.MQTTTLS(nil)
		if !tlsBroker(lo.BrokerURL) {
			a.log.Warn("broker URL is not TLS: the device connects without its certificate", "broker", lo.BrokerURL)
		}
	}
	link, err := report.Connect(lo)
	if err != nil {
		return err
	}
	defer link.Close()
	stopRenew := a.startRenewal()
	defer stopRenew()
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
	srcCtx, stopSources := context.WithCancel(ctx)
	srcDone := make(chan struct{})
	go func() {
		defer close(srcDone)
		events.Run(srcCtx, a.log, a.emit, a.opts.EventSources...)
	}()
	defer func() {
		stopSources()
		<-srcDone
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
	if err := a.startEvents(out.Kind != install.NoInstall); err != nil {
		a.log.Warn("cannot check for slot and config changes", "err", err)
	}
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
		a.event(protocol.CategoryUpdate, protocol.SeverityError, "install rolled back: "+out.Reason,
			map[string]string{"event": "rollback", "rollout_id": j.RolloutID, "target": j.Target, "version": j.Version})
		a.state.refuse(j.RolloutID, j.Target, out.Reason)
	case install.Waiting:
		a.report(protocol.StateVerified, j.Target, j.Version, out.Reason)
	case install.Interrupted:
		// A write that resumes is still downloading; one that cannot has
		// failed and starts over at the next check.
		state := protocol.StateFailed
		if out.Resume {
			state = protocol.StateDownloading
		}
		a.report(state, j.Target, j.Version, out.Reason)
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
		a.abandon()
		a.settled()
		return nil
	}
	t := asg.Target
	_, running, err := a.inst.Running()
	if err != nil {
		return err
	}
	if t.Manifest.Version == running.Version || a.state.refused(asg.RolloutID, t.Path) {
		a.abandon()
		a.settled()
		return nil
	}
	if err := update.Check(t, a.opts.Model, a.opts.HardwareRevision, running.Version); err != nil {
		return a.refuseOrRetry(ctx, asg.RolloutID, t.Path, t.Manifest.Version, err)
	}
	job := install.Job{RolloutID: asg.RolloutID, Target: t.Path, Version: t.Manifest.Version, Image: t.Manifest.Image}
	slot, ok := a.written(ctx, job)
	if !ok {
		a.problem = "" // the download report below says where the device stands
		a.report(protocol.StateDownloading, job.Target, job.Version, "")
		var err error
		slot, err = a.inst.Install(ctx, a.fetch(t), job)
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

// abandon drops an interrupted write that the current assignment no
// longer asks for. (A write for another assignment is dropped by Install.)
func (a *Agent) abandon() {
	if err := a.inst.Abandon(); err != nil {
		a.log.Warn("cannot drop the interrupted install", "err", err)
	}
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
		a.securityEvent(event, code, rolloutID, target, err)
		a.state.refuse(rolloutID, target, reason)
		return nil
	}
	if reason != a.problem {
		a.report(protocol.StateFailed, target, version, reason)
		a.securityEvent(event, code, rolloutID, target, err)
		a.problem = reason
	}
	if code == "slow retrieval" {
		return err
	}
	return nil
}

// fetch returns the installer's source of t's image: HTTP Range requests
// through the slow-retrieval limits. A declared length above the signed
// one is refused before reading anything.
func (a *Agent) fetch(t *update.Target) install.Fetch {
	src := download.Source{HTTP: a.opts.HTTP, URL: t.URL, Length: t.Length, Limits: a.opts.Limits}
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		body, start, err := src.Open(ctx, offset)
		if errors.Is(err, download.ErrTooLarge) {
			return nil, 0, &update.VerifyError{Target: t.Path, Code: update.CodeTooLarge, Err: err}
		}
		return body, start, err
	}
}
