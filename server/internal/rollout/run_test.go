package rollout_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

// refusingLeader never grants the lease and counts the asks.
type refusingLeader struct{ asks atomic.Int64 }

func (l *refusingLeader) Hold(context.Context) (bool, error) {
	l.asks.Add(1)
	return false, nil
}

// TestRunAsksForTheLeaseEveryTick runs the scheduler on synctest's fake
// clock: it asks for the lease at start and every tick, and a replica that
// does not hold it never steps (nothing touches the database).
func TestRunAsksForTheLeaseEveryTick(t *testing.T) {
	s := storetest.SQLite(t)
	synctest.Test(t, func(t *testing.T) {
		leader := &refusingLeader{}
		e, err := rollout.New(rollout.Options{Store: s, Log: slog.New(slog.DiscardHandler), TickInterval: time.Minute, Leader: leader})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			e.Run(ctx)
			close(done)
		}()
		time.Sleep(3*time.Minute + time.Second) // fake time inside the bubble
		synctest.Wait()
		cancel()
		<-done
		if n := leader.asks.Load(); n != 4 {
			t.Fatalf("the scheduler asked for the lease %d times in 3 fake minutes, want 4 (at start and every minute)", n)
		}
	})
}
