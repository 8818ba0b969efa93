package tufrepo_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
	"github.com/aftercare/aftercare/signing"
)

// sharedLock is an ExclusiveFunc for replicas in one test process, in the
// place of the store's PostgreSQL advisory lock.
type sharedLock struct {
	mu sync.Mutex
}

func (l *sharedLock) exclusive(_ context.Context, _ string, fn func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fn()
}

// TestReplicasShareRepositories opens the release and rollout repositories
// twice on one directory, as two server replicas do, and publishes through
// both in turn: each sees the other's releases and assignments, versions
// only increase, and a TUF client that refreshes after every publish (as a
// device does) verifies every state.
func TestReplicasShareRepositories(t *testing.T) {
	f := newRolloutFixture(t, 2, "1.1.0")
	lock := &sharedLock{}
	f.opts.Exclusive = lock.exclusive
	f.ropts.Exclusive = lock.exclusive
	f.ropts.Dir = t.TempDir()
	relA := f.release
	relB := f.open(t)
	rollA := f.openRollout(t)
	optsB := f.ropts
	optsB.Release = relB
	rollB, err := tufrepo.OpenRollout(optsB, f.rolloutRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// A release published through replica A is known to replica B.
	cur, err := relA.CurrentTargets()
	if err != nil {
		t.Fatal(err)
	}
	m, blob := testRelease(t, "1.2.0")
	signed, err := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: m, Signer: f.signT})
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := relA.ParseTargets(signed)
	if err != nil {
		t.Fatal(err)
	}
	if err := relA.Publish(ctx, parsed, map[string]tufrepo.Blob{m.TargetPath(): {Path: blob}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := relB.Target(m.TargetPath()); !ok {
		t.Fatal("replica B does not see the release replica A published")
	}
	// B refuses to publish the same targets version over A's.
	if _, err := relB.ParseTargets(signed); err == nil {
		t.Fatal("replica B accepted targets of the version replica A already published")
	}
	if err := relB.Refresh(ctx); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	cache := t.TempDir() // one device's trusted metadata across all refreshes
	root := f.rolloutRoot(t)
	lastSnapshot := int64(0)
	for i := range 12 {
		r := []*tufrepo.Rollout{rollA, rollB}[i%2]
		target := f.targets["1.1.0"]
		if i%3 == 0 {
			target = m.TargetPath() // published via A, assigned via either
		}
		id := fmt.Sprintf("dev-%02d", i)
		f.src.set(id, "rollout-1", target)
		if err := r.AssignmentsChanged(ctx, []string{id}); err != nil {
			t.Fatal(err)
		}
		snap := readSnapshotMeta(t, f.ropts.Dir)["snapshot"]
		if snap != lastSnapshot+1 {
			t.Fatalf("publish %d: snapshot v%d after v%d, want one more", i, snap, lastSnapshot)
		}
		lastSnapshot = snap
		for j := 0; j <= i; j++ {
			if tf := lookup(t, srv.URL, root, cache, fmt.Sprintf("dev-%02d", j), &countingFetcher{}); tf == nil {
				t.Fatalf("after publish %d: dev-%02d has no assignment", i, j)
			}
		}
	}
	// Both replicas re-signing at once leaves one consistent repository.
	var wg sync.WaitGroup
	for _, r := range []*tufrepo.Rollout{rollA, rollB, rollA, rollB} {
		wg.Go(func() {
			if err := r.Sync(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if snap := readSnapshotMeta(t, f.ropts.Dir)["snapshot"]; snap != lastSnapshot {
		t.Fatalf("syncing unchanged assignments made snapshot v%d (was v%d)", snap, lastSnapshot)
	}
	if tf := lookup(t, srv.URL, root, cache, "dev-00", &countingFetcher{}); tf == nil {
		t.Fatal("dev-00 lost its assignment")
	}
	// A new root that keeps the online key publishes nothing else; the
	// other replica still does not install a second root of its version.
	rootKey, err := signing.LoadSigner(ctx, filepath.Join(f.keys, signing.OfflineKeyFile("root", signing.DefaultRootHolder)), nil)
	if err != nil {
		t.Fatal(err)
	}
	next, err := signing.RotateRoot(signing.RotateOptions{Current: root, Signers: []signature.Signer{rootKey}})
	if err != nil {
		t.Fatal(err)
	}
	if err := rollA.UpdateRoot(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := rollB.UpdateRoot(ctx, next); !errors.Is(err, problem.ErrConflict) {
		t.Fatalf("replica B installing the root A installed: err = %v, want a version conflict", err)
	}
	if tf := lookup(t, srv.URL, root, cache, "dev-00", &countingFetcher{}); tf == nil {
		t.Fatal("dev-00 lost its assignment after the root update")
	}
}

// BenchmarkPublishAlternatingReplicas publishes one changed assignment at a
// time into a 256-bin rollout repository of 1,000 assigned devices: as the
// baseline through one replica, then alternating between two replicas
// sharing the directory, where every publish first loads the state the
// other wrote (root, snapshot, timestamp, targets, every bin). It reports
// the alternating time per publish as a ratio of the baseline.
func BenchmarkPublishAlternatingReplicas(b *testing.B) {
	f := newRolloutFixture(b, benchBinBits, "1.1.0", "1.2.0")
	lock := &sharedLock{}
	f.ropts.Exclusive = lock.exclusive
	for i := range 1000 {
		f.src.set(fmt.Sprintf("dev-%04d", i), "rollout-1", f.targets["1.1.0"])
	}
	a := f.openRollout(b)
	rb := f.openRollout(b)
	ctx := context.Background()
	if err := a.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	publish := func(r *tufrepo.Rollout, i int) time.Duration {
		id := fmt.Sprintf("dev-%04d", i%1000)
		f.src.set(id, "rollout-1", f.targets[[]string{"1.2.0", "1.1.0"}[(i/1000)%2]])
		start := time.Now()
		if err := r.AssignmentsChanged(ctx, []string{id}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var one, two time.Duration
	n := 0
	for i := 0; b.Loop(); i++ {
		one += publish(a, 2*i)
		two += publish([]*tufrepo.Rollout{a, rb}[i%2], 2*i+1)
		n++
	}
	b.ReportMetric(float64(one.Microseconds())/float64(n), "one-replica-µs/publish")
	b.ReportMetric(float64(two.Microseconds())/float64(n), "alternating-µs/publish")
	b.ReportMetric(float64(two)/float64(one), "alternating/one")
}
