package ingest_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/ingest"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

func countEvents(t *testing.T, s *store.Store) map[string]int {
	t.Helper()
	evs, err := s.Events(context.Background(), store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range evs {
		out[e.DeviceID]++
	}
	return out
}

// TestRestartMidStreamStoresEachEventOnce restarts the server's MQTT client
// and ingester while devices publish: whatever was delivered but not
// acknowledged, and whatever was published while the server was away, is
// stored exactly once. Through the embedded broker and through Mosquitto.
func TestRestartMidStreamStoresEachEventOnce(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		storetest.ForEach(t, func(t *testing.T, s *store.Store) { restartMidStream(t, s, newFleet(t, s)) })
	})
	t.Run("mosquitto", func(t *testing.T) {
		storetest.ForEach(t, func(t *testing.T, s *store.Store) { restartMidStream(t, s, newMosquittoFleet(t, s)) })
	})
}

func restartMidStream(t *testing.T, s *store.Store, f *fleet) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const devices, perDevice, size = 20, 60, 5
	ids := enroll(t, s, "site-a", devices)
	srv := f.startServer(t, ingest.Options{MaxBatch: 16}) // the broker lets devices in once it has subscribed
	var devs []*device
	for _, id := range ids {
		devs = append(devs, f.connect(t, id))
	}
	sendAll(t, devs, 1, perDevice/3, size)
	// Restart while the first third may still be in flight.
	srv.stop()
	sendAll(t, devs, perDevice/3+1, perDevice/3, size) // published while no server is connected
	srv = f.startServer(t, ingest.Options{MaxBatch: 16})
	sendAll(t, devs, 2*perDevice/3+1, perDevice/3, size)
	want := devices * perDevice
	err := srv.in.WaitFor(ctx, func(st ingest.Stats) bool {
		n, _ := s.Events(ctx, store.EventFilter{Limit: store.MaxEventRows})
		return len(n) >= want
	})
	if err != nil {
		t.Fatalf("waiting for %d events: %v (stats %+v, stored %d)", want, err, srv.in.Stats(), len(countEvents(t, s)))
	}
	for _, id := range ids {
		if got := countEvents(t, s)[id]; got != perDevice {
			t.Errorf("device %s has %d events stored, want %d", id, got, perDevice)
		}
		gaps, last, _, err := s.SeqGaps(ctx, id)
		if err != nil || len(gaps) != 0 || last != perDevice {
			t.Errorf("SeqGaps(%s) = %v, %d, %v; want no gaps up to %d", id, gaps, last, err, perDevice)
		}
	}
}

