// Package health decides whether a freshly booted slot is good enough to
// commit: every configured command must succeed, every configured systemd
// unit must be active, and the agent must reach the fleet server, all
// within a deadline.
package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"time"
)

// Checker runs the post-boot health checks.
type Checker struct {
	// Commands run in order; each must exit 0. A command is a program and
	// its arguments, not a shell line.
	Commands [][]string
	// Units are systemd units that must be active ("pump-controller.service").
	// A unit still activating is asked again until the deadline; any other
	// state (failed, inactive, unknown) fails the check at once.
	Units []string
	// Systemctl is the systemctl program; "" means "systemctl" on PATH.
	Systemctl string
	// ServerURL, when set, must answer GET {ServerURL}/healthz with 200.
	ServerURL string
	HTTP      *http.Client // required when ServerURL is set
	// Timeout bounds all checks together; default 2 minutes.
	Timeout time.Duration
	// Retry is the pause between attempts to reach the server or to ask
	// about an activating unit; default 2s.
	Retry time.Duration
}

// Check returns nil when every check passed, else the first failure.
func (c Checker) Check(ctx context.Context) error {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, argv := range c.Commands {
		if len(argv) == 0 {
			continue
		}
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("command %q: %w: %s", argv, err, truncate(out, 200))
		}
	}
	for _, unit := range c.Units {
		if err := c.unitActive(ctx, unit); err != nil {
			return err
		}
	}
	if c.ServerURL != "" {
		return c.reachServer(ctx)
	}
	return nil
}

// unitActive asks systemd for the unit's state until it is active, fails,
// or the deadline passes. `systemctl is-active` prints the state and exits
// 0 only for "active".
func (c Checker) unitActive(ctx context.Context, unit string) error {
	prog := c.Systemctl
	if prog == "" {
		prog = "systemctl"
	}
	for {
		out, err := exec.CommandContext(ctx, prog, "is-active", unit).Output()
		state := strings.TrimSpace(string(out))
		if err == nil && state == "active" {
			return nil
		}
		if state == "" && err != nil {
			// No state printed: systemctl is missing or systemd is not running.
			return fmt.Errorf("unit %s: systemctl is-active: %w", unit, errors.Join(err, ctx.Err()))
		}
		if state != "activating" && state != "reloading" {
			return fmt.Errorf("unit %s is %s, not active", unit, state)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unit %s is still %s at the health deadline: %w", unit, state, ctx.Err())
		case <-time.After(c.retry()):
		}
	}
}

func (c Checker) retry() time.Duration {
	if c.Retry <= 0 {
		return 2 * time.Second
	}
	return c.Retry
}

// reachServer retries until the server answers or the deadline passes: a
// network that comes up late after boot is not a failed update.
func (c Checker) reachServer(ctx context.Context) error {
	retry := c.retry()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.ServerURL+"/healthz", nil)
		if err != nil {
			return err
		}
		res, err := c.HTTP.Do(req)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", res.Status)
		}
		if last == nil || ctx.Err() == nil {
			// Keep the server's own answer rather than the deadline that
			// cut the last attempt short.
			last = err
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("fleet server not reachable: %w", last), ctx.Err())
		case <-time.After(retry):
		}
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
