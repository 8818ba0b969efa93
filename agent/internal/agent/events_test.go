package agent

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/protocol"
)

// events returns the security events in the outbox, oldest first.
func (a *testAgent) events(t *testing.T) []protocol.Event {
	t.Helper()
	pending, err := a.outbox.Pending()
	if err != nil {
		t.Fatal(err)
	}
	var out []protocol.Event
	for _, e := range pending {
		if e.Kind != protocol.KindEvents {
			continue
		}
		var ev protocol.Event
		if err := json.Unmarshal(e.Payload, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func TestStartEventsSeeConfigAndSlotChanges(t *testing.T) {
	sim, _ := assigned(t)
	a := newTestAgent(t, sim, "", slowread.Limits{}, func(o *Options) { o.ConfigHash = "sha256:one" })
	// First start: nothing to compare with.
	if err := a.startEvents(false); err != nil {
		t.Fatal(err)
	}
	if evs := a.events(t); len(evs) != 0 {
		t.Fatalf("first start made events %+v, want none", evs)
	}
	// Same config, same slot: nothing.
	if err := a.startEvents(false); err != nil || len(a.events(t)) != 0 {
		t.Fatalf("unchanged start: err %v, events %+v", err, a.events(t))
	}
	// The configuration changed, and the marks say another slot ran
	// before, with no install of the agent's in between.
	a.opts.ConfigHash = "sha256:two"
	var m marks
	b, _ := os.ReadFile(a.marksPath())
	json.Unmarshal(b, &m)
	m.Slot, m.Version = "b", "0.9.0"
	b, _ = json.Marshal(m)
	os.WriteFile(a.marksPath(), b, 0o600)
	if err := a.startEvents(false); err != nil {
		t.Fatal(err)
	}
	evs := a.events(t)
	if len(evs) != 2 || evs[0].Fields["event"] != "unexpected_slot_change" || evs[0].Severity != protocol.SeverityCritical ||
		evs[1].Category != protocol.CategoryConfig || evs[1].Fields["to_hash"] != "sha256:two" {
		t.Fatalf("events after a slot and config change = %+v; want unexpected_slot_change then config_changed", evs)
	}
	// A slot change the agent made itself is no event.
	b, _ = os.ReadFile(a.marksPath())
	json.Unmarshal(b, &m)
	m.Slot = "b"
	b, _ = json.Marshal(m)
	os.WriteFile(a.marksPath(), b, 0o600)
	if err := a.startEvents(true); err != nil || len(a.events(t)) != 2 {
		t.Fatalf("after an install: err %v, %d events; want still 2", err, len(a.events(t)))
	}
}
