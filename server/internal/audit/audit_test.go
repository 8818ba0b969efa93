package audit_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/audit"
)

func chain(t *testing.T, n int) []audit.Entry {
	t.Helper()
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	var out []audit.Entry
	var prevSeq int64
	var prevHash string
	for i := range n {
		e, err := audit.New(audit.Record{Actor: "ana", Role: "psirt", Action: "disposition.set", Object: "disposition/pump/CVE-1",
			Reason: "triaged", Details: map[string]any{"b": i, "a": "x"}}, t0.Add(time.Duration(i)*time.Minute), prevSeq, prevHash)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
		prevSeq, prevHash = e.Seq, e.Hash
	}
	return out
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func([]audit.Entry) []audit.Entry
		wantSeq int64 // 0: chain intact
	}{
		{"intact", func(es []audit.Entry) []audit.Entry { return es }, 0},
		{"edited-reason", func(es []audit.Entry) []audit.Entry { es[2].Reason = "nothing to see"; return es }, 3},
		{"edited-actor", func(es []audit.Entry) []audit.Entry { es[0].Actor = "mallory"; return es }, 1},
		{"edited-time", func(es []audit.Entry) []audit.Entry { es[3].At = es[3].At.Add(time.Hour); return es }, 4},
		{"edited-details", func(es []audit.Entry) []audit.Entry { es[1].Details = json.RawMessage(`{"a":"y","b":1}`); return es }, 2},
		{"edited-and-rehashed", func(es []audit.Entry) []audit.Entry {
			es[1].Reason = "forged"
			es[1].Hash = es[1].ComputeHash()
			return es
		}, 3},
		{"removed-middle", func(es []audit.Entry) []audit.Entry { return append(es[:2:2], es[3:]...) }, 3},
		{"removed-first", func(es []audit.Entry) []audit.Entry { return es[1:] }, 1},
		{"removed-and-renumbered", func(es []audit.Entry) []audit.Entry {
			es = append(es[:2:2], es[3:]...)
			for i := 2; i < len(es); i++ {
				es[i].Seq--
				es[i].Hash = es[i].ComputeHash()
			}
			return es
		}, 3},
		{"inserted", func(es []audit.Entry) []audit.Entry {
			forged, _ := audit.New(audit.Record{Actor: "mallory", Role: "admin", Action: "user.create"}, es[1].At, es[1].Seq, es[1].Hash)
			out := append(es[:2:2], forged)
			for _, e := range es[2:] {
				e.Seq++
				e.Hash = e.ComputeHash()
				out = append(out, e)
			}
			return out
		}, 4},
		{"duplicated", func(es []audit.Entry) []audit.Entry { return append(es[:3:3], es[2:]...) }, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := audit.Verify(tt.tamper(chain(t, 6)))
			if tt.wantSeq == 0 {
				if err != nil {
					t.Fatalf("Verify(intact) = %v", err)
				}
				return
			}
			var ce *audit.ChainError
			if !errors.As(err, &ce) || !errors.Is(err, audit.ErrBroken) || ce.Seq != tt.wantSeq {
				t.Fatalf("Verify() = %v, want a chain error at seq %d", err, tt.wantSeq)
			}
		})
	}
}

func TestCanonical(t *testing.T) {
	tests := []struct {
		in   any
		want string
	}{
		{nil, `{}`},
		{map[string]any{"b": 1, "a": []int{2, 1}}, `{"a":[2,1],"b":1}`},
		{json.RawMessage(`{ "z": 1e3, "a": "<x>" }`), `{"a":"<x>","z":1e3}`},
		{struct {
			B string `json:"b"`
			A int    `json:"a"`
		}{"x", 1}, `{"a":1,"b":"x"}`},
	}
	for _, tt := range tests {
		got, err := audit.Canonical(tt.in)
		if err != nil || string(got) != tt.want {
			t.Errorf("Canonical(%v) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	if _, err := audit.Canonical(json.RawMessage(`{"a":`)); err == nil {
		t.Error("Canonical(truncated JSON) = nil error")
	}
}
