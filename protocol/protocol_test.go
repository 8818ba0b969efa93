package protocol_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

func TestParseStateReport(t *testing.T) {
	tests := []struct {
		name, payload, wantErr string
	}{
		{"valid", `{"v":1,"seq":1,"time":"2026-11-23T10:00:00Z","state":"idle","running":"1.0.0"}`, ""},
		{"zero-seq", `{"v":1,"seq":0,"time":"2026-11-23T10:00:00Z","state":"idle","running":"1.0.0"}`, "seq must be positive"},
		{"unknown-state", `{"v":1,"seq":1,"time":"2026-11-23T10:00:00Z","state":"pwned","running":"1.0.0"}`, `state "pwned"`},
		{"future-format", `{"v":2,"seq":1,"time":"2026-11-23T10:00:00Z","state":"idle","running":"1.0.0"}`, "format 2"},
		{"unknown-field", `{"v":1,"seq":1,"time":"2026-11-23T10:00:00Z","state":"idle","running":"1.0.0","device_id":"other"}`, "unknown field"},
		{"no-time", `{"v":1,"seq":1,"state":"idle","running":"1.0.0"}`, "time is missing"},
		{"oversized", `{"v":1,"seq":1,"time":"2026-11-23T10:00:00Z","state":"idle","running":"1.0.0","reason":"` + strings.Repeat("x", protocol.MaxPayloadBytes) + `"}`, "more than the"},
		{"two-values", `{"v":1}{"v":1}`, "trailing data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := protocol.ParseStateReport([]byte(tt.payload))
			if tt.wantErr == "" && err != nil {
				t.Fatalf("ParseStateReport() = %v, want nil", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("ParseStateReport() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseDeviceTopic(t *testing.T) {
	const prefix = "aftercare/v1"
	for _, tt := range []struct {
		topic, id, kind string
		ok              bool
	}{
		{"aftercare/v1/dev/abc-1/state", "abc-1", "state", true},
		{"aftercare/v1/dev/abc/state/extra", "", "", false},
		{"aftercare/v1/dev/+/state", "", "", false},
		{"other/v1/dev/abc/state", "", "", false},
		{"aftercare/v1/dev//state", "", "", false},
	} {
		id, kind, err := protocol.ParseDeviceTopic(prefix, tt.topic)
		if (err == nil) != tt.ok || id != tt.id || kind != tt.kind {
			t.Errorf("ParseDeviceTopic(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.topic, id, kind, err, tt.id, tt.kind, tt.ok)
		}
	}
}

func TestValidIDRejectsTopicCharacters(t *testing.T) {
	for _, id := range []string{"a+b", "a#", "a/b", "", strings.Repeat("x", 65), "$SYS"} {
		if protocol.ValidID(id) {
			t.Errorf("ValidID(%q) = true, want false", id)
		}
	}
}

func FuzzParseStateReport(f *testing.F) {
	names, _ := filepath.Glob("testdata/state/*.json")
	for _, n := range names {
		b, _ := os.ReadFile(n)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := protocol.ParseStateReport(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := protocol.ParseStateReport(again)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip changed the report: %v", err)
		}
	})
}

func FuzzParseHint(f *testing.F) {
	f.Add([]byte(`{"v":1,"time":"2026-11-23T10:00:00Z","reason":"rollout"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		protocol.ParseHint(b)
	})
}

func TestParseAssignmentCustom(t *testing.T) {
	for name, wantOK := range map[string]bool{"valid.json": true, "topic-characters-in-rollout-id.json": false, "unknown-field.json": false,
		"windows.json": true, "window-ends-before-start.json": false} {
		b, err := os.ReadFile(filepath.Join("testdata/assignment", name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := protocol.ParseAssignmentCustom(b); (err == nil) != wantOK {
			t.Errorf("ParseAssignmentCustom(%s) = %v, want ok=%t", name, err, wantOK)
		}
	}
}

func FuzzParseAssignmentCustom(f *testing.F) {
	names, _ := filepath.Glob("testdata/assignment/*.json")
	for _, n := range names {
		b, _ := os.ReadFile(n)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := protocol.ParseAssignmentCustom(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		a2, err := protocol.ParseAssignmentCustom(again)
		if err != nil || !reflect.DeepEqual(a, a2) {
			t.Fatalf("round trip changed the assignment: %v", err)
		}
	})
}

func TestInWindow(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	windows := []protocol.Window{
		{Start: at("2026-03-29T00:00:00Z"), End: at("2026-03-29T03:00:00Z")},
		{Start: at("2026-04-05T00:00:00Z"), End: at("2026-04-05T03:00:00Z")},
	}
	tests := []struct {
		name     string
		now      string
		want     bool
		wantNext string
	}{
		{"before-the-first", "2026-03-28T12:00:00Z", false, "2026-03-29T00:00:00Z"},
		{"at-the-start", "2026-03-29T00:00:00Z", true, ""},
		{"at-the-end-excluded", "2026-03-29T03:00:00Z", false, "2026-04-05T00:00:00Z"},
		{"inside-the-second", "2026-04-05T02:59:59Z", true, ""},
		{"after-the-last", "2026-05-01T00:00:00Z", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, next := protocol.InWindow(windows, at(tt.now))
			gotNext := ""
			if !next.IsZero() {
				gotNext = next.Format(time.RFC3339)
			}
			if ok != tt.want || gotNext != tt.wantNext {
				t.Fatalf("InWindow(%s) = %t, %q; want %t, %q", tt.now, ok, gotNext, tt.want, tt.wantNext)
			}
		})
	}
	if ok, _ := protocol.InWindow(nil, at("2026-05-01T00:00:00Z")); !ok {
		t.Fatal("InWindow(no windows) = false, want any time allowed")
	}
}
