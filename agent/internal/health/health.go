// Package health decides whether a freshly booted slot is good enough to
// commit: every configured command must succeed, and the agent must reach
// the fleet server, all within a deadline.
package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"time"
)

// Checker runs the post-boot health checks.
type Checker struct {
	// Commands run in order; each must exit 0. A command is a program and
	// its arguments, not a shell line.
	Commands [][]string
	// ServerURL, when set, must answer GET {ServerURL}/healthz with 200.
	ServerURL string
	HTTP      *http.Client // required when ServerURL is set
	// Timeout bounds all checks together; default 2 minutes.
	Timeout time.Duration
	// Retry is the pause between attempts to reach the server; default 2s.
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
	if c.ServerURL != "" {
		return c.reachServer(ctx)
	}
	return nil
}

// reachServer retries until the server answers or the deadline passes: a
// network that comes up late after boot is not a failed update.
func (c Checker) reachServer(ctx context.Context) error {
	retry := c.Retry
	if retry <= 0 {
		retry = 2 * time.Second
	}
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
		last = err
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
