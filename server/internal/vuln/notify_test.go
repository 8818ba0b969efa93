package vuln_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/triage"
	"github.com/aftercare/aftercare/server/internal/triage/triagetest"
	"github.com/aftercare/aftercare/server/internal/vuln"
)

// TestNewKEVFindingNotifies follows a feed import to the webhook and the
// mailbox: a KEV finding opens a triage item due in 48h, and PSIRT hears
// of it by both channels.
func TestNewKEVFindingNotifies(t *testing.T) {
	s := storetest.SQLite(t)
	ctx := context.Background()
	sink := triagetest.NewSink(t)
	var mu sync.Mutex
	var events []map[string]any
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var ev map[string]any
		json.Unmarshal(b, &ev)
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}))
	defer hook.Close()
	notifier, err := triage.NewNotifier(triage.NotifierOptions{Store: s, Log: slog.New(slog.DiscardHandler), HTTP: hook.Client(), WebhookURL: hook.URL,
		SMTP: triage.SMTP{Addr: sink.Addr, From: "aftercare@example.org", To: []string{"psirt@example.org"}}})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, s)
	svc, err := vuln.New(vuln.Options{Store: s, Log: slog.New(slog.DiscardHandler), Notifier: notifier, Now: f.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range []struct{ kind, file string }{{"kev", "testdata/kev/known_exploited_vulnerabilities.json"}, {"nvd", "testdata/nvd/CVE-2023-4863.json"}} {
		if _, err := svc.Import(ctx, vuln.AllSites, imp.kind, readFile(t, imp.file), vuln.Source{Origin: imp.file}); err != nil {
			t.Fatal(err)
		}
	}
	if sent, err := notifier.Deliver(ctx); err != nil || sent != 2 {
		t.Fatalf("Deliver = %d, %v; want the webhook and the email", sent, err)
	}
	if len(events) != 1 || events[0]["event"] != "triage.opened" {
		t.Fatalf("webhook events = %v", events)
	}
	item := events[0]["triage_item"].(map[string]any)
	if item["vuln_id"] != "CVE-2023-4863" || item["kev"] != true || item["due_at"] != "2026-11-25T10:00:00Z" {
		t.Errorf("triage item = %v; want CVE-2023-4863, KEV, due 48h after 2026-11-23T10:00", item)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 || !strings.Contains(msgs[0].Data, "CVE-2023-4863 affects pump releases 1.0.0") || !strings.Contains(msgs[0].Data, "aftercare vuln exposed CVE-2023-4863") {
		t.Errorf("emails = %+v", msgs)
	}
}
