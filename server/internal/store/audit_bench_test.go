package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

// BenchmarkAuditAppend measures one chained append (lock, read head, hash,
// insert, commit) against a baseline in the same run: an unchained insert
// of the same row in its own transaction (a lease row update stands in).
func BenchmarkAuditAppend(b *testing.B) {
	for _, db := range []struct {
		name string
		open func(testing.TB) *store.Store
	}{{"sqlite", storetest.SQLite}, {"postgres", storetest.Postgres}} {
		b.Run(db.name, func(b *testing.B) {
			s := db.open(b)
			ctx := context.Background()
			rec := audit.Record{Actor: "ravi", Role: "release_engineer", Action: "rollout.create", Object: "rollout/x", Reason: "wave 1",
				Details: map[string]any{"release_id": "r", "devices": 100}}
			start := time.Now()
			for i := range b.N {
				if _, err := s.AcquireLease(ctx, fmt.Sprint("baseline-", i%64), "h", time.Minute, t0); err != nil {
					b.Fatal(err)
				}
			}
			baseline := time.Since(start)
			b.ResetTimer()
			for range b.N {
				if _, err := s.AppendAudit(ctx, rec, t0); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed())/float64(baseline), "x-baseline")
			vstart := time.Now()
			n, _, err := s.VerifyAudit(ctx)
			if err != nil || n != int64(b.N) {
				b.Fatalf("VerifyAudit = %d, %v", n, err)
			}
			b.ReportMetric(float64(time.Since(vstart).Nanoseconds())/float64(b.N), "verify-ns/entry")
		})
	}
}