// TestBrokerAndServerRestartMidRun restarts the embedded broker and the
// server together, as a restart of the fleet server's process does, while
// every device keeps publishing: the broker drains (devices refused and
// disconnected, everything it acknowledged to them stored and
// acknowledged by the server), both stop and start again on the same
// address with nothing kept but the store, and the devices resend what
// was not acknowledged (paho's store, and device.deliver, as the agent's
// outbox: an entry goes only with its PUBACK). Every event is stored
// exactly once.
func TestBrokerAndServerRestartMidRun(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		const devices, perDevice, size = 20, 200, 5
		const messages = devices * perDevice / size
		want := devices * perDevice
		f := newFleet(t, s)
		ids := enroll(t, s, "site-a", devices)
		srv := f.startServer(t, ingest.Options{MaxBatch: 16})
		var published atomic.Int64
		third := make(chan struct{})
		var wg sync.WaitGroup
		for _, id := range ids {
			d := f.connect(t, id)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := uint64(1); seq <= perDevice; seq += size {
					d.deliver(t, batch(d.id, seq, size, protocol.CategoryApp))
					if published.Add(1) == messages/3 {
						close(third)
					}
					time.Sleep(5 * time.Millisecond) // a steady stream, not one burst
				}
			}()
		}
		<-third
		first := srv
		srv = f.restart(t, srv, ingest.Options{MaxBatch: 16})
		restartedAt := published.Load()
		wg.Wait()
		before := first.in.Stats()
		err := srv.in.WaitFor(ctx, func(st ingest.Stats) bool { return before.Stored+st.Stored >= int64(want) })
		after := srv.in.Stats()
		if err != nil {
			t.Fatalf("waiting for %d events: %v (stored %d before the restart, %d after)", want, err, before.Stored, after.Stored)
		}
		if n, err := s.CountEvents(ctx, ""); err != nil || n != int64(want) || before.Stored+after.Stored != int64(want) {
			t.Fatalf("CountEvents = %d, %v; ingesters stored %d + %d; want %d", n, err, before.Stored, after.Stored, want)
		}
		for _, id := range ids {
			gaps, last, _, err := s.SeqGaps(ctx, id)
			if err != nil || len(gaps) != 0 || last != perDevice {
				t.Errorf("SeqGaps(%s) = %v, %d, %v; want no gaps up to %d", id, gaps, last, err, perDevice)
			}
		}
		t.Logf("restarted after %d of %d messages, back up at %d; stored %d events before the restart, %d after; %d redelivered events skipped as duplicates",
			messages/3, messages, restartedAt, before.Stored, after.Stored, before.Duplicates+after.Duplicates)
	})
}

// TestBadInputIsRejectedAndCounted sends every kind of bad message next to
// good ones from another device: the bad are counted by reason, the good
// are stored, nothing bad is stored.
func TestBadInputIsRejectedAndCounted(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		f := newFleet(t, s)
		ids := enroll(t, s, "site-a", 3)
		srv := f.startServer(t, ingest.Options{Rate: 1, Burst: 10})
		good, bad, revoked := f.connect(t, ids[0]), f.connect(t, ids[1]), f.connect(t, ids[2])
		if _, err := s.RevokeDevice(ctx, ids[2], "stolen", t0); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name    string
			dev     *device
			payload string
			reason  string
		}{
			{"malformed", bad, `{"v":1,"device_id":`, ingest.ReasonMalformed},
			{"wrong-schema", bad, `{"v":9,"device_id":"` + ids[1] + `","events":[]}`, ingest.ReasonWrongSchema},
			{"oversized", bad, `{"v":1,"pad":"` + strings.Repeat("x", protocol.MaxPayloadBytes) + `"}`, ingest.ReasonOversized},
			{"claims-another-device", bad, string(batch(ids[0], 900, 1, protocol.CategoryAuth)), ingest.ReasonIdentity},
			{"revoked-device", revoked, string(batch(ids[2], 1, 1, protocol.CategoryAuth)), ingest.ReasonRevokedDevice},
			{"flood-over-burst", bad, string(batch(ids[1], 1, 11, protocol.CategoryAuth)), ingest.ReasonRateLimited},
		}
		for _, tt := range tests {
			tt.dev.publish(t, []byte(tt.payload))
		}
		good.publish(t, batch(ids[0], 1, 3, protocol.CategoryAuth))
		err := srv.in.WaitFor(ctx, func(st ingest.Stats) bool {
			n := int64(0)
			for _, v := range st.Rejected {
				n += v
			}
			return n == int64(len(tests)) && st.Stored == 3
		})
		st := srv.in.Stats()
		if err != nil {
			t.Fatalf("stats = %+v: %v", st, err)
		}
		for _, tt := range tests {
			if st.Rejected[tt.reason] != 1 {
				t.Errorf("%s: rejected[%s] = %d, want 1 (all: %v)", tt.name, tt.reason, st.Rejected[tt.reason], st.Rejected)
			}
		}
		got := countEvents(t, s)
		if len(got) != 1 || got[ids[0]] != 3 {
			t.Fatalf("stored events by device = %v; want only the 3 good ones of %s", got, ids[0])
		}
	})
}
