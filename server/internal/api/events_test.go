package api_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

// raiseAlert stores five failed logins on a device within a minute, which
// the built-in rule turns into an alert, and returns the alert's ID.
func raiseAlert(t *testing.T, s *store.Store, deviceID, siteID string) string {
	t.Helper()
	ctx := context.Background()
	rules, err := s.AlertRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 23, 2, 14, 0, 0, time.UTC)
	var rows []store.EventRow
	for i := 1; i <= 5; i++ {
		rows = append(rows, store.EventRow{DeviceID: deviceID, SiteID: siteID, ReceivedAt: at, Event: protocol.Event{
			Seq: uint64(100 + i), Time: at.Add(time.Duration(i) * time.Second), Source: protocol.SourceSyslog,
			Category: protocol.CategoryAuth, Severity: protocol.SeverityWarning,
			Message: "Failed password for root from intruder.st-mary.example port 22 ssh2",
			Fields:  map[string]string{"event": "login_failure", "user": "root", "remote": "intruder.st-mary.example"},
		}})
	}
	_, alerts, err := s.InsertEvents(ctx, rows, rules, at)
	if err != nil || len(alerts) != 1 {
		t.Fatalf("InsertEvents(5 failed logins) = %d alerts, %v; want 1", len(alerts), err)
	}
	return alerts[0].ID
}

// TestIncidentResponseAPI: St. Mary's hospital IT sees its device's events,
// timeline and alert and acknowledges it (audited); Lakeside's sees none
// of it; PSIRT sees everything and adds a rule.
func TestIncidentResponseAPI(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		st := newStackWith(t, s, nil)
		iso := newIsolation(t, st)
		_, _, itA := st.apiUser(t, access.UserRequest{Name: "it-a2", Role: "hospital_it", Organisation: iso.orgA})
		_, _, psirt := st.apiUser(t, access.UserRequest{Name: "psirt", Role: "psirt"})

		var evs struct{ Events []store.StoredEvent }
		q := "/api/v1/events?category=auth&severity=warning&from=2026-11-23T02:00:00Z&to=2026-11-23T03:00:00Z"
		if code := st.call(t, http.MethodGet, q, itA, "", nil, &evs); code != 200 || len(evs.Events) != 5 {
			t.Fatalf("St. Mary IT GET events = %d, %d events; want 5", code, len(evs.Events))
		}
		if code := st.call(t, http.MethodGet, q, iso.tokenB, "", nil, &evs); code != 200 || len(evs.Events) != 0 {
			t.Fatalf("Lakeside IT GET events = %d, %d events; want none", code, len(evs.Events))
		}
		if code := st.call(t, http.MethodGet, "/api/v1/events?severity=loud&from=yesterday", itA, "", nil, nil); code != 400 {
			t.Fatalf("GET events with bad severity and time = %d, want 400", code)
		}
		var tl struct {
			Timeline []struct {
				Kind string
				Seq  uint64
			}
			Gaps []store.Gap
		}
		if code := st.call(t, http.MethodGet, "/api/v1/devices/"+iso.deviceA+"/timeline", itA, "", nil, &tl); code != 200 || len(tl.Timeline) < 5 {
			t.Fatalf("timeline = %d, %+v", code, tl)
		}
		// Seq 1..100 never arrived: one gap before the events.
		if len(tl.Gaps) == 0 || tl.Gaps[len(tl.Gaps)-1].To != 100 {
			t.Fatalf("timeline gaps = %+v; want one ending at 100", tl.Gaps)
		}
		var alerts struct{ Alerts []store.Alert }
		if code := st.call(t, http.MethodGet, "/api/v1/alerts?open=true", iso.tokenB, "", nil, &alerts); code != 200 || len(alerts.Alerts) != 0 {
			t.Fatalf("Lakeside alerts = %d, %+v; want none", code, alerts.Alerts)
		}
		if code := st.call(t, http.MethodGet, "/api/v1/alerts?open=true", psirt, "", nil, &alerts); code != 200 || len(alerts.Alerts) != 1 {
			t.Fatalf("PSIRT alerts = %d, %+v; want 1", code, alerts.Alerts)
		}
		if code := st.postJSON(t, "/api/v1/alerts/"+iso.alertA+"/ack", iso.tokenB, map[string]string{}, nil); code != 404 {
			t.Fatalf("Lakeside ack of St. Mary's alert = %d, want 404", code)
		}
		if code := st.postJSON(t, "/api/v1/alerts/"+iso.alertA+"/ack", itA, map[string]string{}, nil); code != 200 {
			t.Fatalf("St. Mary IT ack = %d, want 200", code)
		}
		if code := st.postJSON(t, "/api/v1/alerts/"+iso.alertA+"/ack", itA, map[string]string{}, nil); code != 409 {
			t.Fatalf("second ack = %d, want 409", code)
		}
		entries, _ := s.AuditEntries(context.Background(), store.AuditFilter{Limit: 10_000})
		acked := false
		for _, e := range entries {
			acked = acked || (e.Action == "alert.ack" && e.Object == "alert/"+iso.alertA && e.Actor == "it-a2")
		}
		if !acked {
			t.Fatal("the acknowledgement is not in the audit log")
		}
		rule := map[string]any{"id": "usb", "name": "USB storage attached", "category": "system", "min_severity": "notice", "threshold": 1, "window": "1m"}
		if code := st.postJSON(t, "/api/v1/alert-rules", itA, rule, nil); code != 403 {
			t.Fatalf("hospital IT creating a rule = %d, want 403", code)
		}
		if code := st.postJSON(t, "/api/v1/alert-rules", psirt, rule, nil); code != 201 {
			t.Fatalf("PSIRT creating a rule = %d, want 201", code)
		}
		rule["threshold"], rule["id"] = 0, "bad"
		if code := st.postJSON(t, "/api/v1/alert-rules", psirt, rule, nil); code != 400 {
			t.Fatalf("PSIRT creating a rule with threshold 0 = %d, want 400", code)
		}
	})
}
