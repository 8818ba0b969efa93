package store_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

// TestExclusiveAcrossPools runs Exclusive from two replicas (two stores on
// two connection pools of one PostgreSQL schema): never two at once.
func TestExclusiveAcrossPools(t *testing.T) {
	dbURL := storetest.PostgresURL(t)
	a, b := storetest.Open(t, dbURL), storetest.Open(t, dbURL)
	ctx := context.Background()
	var inside, most, runs atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		s := []*store.Store{a, b}[i%2]
		wg.Go(func() {
			for range 5 {
				err := s.Exclusive(ctx, "repo", func() error {
					n := inside.Add(1)
					for {
						m := most.Load()
						if n <= m || most.CompareAndSwap(m, n) {
							break
						}
					}
					// A query of its own while the lock is held.
					if _, _, err := s.LeaseHolder(ctx, "none", t0); err == nil {
						t.Error("LeaseHolder of a missing lease: want an error")
					}
					runs.Add(1)
					inside.Add(-1)
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if most.Load() != 1 || runs.Load() != 40 {
		t.Fatalf("at most %d inside at once over %d runs, want 1 over 40", most.Load(), runs.Load())
	}
	// Another name does not wait for the first.
	err := a.Exclusive(ctx, "repo", func() error {
		return b.Exclusive(ctx, "other", func() error { return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
}
