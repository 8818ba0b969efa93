package vuln_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/vuln"
)

// TestSyncLeasedRunsInOneReplica runs the scheduled sync step of two
// replicas (two stores, two connection pools, one database) at once: only
// the one holding the lease fetches the feed; the other takes over only
// when the lease expires.
func TestSyncLeasedRunsInOneReplica(t *testing.T) {
	storetest.ForEachURL(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		feed := &feedServer{body: readFile(t, "testdata/kev/known_exploited_vulnerabilities.json"), etag: `"kev-1"`}
		srv := httptest.NewServer(feed)
		defer srv.Close()
		sources := []vuln.SyncSource{{Name: "kev", Kind: "kev", URLs: []string{srv.URL + "/kev.json"}}}
		clk := &clock{now: t0}
		type replica struct {
			svc   *vuln.Service
			lease vuln.Lease
		}
		var replicas []replica
		for _, holder := range []string{"replica-a", "replica-b"} {
			s := storetest.Open(t, dbURL)
			svc, err := vuln.New(vuln.Options{Store: s, Log: slog.New(slog.DiscardHandler), Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			replicas = append(replicas, replica{svc, s.Lease("vuln.feed-sync", holder, time.Hour, clk.Now)})
		}
		step := func() []bool {
			t.Helper()
			ran := make([]bool, len(replicas))
			var wg sync.WaitGroup
			for i, r := range replicas {
				wg.Go(func() {
					ok, _, err := r.svc.SyncLeased(ctx, r.lease, srv.Client(), sources, 64<<20)
					if err != nil {
						t.Errorf("SyncLeased: %v", err)
					}
					ran[i] = ok
				})
			}
			wg.Wait()
			return ran
		}
		first := step()
		if first[0] == first[1] {
			t.Fatalf("first interval: replicas ran %v, want exactly one", first)
		}
		holder := 0
		if first[1] {
			holder = 1
		}
		if n := len(feed.condition); n != 1 {
			t.Fatalf("feed fetched %d times, want once", n)
		}
		// Next interval: the holder renews and runs again; the other waits.
		clk.now = clk.now.Add(50 * time.Minute)
		if again := step(); !again[holder] || again[1-holder] {
			t.Fatalf("second interval: ran %v, want only replica %d", again, holder)
		}
		// The holder stops; after its lease expires the other takes over.
		clk.now = clk.now.Add(61 * time.Minute)
		ok, _, err := replicas[1-holder].svc.SyncLeased(ctx, replicas[1-holder].lease, srv.Client(), sources, 64<<20)
		if err != nil || !ok {
			t.Fatalf("take over after expiry: ran %v, %v", ok, err)
		}
	})
}
