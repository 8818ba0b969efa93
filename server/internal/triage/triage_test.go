package triage_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/triage"
	"github.com/aftercare/aftercare/server/internal/triage/triagetest"
)

func TestPolicyEvaluate(t *testing.T) {
	p := triage.DefaultPolicy()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		severity string
		kev      bool
		epss     float64
		reasons  []string
		sla      time.Duration
	}{
		{"nothing", "medium", false, 0.1, nil, 0},
		{"high", "high", false, 0, []string{"high"}, 7 * 24 * time.Hour},
		{"kev-beats-high", "high", true, 0, []string{"kev", "high"}, 48 * time.Hour},
		{"critical", "critical", false, 0, []string{"critical"}, 48 * time.Hour},
		{"epss-at-threshold", "", false, 0.5, []string{"epss"}, 7 * 24 * time.Hour},
		{"epss-below", "low", false, 0.49, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reasons, sla := p.Evaluate(tt.severity, tt.kev, tt.epss)
			if !slices.Equal(reasons, tt.reasons) || sla != tt.sla {
				t.Errorf("Evaluate(%s, %v, %v) = %v, %s; want %v, %s", tt.severity, tt.kev, tt.epss, reasons, sla, tt.reasons, tt.sla)
			}
		})
	}
	bad := triage.Policy{SLA: map[string]time.Duration{"kev": 0, "urgent": time.Hour}, EPSSThreshold: 2}
	err := bad.Validate()
	for _, want := range []string{"vuln.sla.kev", "vuln.sla.critical", "vuln.sla.urgent: unknown", "vuln.epss_threshold 2"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(bad) = %v, want it to name %q", err, want)
		}
	}
}

func TestNotifierDeliversByWebhookAndEmail(t *testing.T) {
	s := storetest.SQLite(t)
	ctx := context.Background()
	sink := triagetest.NewSink(t)
	var mu sync.Mutex
	var bodies []string
	fail := true
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, []byte("hook-secret"))
		mac.Write(b)
		if r.Header.Get("X-Aftercare-Signature") != "sha256="+hex.EncodeToString(mac.Sum(nil)) {
			http.Error(w, "bad signature", http.StatusForbidden)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if fail {
			fail = false
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return
		}
		bodies = append(bodies, string(b))
	}))
	defer hook.Close()
	n, err := triage.NewNotifier(triage.NotifierOptions{
		Store: s, Log: slog.New(slog.DiscardHandler), HTTP: hook.Client(),
		WebhookURL: hook.URL, WebhookSecret: "hook-secret",
		SMTP: triage.SMTP{Addr: sink.Addr, From: "aftercare@example.org", To: []string{"psirt@example.org"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	item := store.TriageItem{ID: "t1", Product: "pump", VulnID: "CVE-2023-0286", OpenedAt: time.Now(), DueAt: time.Now()}
	notes := []store.Notification{
		{ID: "n1", Channel: triage.ChannelWebhook, Subject: "triage CVE-2023-0286", Body: `{"vuln_id":"CVE-2023-0286"}`, CreatedAt: time.Now()},
		{ID: "n2", Channel: triage.ChannelEmail, Subject: "triage CVE-2023-0286", Body: "CVE-2023-0286 affects pump.\nDue soon.", CreatedAt: time.Now()},
	}
	if _, err := s.OpenTriage(ctx, item, notes); err != nil {
		t.Fatal(err)
	}
	sent, err := n.Deliver(ctx)
	if err != nil || sent != 1 {
		t.Fatalf("Deliver #1 = %d, %v; want 1 (the webhook answers 503 once)", sent, err)
	}
	pending, _ := s.PendingNotifications(ctx, 10)
	if len(pending) != 1 || !strings.Contains(pending[0].LastError, "status 503") {
		t.Fatalf("pending after a failed webhook = %+v", pending)
	}
	if sent, err := n.Deliver(ctx); err != nil || sent != 1 {
		t.Fatalf("Deliver #2 = %d, %v; want the retried webhook", sent, err)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 || msgs[0].To[0] != "psirt@example.org" || !strings.Contains(msgs[0].Data, "Subject: triage CVE-2023-0286") || !strings.Contains(msgs[0].Data, "Due soon.") {
		t.Errorf("SMTP sink got %+v", msgs)
	}
	if len(bodies) != 1 || bodies[0] != `{"vuln_id":"CVE-2023-0286"}` {
		t.Errorf("webhook got %q", bodies)
	}
}
