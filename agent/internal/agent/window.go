package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"time"

	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

const (
	// busyHookTimeout bounds one run of the busy hook; a hook that hangs
	// counts as busy.
	busyHookTimeout = 30 * time.Second
	// busyRetry is how soon a device that was busy asks again.
	busyRetry = 5 * time.Minute
	// maxBusyReason bounds the hook's explanation in a report.
	maxBusyReason = 200
)

// heldInstall is an image written to the inactive slot, waiting to be
// armed. The agent is the only writer of the inactive slot, so while it
// runs the slot keeps what was written; after a restart the installer's
// journal says what the slot holds, and a read-back confirms it.
type heldInstall struct {
	job    install.Job
	slot   firmware.Slot
	reason string    // last reported reason for waiting
	retry  time.Time // when to check again
}

// written returns the slot already holding job's image, if any.
func (a *Agent) written(ctx context.Context, job install.Job) (firmware.Slot, bool) {
	if a.held != nil && a.held.job.Target == job.Target && a.held.job.RolloutID == job.RolloutID {
		return a.held.slot, true
	}
	a.held = nil
	return a.inst.Written(ctx, job)
}

// mayInstall returns "" when the device may arm its new slot and reboot
// now, or why it waits (outside every maintenance window, or busy in
// clinical use as the local busy hook says) and when to ask again.
func (a *Agent) mayInstall(ctx context.Context, windows []protocol.Window) (string, time.Time) {
	now := a.opts.Now()
	if ok, next := protocol.InWindow(windows, now); !ok {
		if next.IsZero() {
			return "outside the maintenance window; no later window is signed yet", now.Add(a.opts.PollInterval)
		}
		return "outside the maintenance window; the next opens " + next.UTC().Format(time.RFC3339), next
	}
	if a.opts.BusyHook == "" {
		return "", time.Time{}
	}
	if why, busy := runBusyHook(ctx, a.opts.BusyHook); busy {
		return "device busy: " + why, now.Add(busyRetry)
	}
	return "", time.Time{}
}

// runBusyHook runs the hook: exit status 0 means free, anything else busy,
// with the first line of its output as the reason. A hook that cannot run
// or times out counts as busy: a device is never interrupted on a doubt.
func runBusyHook(ctx context.Context, hook string) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, busyHookTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, hook)
	cmd.Stdout = &out
	err := cmd.Run()
	if err == nil {
		return "", false
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || ctx.Err() != nil {
		return "busy hook did not answer: " + err.Error(), true
	}
	line, _, _ := bufio.NewReader(&out).ReadLine()
	reason := strings.TrimSpace(string(line))
	if reason == "" {
		reason = "busy hook exited " + exit.String()
	}
	if len(reason) > maxBusyReason {
		reason = reason[:maxBusyReason]
	}
	return reason, true
}

// hold keeps a written image waiting and reports why, once per reason.
func (a *Agent) hold(job install.Job, slot firmware.Slot, why string, retry time.Time) {
	if a.held == nil || a.held.job.Target != job.Target {
		a.held = &heldInstall{job: job, slot: slot}
	}
	a.held.retry = retry
	if a.held.reason != why {
		a.held.reason = why
		a.report(protocol.StateWaiting, job.Target, job.Version, why)
	}
}

// nextCheck is how long Run waits for the next check without a hint: the
// jittered poll interval, or less while an install waits for its window
// or for the device to be free.
func (a *Agent) nextCheck() time.Duration {
	d := jitter(a.opts.PollInterval)
	if a.held != nil {
		if until := a.held.retry.Sub(a.opts.Now()); until < d {
			d = max(until, time.Second)
		}
	}
	return d
}
