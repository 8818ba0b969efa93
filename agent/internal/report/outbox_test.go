package report_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/agent/internal/report"
	"github.com/aftercare/aftercare/protocol"
)

var now = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func mustAppend(t *testing.T, o *report.Outbox, reason string) protocol.StateReport {
	t.Helper()
	r, err := o.Append(protocol.StateReport{State: protocol.StateIdle, Running: "1.0.0", Reason: reason}, now)
	if err != nil {
		t.Fatalf("Append() = %v", err)
	}
	return r
}

func decode(t *testing.T, e report.Entry) protocol.StateReport {
	t.Helper()
	r, err := protocol.ParseStateReport(e.Payload)
	if err != nil {
		t.Fatalf("stored report does not parse: %v", err)
	}
	return *r
}

func TestOutboxOrderAndSequenceSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	o, err := report.OpenOutbox(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		mustAppend(t, o, "")
	}
	pending, _ := o.Pending()
	if err := o.Delivered(pending[0].Seq); err != nil {
		t.Fatal(err)
	}
	o, err = report.OpenOutbox(dir, 0) // restart
	if err != nil {
		t.Fatal(err)
	}
	if r := mustAppend(t, o, ""); r.Seq != 4 {
		t.Fatalf("first seq after restart = %d, want 4", r.Seq)
	}
	pending, _ = o.Pending()
	var seqs []uint64
	for _, e := range pending {
		seqs = append(seqs, decode(t, e).Seq)
	}
	if len(seqs) != 3 || seqs[0] != 2 || seqs[2] != 4 {
		t.Fatalf("pending seqs = %v, want [2 3 4]", seqs)
	}
}

func TestOutboxDropsOldestAndReportsTheDrop(t *testing.T) {
	o, err := report.OpenOutbox(t.TempDir(), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 1500) // each report is about 1.6 KB
	const n = 100
	for i := 0; i < n; i++ {
		mustAppend(t, o, big)
	}
	pending, _ := o.Pending()
	var size int
	var dropped uint64
	for _, e := range pending {
		size += len(e.Payload)
		dropped += decode(t, e).Dropped
	}
	if size > 64<<10 {
		t.Fatalf("outbox holds %d bytes, over its 64 KiB budget", size)
	}
	if got := uint64(len(pending)) + dropped; got != n {
		t.Fatalf("%d queued + %d reported dropped = %d, want every one of the %d reports accounted for", len(pending), dropped, got, n)
	}
	if first := decode(t, pending[0]); first.Seq != n-uint64(len(pending))+1 {
		t.Fatalf("oldest kept seq = %d; the oldest must go first", first.Seq)
	}
}
