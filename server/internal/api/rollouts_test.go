package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/server/internal/store"
)

// TestStagedRolloutRoutes plays a release engineer and a hospital's IT
// through the rollout, site policy, approval and compliance routes, with
// bad input that must change nothing.
func TestStagedRolloutRoutes(t *testing.T) {
	st := newStack(t)
	var site struct{ ID string }
	st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "St. Mary ICU"}, &site)
	var toks struct{ Tokens []string }
	st.postJSON(t, "/api/v1/sites/"+site.ID+"/enrollment-tokens", adminToken, map[string]int{"count": 2}, &toks)
	var devs []string
	for i, tok := range toks.Tokens {
		id := fmt.Sprintf("dev-icu-%d", i)
		_, csr := newCSR(t, id)
		if code := st.postJSON(t, "/api/v1/enroll", "", st.enrollBody(tok, id, csr), nil); code != 201 {
			t.Fatalf("enroll %s = %d", id, code)
		}
		devs = append(devs, id)
	}
	b, m := bundle(t, "1.1.0")
	var rel struct{ ID string }
	st.upload(t, b, st.sign(t, m, st.targets), &rel)

	put := func(path string, body any) int {
		t.Helper()
		return st.call(t, http.MethodPut, path, adminToken, "application/json", strings.NewReader(mustJSON(t, body)), nil)
	}
	bad := []struct {
		name   string
		method string
		path   string
		body   any
		want   int
	}{
		{"window-with-invalid-time-zone", "PUT", "/api/v1/sites/" + site.ID + "/policy",
			map[string]any{"approval": "approval", "timezone": "Europe/Atlantis", "windows": []map[string]string{{"day": "sat", "start": "01:00", "end": "05:00"}}}, 400},
		{"policy-of-unknown-site", "PUT", "/api/v1/sites/nope/policy", map[string]any{"approval": "auto"}, 404},
		{"labels-of-unknown-device", "PUT", "/api/v1/devices/nope/labels", map[string]any{"labels": map[string]string{"role": "CT scanner"}}, 404},
		{"waves-not-ending-at-100", "POST", "/api/v1/rollouts", map[string]any{"release_id": rel.ID, "waves": []float64{10, 50}}, 400},
		{"soak-not-a-duration", "POST", "/api/v1/rollouts", map[string]any{"release_id": rel.ID, "soak": "soon"}, 400},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code := st.call(t, tt.method, tt.path, adminToken, "application/json", strings.NewReader(mustJSON(t, tt.body)), nil)
			if code != tt.want {
				t.Fatalf("%s %s = %d, want %d", tt.method, tt.path, code, tt.want)
			}
		})
	}
	var policy struct{ Approval string }
	st.call(t, http.MethodGet, "/api/v1/sites/"+site.ID+"/policy", adminToken, "", nil, &policy)
	if policy.Approval != "auto" {
		t.Fatalf("a refused policy change left approval %q, want auto", policy.Approval)
	}
	if code := put("/api/v1/sites/"+site.ID+"/policy", map[string]any{"approval": "approval", "timezone": "Europe/Berlin",
		"windows": []map[string]string{{"day": "sat", "start": "01:00", "end": "05:00"}}, "reason": "change board 12"}); code != 200 {
		t.Fatalf("PUT policy = %d", code)
	}
	if code := put("/api/v1/devices/"+devs[0]+"/labels", map[string]any{"labels": map[string]string{"role": "CT scanner"}}); code != 200 {
		t.Fatalf("PUT labels = %d", code)
	}
	var ro struct {
		ID      string
		Status  string
		Devices []string
	}
	if code := st.postJSON(t, "/api/v1/rollouts", adminToken, map[string]any{"release_id": rel.ID, "canary": 1, "waves": []float64{100},
		"soak": "1h", "max_failure_percent": 10, "severity": "high", "reason": "CVE-2026-0001"}, &ro); code != 201 {
		t.Fatalf("create staged rollout = %d", code)
	}
	if ro.Status != "running" || len(ro.Devices) != 0 {
		t.Fatalf("rollout = %+v; want running with no device assigned before the site approves", ro)
	}
	if code := st.postJSON(t, "/api/v1/rollouts", adminToken, map[string]any{"release_id": rel.ID}, nil); code != 409 {
		t.Fatalf("overlapping rollout = %d, want 409", code)
	}
	var pending struct {
		Pending []struct {
			RolloutID string `json:"rollout_id"`
			Notes     string
			Severity  string
		}
	}
	st.call(t, http.MethodGet, "/api/v1/sites/"+site.ID+"/pending", adminToken, "", nil, &pending)
	if len(pending.Pending) != 1 || pending.Pending[0].RolloutID != ro.ID || pending.Pending[0].Severity != "high" {
		t.Fatalf("pending = %+v", pending)
	}
	if code := st.postJSON(t, "/api/v1/sites/"+site.ID+"/pending/"+ro.ID+"/defer", adminToken, map[string]any{"reason": "audit", "until": "2099-01-01T00:00:00Z"}, nil); code != 400 {
		t.Fatalf("defer past the maximum = %d, want 400", code)
	}
	if code := st.postJSON(t, "/api/v1/sites/"+site.ID+"/pending/"+ro.ID+"/approve", adminToken, map[string]any{"reason": "ok"}, nil); code != 200 {
		t.Fatalf("approve = %d", code)
	}
	st.call(t, http.MethodGet, "/api/v1/rollouts/"+ro.ID, adminToken, "", nil, &ro)
	if len(ro.Devices) != 1 {
		t.Fatalf("after approval the canary assigned %v, want 1 device", ro.Devices)
	}
	if code := st.postJSON(t, "/api/v1/rollouts/"+ro.ID+"/pause", adminToken, map[string]any{"reason": ""}, nil); code != 400 {
		t.Fatalf("pause without reason = %d, want 400", code)
	}
	if code := st.postJSON(t, "/api/v1/rollouts/"+ro.ID+"/pause", adminToken, map[string]any{"reason": "hold for review"}, &ro); code != 200 || ro.Status != "paused" {
		t.Fatalf("pause = %d, status %s", code, ro.Status)
	}
	if code := st.postJSON(t, "/api/v1/rollouts/"+ro.ID+"/rollback", adminToken, map[string]any{"reason": "alarms"}, nil); code != 409 {
		t.Fatalf("rollback without an allow_rollback release = %d, want 409", code)
	}
	var comp struct {
		Sites []struct {
			Counts struct{ Total, Pending int }
		}
	}
	st.call(t, http.MethodGet, "/api/v1/compliance", adminToken, "", nil, &comp)
	if len(comp.Sites) != 1 || comp.Sites[0].Counts.Total != 2 || comp.Sites[0].Counts.Pending != 2 {
		t.Fatalf("compliance = %+v; want one site with 2 pending devices", comp)
	}
	if code := st.call(t, http.MethodGet, "/api/v1/rollouts", "", "", nil, nil); code != 401 {
		t.Fatalf("GET rollouts without a token = %d, want 401", code)
	}
	// Every decision above is in the audit log, refused ones too, with who
	// and why.
	got := map[string]string{}
	es, err := st.store.AuditEntries(context.Background(), store.AuditFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		got[e.Action+" "+e.Outcome] = e.Actor + ": " + e.Reason
	}
	for _, want := range []string{"site.policy done", "rollout.create done", "site.defer denied", "site.approve done",
		"rollout.pause done", "rollout.rollback denied"} {
		if _, ok := got[want]; !ok {
			t.Errorf("audit log lacks %q; it has %v", want, got)
		}
	}
	if why := got["rollout.pause done"]; why != "admin: hold for review" {
		t.Errorf("pause entry = %q, want the actor and the reason", why)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
