package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

// TestReplicasStepWithoutLeaseStillOnce steps one rollout from two engines
// on two connection pools of one database at the same time, with no lease
// between them (as when a decision through one replica steps the rollout
// while the other's scheduler does): every wave opens once, every device
// is assigned (and published) once, the events are recorded once; the
// losing step of each race fails with a conflict and changes nothing.
func TestReplicasStepWithoutLeaseStillOnce(t *testing.T) {
	storetest.ForEachURL(t, func(t *testing.T, dbURL string) {
		f, other, rel, v := twoReplicas(t, dbURL)
		ctx := context.Background()
		conflicts := 0
		for round := 0; round < 20 && f.view(v.ID).Status != rollout.StatusCompleted; round++ {
			f.succeed(v.ID, rel)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i, e := range []*rollout.Engine{f.e, other} {
				wg.Go(func() { errs[i] = e.Tick(ctx) })
			}
			wg.Wait()
			for _, err := range errs {
				switch {
				case errors.Is(err, problem.ErrConflict):
					conflicts++
				case err != nil:
					t.Fatalf("round %d: %v", round, err)
				}
			}
		}
		f.completedOnce(t, v.ID)
		t.Logf("%d steps lost a race and changed nothing", conflicts)
	})
}

// TestReplicasTakeTurns steps one rollout from two engines in turn: each
// step must start from what the other wrote, not from what the engine
// wrote itself the step before (it keeps that between its steps).
func TestReplicasTakeTurns(t *testing.T) {
	storetest.ForEachURL(t, func(t *testing.T, dbURL string) {
		f, other, rel, v := twoReplicas(t, dbURL)
		ctx := context.Background()
		engines := []*rollout.Engine{f.e, other}
		for round := 0; round < 20 && f.view(v.ID).Status != rollout.StatusCompleted; round++ {
			f.succeed(v.ID, rel)
			if err := engines[round%2].Tick(ctx); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		f.completedOnce(t, v.ID)
	})
}

// twoReplicas is a fixture with a second engine on its own connection
// pool of the same database, 12 devices in one site, and a rollout of
// release 2.0.0 to them in a canary and three waves.
func twoReplicas(t *testing.T, dbURL string) (*fixture, *rollout.Engine, store.Release, rollout.View) {
	t.Helper()
	f := newFixture(t, storetest.Open(t, dbURL), nil)
	other, err := rollout.New(rollout.Options{Store: storetest.Open(t, dbURL), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Publisher: f.rec, Now: f.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	site := f.site("a")
	for i := range 12 {
		f.device(site, fmt.Sprint("d", i), "1.0.0")
	}
	rel := f.release("2.0.0")
	v, err := f.e.Create(context.Background(), rollout.Request{ReleaseID: rel.ID, Actor: "eng", Reason: "CVE fix",
		Plan: rollout.Plan{Canary: 1, Waves: []float64{25, 50, 100}}})
	if err != nil {
		t.Fatal(err)
	}
	return f, other, rel, v
}

// completedOnce checks that the rollout of 12 devices in a canary and
// three waves completed, recorded each wave and its completion once, and
// published each device's assignment once.
func (f *fixture) completedOnce(t *testing.T, id string) {
	t.Helper()
	view := f.view(id)
	if view.Status != rollout.StatusCompleted {
		t.Fatalf("rollout %s after 20 rounds, want completed", view.Status)
	}
	var keys []string
	for _, e := range view.Events {
		keys = append(keys, e.Key)
	}
	if want := []string{"wave/0", "wave/1", "wave/2", "wave/3", "completed/12"}; !slices.Equal(keys, want) {
		t.Fatalf("events %v, want %v", keys, want)
	}
	f.rec.mu.Lock()
	published := slices.Sorted(slices.Values(f.rec.published))
	f.rec.mu.Unlock()
	if len(published) != 12 || len(slices.Compact(published)) != 12 {
		t.Fatalf("published assignments %v, want each of the 12 devices once", published)
	}
}
