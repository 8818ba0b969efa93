package ingest_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/ingest"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

// Benchmark shape: 1,000 devices, all at once, each sending benchEvents
// events in batches of benchBatch (one MQTT message per batch, one in
// flight per device, as the agent sends).
const (
	benchDevices = 1000
	benchEvents  = 20
	benchBatch   = 10
)

// BenchmarkIngest measures the sustained ingest rate of 1,000 simulated
// devices publishing over mutual TLS through the embedded broker, the
// server's shared subscription, the ingester's checks, group commit and
// alert rules, into SQLite and PostgreSQL. It reports the rate as a ratio
// to a raw batched insert of the same rows into the same kind of database
// in the same run ("x_raw_insert"), plus events/s and messages/s, and
// fails on any event lost or stored twice.
func BenchmarkIngest(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) { benchIngest(b, storetest.SQLiteURL(b), storetest.SQLiteURL(b)) })
	b.Run("postgres", func(b *testing.B) { benchIngest(b, storetest.PostgresURL(b), storetest.PostgresURL(b)) })
}

func benchIngest(b *testing.B, dbURL, rawURL string) {
	s, raw := storetest.Open(b, dbURL), storetest.Open(b, rawURL)
	ids := enroll(b, s, "site-a", benchDevices)
	enroll(b, raw, "site-a", benchDevices)
	f := newFleet(b, s)
	srv := f.startServer(b, ingest.Options{Rate: 1e6, Burst: 1e6}) // the broker lets devices in once it has subscribed
	devs := make([]*device, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			devs[i] = f.connect(b, id)
		}()
		if i%50 == 49 {
			wg.Wait() // bound concurrent handshakes on 2 cores
		}
	}
	wg.Wait()
	ctx := context.Background()

	var ingestTime, rawTime time.Duration
	total := 0
	b.ResetTimer()
	for i := range b.N {
		first := uint64(i*benchEvents + 1)
		before := srv.in.Stats().Stored
		start := time.Now()
		sendAll(b, devs, first, benchEvents, benchBatch)
		want := before + int64(benchDevices*benchEvents)
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := srv.in.WaitFor(wctx, func(st ingest.Stats) bool { return st.Stored >= want })
		cancel()
		if err != nil {
			b.Fatalf("waiting for %d events: %v (stats %+v)", want-before, err, srv.in.Stats())
		}
		ingestTime += time.Since(start)
		total += benchDevices * benchEvents

		// The same rows, inserted directly in batches of the size the
		// ingester's group commit reaches at most.
		b.StopTimer()
		var rows []store.EventRow
		for _, id := range ids {
			for seq := first; seq < first+benchEvents; seq++ {
				rows = append(rows, store.EventRow{DeviceID: id, SiteID: "site-a", ReceivedAt: t0, Event: protocol.Event{
					Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second), Source: protocol.SourceSyslog, Category: protocol.CategoryApp,
					Severity: protocol.SeverityNotice, Message: "event of " + id,
				}})
			}
		}
		b.StartTimer()
		start = time.Now()
		const chunk = 256 * benchBatch
		for lo := 0; lo < len(rows); lo += chunk {
			if _, _, err := raw.InsertEvents(ctx, rows[lo:min(len(rows), lo+chunk)], nil, t0); err != nil {
				b.Fatal(err)
			}
		}
		rawTime += time.Since(start)
	}
	b.StopTimer()
	st := srv.in.Stats()
	stored, err := s.CountEvents(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	if stored != int64(total) || st.Stored != int64(total) {
		b.Fatalf("stored %d events (ingester counted %d), sent %d: lost or doubled", stored, st.Stored, total)
	}
	rate := float64(total) / ingestTime.Seconds()
	rawRate := float64(total) / rawTime.Seconds()
	b.ReportMetric(rate/rawRate, "x_raw_insert")
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(rate/benchBatch, "msgs/s")
	b.ReportMetric(rawRate, "raw_events/s")
	b.ReportMetric(float64(st.Commits)/float64(b.N), "commits/op")
}
