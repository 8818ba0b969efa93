package report

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

func TestEventsShareSequenceAndBatch(t *testing.T) {
	dir := t.TempDir()
	o, err := OpenOutbox(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 2, 0, 0, 0, time.UTC)
	ev := protocol.Event{Source: protocol.SourceSyslog, Category: protocol.CategoryAuth, Severity: protocol.SeverityWarning, Message: "Failed password"}
	if _, err := o.Append(protocol.StateReport{State: protocol.StateIdle, Running: "1"}, now); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		e, err := o.AppendEvent(ev, now)
		if err != nil || e.Seq != uint64(i+2) {
			t.Fatalf("AppendEvent() = seq %d, %v; want seq %d", e.Seq, err, i+2)
		}
	}
	// Reopening keeps the shared counter.
	o, err = OpenOutbox(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := o.Pending()
	if err != nil || len(pending) != 4 || pending[0].Kind != protocol.KindState || pending[1].Kind != protocol.KindEvents {
		t.Fatalf("Pending() = %+v, %v; want a report then three events", pending, err)
	}
	payload, n, err := batchEvents("dev-1", pending[1:])
	if err != nil || n != 3 {
		t.Fatalf("batchEvents() = %d, %v; want 3", n, err)
	}
	batch, err := protocol.ParseEventBatch(payload)
	if err != nil || batch.Events[0].Seq != 2 || batch.Events[2].Seq != 4 || batch.DeviceID != "dev-1" {
		t.Fatalf("ParseEventBatch(batch) = %+v, %v", batch, err)
	}
}

func TestAppendEventRefusesInvalidAndDropsOldest(t *testing.T) {
	o, err := OpenOutbox(t.TempDir(), 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 2, 0, 0, 0, time.UTC)
	if _, err := o.AppendEvent(protocol.Event{Source: "agent", Category: "pwn", Severity: "info"}, now); err == nil {
		t.Fatal("AppendEvent(bad category) = nil, want an error")
	}
	if p, _ := o.Pending(); len(p) != 0 {
		t.Fatalf("a refused event left %d entries", len(p))
	}
	ev := protocol.Event{Source: "file", Category: protocol.CategoryApp, Severity: protocol.SeverityInfo, Message: strings.Repeat("x", 400)}
	var last protocol.Event
	for i := 0; i < 20; i++ {
		if last, err = o.AppendEvent(ev, now); err != nil {
			t.Fatal(err)
		}
	}
	pending, _ := o.Pending()
	var first protocol.Event
	json.Unmarshal(pending[0].Payload, &first)
	// Everything before the oldest kept entry was dropped and counted in
	// the entries that remain.
	var counted uint64
	for _, p := range pending {
		var e protocol.Event
		json.Unmarshal(p.Payload, &e)
		counted += e.Dropped
	}
	if dropped := first.Seq - 1; counted != dropped || last.Seq != 20 {
		t.Fatalf("kept seq %d..%d with %d counted as dropped; want %d", first.Seq, last.Seq, counted, dropped)
	}
}
