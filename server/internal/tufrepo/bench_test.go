package tufrepo_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/tufrepo"
)

// benchFleet is the fleet size of the refresh benchmarks.
const benchFleet = 10_000

// benchBinBits is the server's default: 256 bins.
const benchBinBits = 8

// benchRepos builds a binned and a flat rollout repository over the same
// release repository, with every device of the fleet assigned, and serves
// both over loopback HTTP.
func benchRepos(b *testing.B) (f *rolloutFixture, binned, flat *tufrepo.Rollout, binnedURL, flatURL string) {
	b.Helper()
	f = newRolloutFixture(b, benchBinBits, "1.1.0", "1.2.0")
	for i := range benchFleet {
		f.src.set(fmt.Sprintf("b6f1c2d4-0000-4000-8000-%012d", i), "3c9e8f5a-1111-4222-8333-444455556666", f.targets["1.1.0"])
	}
	open := func(bits int) (*tufrepo.Rollout, string) {
		opts := f.ropts
		opts.Dir, opts.BinBits = b.TempDir(), bits
		r, err := tufrepo.OpenRollout(opts, f.rolloutRoot(b))
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Sync(context.Background()); err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(http.FileServer(http.Dir(opts.Dir)))
		b.Cleanup(srv.Close)
		return r, srv.URL
	}
	binned, binnedURL = open(benchBinBits)
	flat, flatURL = open(0)
	return f, binned, flat, binnedURL, flatURL
}

// refresh runs one device's refresh with a real go-tuf client and returns
// the bytes it downloaded and how long it took.
func refresh(b *testing.B, url string, root []byte, cache, deviceID string) (int64, time.Duration) {
	b.Helper()
	fetch := &countingFetcher{}
	start := time.Now()
	tf := lookup(b, url, root, cache, deviceID, fetch)
	d := time.Since(start)
	if tf == nil {
		b.Fatalf("device %s did not find its assignment", deviceID)
	}
	return fetch.bytes, d
}

type refreshTotals struct {
	binnedBytes, flatBytes int64
	binnedTime, flatTime   time.Duration
	n                      int
}

func (r *refreshTotals) report(b *testing.B) {
	n := float64(r.n)
	b.ReportMetric(float64(r.binnedBytes)/n, "binned-B/refresh")
	b.ReportMetric(float64(r.flatBytes)/n, "flat-B/refresh")
	b.ReportMetric(100*float64(r.binnedBytes)/float64(r.flatBytes), "bytes-%-of-flat")
	b.ReportMetric(float64(r.binnedTime.Microseconds())/n, "binned-µs/refresh")
	b.ReportMetric(float64(r.flatTime.Microseconds())/n, "flat-µs/refresh")
	b.ReportMetric(100*float64(r.binnedTime)/float64(r.flatTime), "time-%-of-flat")
}

// BenchmarkRolloutRefreshCold: a device of a 10,000-device fleet refreshes
// the rollout repository with nothing cached but its root, once against
// hash-binned assignments and once against one flat targets file.
func BenchmarkRolloutRefreshCold(b *testing.B) {
	f, _, _, binnedURL, flatURL := benchRepos(b)
	root := f.rolloutRoot(b)
	var tot refreshTotals
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("b6f1c2d4-0000-4000-8000-%012d", (i*7919)%benchFleet)
		n, d := refresh(b, binnedURL, root, b.TempDir(), id)
		tot.binnedBytes, tot.binnedTime = tot.binnedBytes+n, tot.binnedTime+d
		n, d = refresh(b, flatURL, root, b.TempDir(), id)
		tot.flatBytes, tot.flatTime = tot.flatBytes+n, tot.flatTime+d
		tot.n++
	}
	tot.report(b)
}

// BenchmarkRolloutRefreshAfterRollout: a device that refreshed before
// refreshes again after a rollout changed its assignment: it downloads the
// new timestamp, snapshot and its bin (binned) or the whole targets file
// (flat).
func BenchmarkRolloutRefreshAfterRollout(b *testing.B) {
	f, binned, flat, binnedURL, flatURL := benchRepos(b)
	root := f.rolloutRoot(b)
	id := fmt.Sprintf("b6f1c2d4-0000-4000-8000-%012d", 4242)
	binnedCache, flatCache := b.TempDir(), b.TempDir()
	refresh(b, binnedURL, root, binnedCache, id)
	refresh(b, flatURL, root, flatCache, id)
	var tot refreshTotals
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		f.src.set(id, fmt.Sprintf("3c9e8f5a-1111-4222-8333-%012d", i), f.targets[[]string{"1.2.0", "1.1.0"}[i%2]])
		for _, r := range []*tufrepo.Rollout{binned, flat} {
			if err := r.AssignmentsChanged(context.Background(), []string{id}); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		n, d := refresh(b, binnedURL, root, binnedCache, id)
		tot.binnedBytes, tot.binnedTime = tot.binnedBytes+n, tot.binnedTime+d
		n, d = refresh(b, flatURL, root, flatCache, id)
		tot.flatBytes, tot.flatTime = tot.flatBytes+n, tot.flatTime+d
		tot.n++
	}
	tot.report(b)
}
