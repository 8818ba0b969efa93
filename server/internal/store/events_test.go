package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

func loginFailure(seq uint64, at time.Time) protocol.Event {
	return protocol.Event{Seq: seq, Time: at, Source: "syslog", Category: protocol.CategoryAuth, Severity: protocol.SeverityWarning,
		Message: "Failed password for root", Fields: map[string]string{"event": "login_failure", "user": "root"}}
}

func TestEventsDedupGapsAndQueries(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "site-a", "A")
		mustSite(t, s, "site-b", "B")
		mustDevice(t, s, "site-a", "dev-a", "1.0.0")
		mustDevice(t, s, "site-b", "dev-b", "1.0.0")
		// dev-a: report seq 1, events 2, 3, 6 (4-5 lost), and a redelivery of 3.
		if _, err := s.RecordReport(ctx, "dev-a", &protocol.StateReport{Format: 1, Seq: 1, Time: t0, State: protocol.StateIdle, Running: "1.0.0"}, t0); err != nil {
			t.Fatal(err)
		}
		rows := []store.EventRow{
			{DeviceID: "dev-a", SiteID: "site-a", Event: loginFailure(2, t0.Add(time.Second)), ReceivedAt: t0},
			{DeviceID: "dev-a", SiteID: "site-a", Event: loginFailure(3, t0.Add(2*time.Second)), ReceivedAt: t0},
			{DeviceID: "dev-b", SiteID: "site-b", Event: protocol.Event{Seq: 1, Time: t0, Source: "agent", Category: protocol.CategoryIntegrity, Severity: protocol.SeverityError, Message: "refused"}, ReceivedAt: t0},
		}
		ins, _, err := s.InsertEvents(ctx, rows, nil, t0)
		if err != nil || len(ins) != 3 {
			t.Fatalf("InsertEvents() = %d inserted, %v; want 3", len(ins), err)
		}
		again := []store.EventRow{rows[1], {DeviceID: "dev-a", SiteID: "site-a", Event: loginFailure(6, t0.Add(3*time.Second)), ReceivedAt: t0}}
		again[1].Event.Dropped = 2
		again = append(again, again[1]) // the same message twice in one group
		ins, _, err = s.InsertEvents(ctx, again, nil, t0)
		if err != nil || len(ins) != 1 || ins[0].Event.Seq != 6 {
			t.Fatalf("InsertEvents(redelivery + new twice) = %+v, %v; want seq 6 once", ins, err)
		}
		all, err := s.Events(ctx, store.EventFilter{})
		if err != nil || len(all) != 4 {
			t.Fatalf("Events() = %d, %v; want 4 (each stored once)", len(all), err)
		}
		gaps, last, dropped, err := s.SeqGaps(ctx, "dev-a")
		if err != nil || len(gaps) != 1 || gaps[0] != (store.Gap{From: 4, To: 5}) || last != 6 || dropped != 2 {
			t.Fatalf("SeqGaps(dev-a) = %v, last %d, dropped %d, %v; want [4-5], 6, 2", gaps, last, dropped, err)
		}
		tests := []struct {
			name string
			f    store.EventFilter
			want int
		}{
			{"site-scope", store.EventFilter{SiteIDs: []string{"site-b"}}, 1},
			{"empty-scope-sees-nothing", store.EventFilter{SiteIDs: []string{}}, 0},
			{"scope-and-other-site", store.EventFilter{SiteIDs: []string{"site-b"}, SiteID: "site-a"}, 0},
			{"device", store.EventFilter{DeviceID: "dev-a"}, 3},
			{"time-range", store.EventFilter{From: t0.Add(time.Second), To: t0.Add(3 * time.Second)}, 2},
			{"severity", store.EventFilter{MinSeverity: protocol.SeverityError}, 1},
			{"category", store.EventFilter{Category: protocol.CategoryAuth}, 3},
			{"limit", store.EventFilter{Limit: 2}, 2},
		}
		for _, tt := range tests {
			got, err := s.Events(ctx, tt.f)
			if err != nil || len(got) != tt.want {
				t.Errorf("Events(%s) = %d, %v; want %d", tt.name, len(got), err, tt.want)
			}
		}
		if all[1].Fields["user"] != "root" || all[1].Organisation != "org" {
			t.Errorf("Events()[1] = %+v; want fields and organisation", all[1])
		}
	})
}

