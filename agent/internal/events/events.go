// Package events collects a device's security events from pluggable
// sources and hands them to the agent's outbox, which numbers them in the
// same sequence as state reports and delivers them on the device's events
// topic.
//
// Sources: the agent's own findings (verification refusals, rollbacks,
// slot and config changes; see agent/internal/agent), journald through
// `journalctl -o json --follow` with a persisted cursor (Journal), a log
// file tail that follows rotation and truncation (Tail), and a local
// syslog socket for the device's application (Syslog). Lines from every
// source pass through Classify, which recognises authentication failures
// of sshd and PAM.
package events

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

// An Emit queues one event. It is called from several goroutines.
type Emit func(protocol.Event)

// A Source produces events until ctx ends.
type Source interface {
	// Name identifies the source in logs.
	Name() string
	// Run emits events until ctx ends (returning nil) or the source fails.
	Run(ctx context.Context, emit Emit) error
}

// restartDelay is how long a failed source waits before it runs again.
const restartDelay = 10 * time.Second

// Run runs every source until ctx ends, restarting a failed one after a
// delay. It returns when all sources have returned.
func Run(ctx context.Context, log *slog.Logger, emit Emit, sources ...Source) {
	var wg sync.WaitGroup
	for _, src := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				err := src.Run(ctx, emit)
				if ctx.Err() != nil {
					return
				}
				if err == nil {
					err = errors.New("source stopped")
				}
				log.Warn("event source failed; restarting", "source", src.Name(), "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(restartDelay):
				}
			}
		}()
	}
	wg.Wait()
}