func TestAlertRulesRaiseExtendAndAck(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "site-a", "A")
		mustDevice(t, s, "site-a", "dev-a", "1.0.0")
		rules, err := s.AlertRules(ctx)
		if err != nil || len(rules) != 2 {
			t.Fatalf("AlertRules() = %+v, %v; want the 2 built-in rules", rules, err)
		}
		// Four failures within a minute: no alert; the fifth raises one;
		// the sixth extends it.
		for i := 1; i <= 6; i++ {
			row := store.EventRow{DeviceID: "dev-a", SiteID: "site-a", Event: loginFailure(uint64(i), t0.Add(time.Duration(i)*5*time.Second)), ReceivedAt: t0}
			_, got, err := s.InsertEvents(ctx, []store.EventRow{row}, rules, t0)
			if err != nil {
				t.Fatal(err)
			}
			if i < 5 && len(got) != 0 {
				t.Fatalf("after %d failures: alerts %+v, want none", i, got)
			}
		}
		open, err := s.Alerts(ctx, store.AlertFilter{OpenOnly: true})
		if err != nil || len(open) != 1 || open[0].Count != 6 || open[0].RuleID != "failed-logins" || open[0].LastSeq != 6 {
			t.Fatalf("Alerts() = %+v, %v; want one failed-logins alert over 6 events", open, err)
		}
		// Failures spread out (one every 20 s, 3 per minute) never alert.
		mustDevice(t, s, "site-a", "dev-slow", "1.0.0")
		for i := 1; i <= 10; i++ {
			row := store.EventRow{DeviceID: "dev-slow", SiteID: "site-a", Event: loginFailure(uint64(i), t0.Add(time.Duration(i)*20*time.Second)), ReceivedAt: t0}
			if _, got, _ := s.InsertEvents(ctx, []store.EventRow{row}, rules, t0); len(got) != 0 {
				t.Fatalf("slow failures raised %+v", got)
			}
		}
		rec := audit.Record{Actor: "it-a", Role: "hospital_it", Action: "alert.ack", Object: "alert/" + open[0].ID, Outcome: "allowed"}
		a, err := s.AckAlert(ctx, open[0].ID, "it-a", t0.Add(time.Hour), rec)
		if err != nil || a.AckedBy != "it-a" || a.AckedAt.IsZero() {
			t.Fatalf("AckAlert() = %+v, %v", a, err)
		}
		if _, err := s.AckAlert(ctx, open[0].ID, "it-a", t0, rec); !errors.Is(err, problem.ErrConflict) {
			t.Fatalf("AckAlert twice = %v, want ErrConflict", err)
		}
		if _, err := s.AckAlert(ctx, "nope", "it-a", t0, rec); !errors.Is(err, problem.ErrNotFound) {
			t.Fatalf("AckAlert(unknown) = %v, want ErrNotFound", err)
		}
		// A custom rule: any critical update event.
		custom := store.AlertRule{ID: "slot-change", Name: "Unexpected slot change", Category: protocol.CategoryUpdate, MinSeverity: protocol.SeverityCritical, Threshold: 1, Window: time.Minute, Enabled: true, CreatedAt: t0}
		if err := s.CreateAlertRule(ctx, custom); err != nil {
			t.Fatal(err)
		}
		bad := custom
		bad.ID, bad.Threshold, bad.Category = "bad", 0, "pwn"
		if err := s.CreateAlertRule(ctx, bad); err == nil {
			t.Fatal("CreateAlertRule(threshold 0, category pwn) = nil, want an error")
		}
		rules, _ = s.AlertRules(ctx)
		ev := protocol.Event{Seq: 7, Time: t0.Add(time.Hour), Source: "agent", Category: protocol.CategoryUpdate, Severity: protocol.SeverityCritical, Message: "slot changed"}
		_, got, err := s.InsertEvents(ctx, []store.EventRow{{DeviceID: "dev-a", SiteID: "site-a", Event: ev, ReceivedAt: t0}}, rules, t0)
		if err != nil || len(got) != 1 || got[0].RuleID != "slot-change" {
			t.Fatalf("custom rule: alerts %+v, %v", got, err)
		}
	})
}
