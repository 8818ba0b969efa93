package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// outboxEntries returns the device's queued reports by file name.
func outboxEntries(t *testing.T, f *fleet, serial string) map[string][]byte {
	t.Helper()
	dir := filepath.Join(f.dir, "devices", serial, "outbox")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if e.Name() == "counter.json" || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // delivered and removed meanwhile
		}
		out[e.Name()] = b
	}
	return out
}

// TestOfflineBufferAcrossInstall cuts the device's broker connection for a
// whole install (download, reboot, commit), then restores it: the server
// gets every report 1..n, in order and once. Then the delivered reports are
// put back into the outbox, as after a crash between the broker's PUBACK
// and the delete, and sent again: the server counts none of them twice.
func TestOfflineBufferAcrossInstall(t *testing.T) {
	s := startServer(t, serverOptions{})
	f := enroll(t, s, map[string]int{"St. Mary Radiology": 1})
	serial := f.devices[0].Serial
	// The proxy forwards bytes, so the device's mutual TLS runs through it.
	scheme, brokerAddr, _ := strings.Cut(s.deviceBroker, "://")
	proxy := newTCPProxy(t, brokerAddr)
	brokerViaProxy := scheme + "://" + proxy.addr
	sim := runSim(t, s, f, brokerViaProxy, time.Second)
	waitReported(t, s, f)

	proxy.cut()
	rel := publish(t, s, "1.1.0")
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel)
	// The device polls over HTTP, installs, reboots and commits; its
	// reports pile up on disk.
	waitFor(t, rolloutTimeout, "the device committed 1.1.0 with the broker cut off", func() bool {
		if d := readDevice(t, f, serial); d.Boot.Primary != "b" || d.Slots["b"].Version != "1.1.0" {
			return false
		}
		for _, b := range outboxEntries(t, f, serial) {
			if strings.Contains(string(b), `"state":"committed"`) {
				return true
			}
		}
		return false
	})
	queued := outboxEntries(t, f, serial)
	siteID := f.sites["St. Mary Radiology"].ID
	if d := sitePatchState(t, s, siteID).Devices[0]; d.InstalledVersion != "1.0.0" || d.LastSeq != 1 {
		t.Fatalf("with the broker cut off the server heard %+v, want only the first report", d)
	}
	if len(queued) < 5 {
		t.Fatalf("outbox holds %d reports, want at least downloading, verified, installed, booted, committed", len(queued))
	}

	proxy.restore(t)
	var dev devicePatch
	waitFor(t, rolloutTimeout, "the buffered reports arrive", func() bool {
		dev = sitePatchState(t, s, siteID).Devices[0]
		return dev.LastSeq == 1+len(queued) && len(reportsOf(t, s, dev.ID)) == dev.LastSeq
	})
	if dev.InstalledVersion != "1.1.0" || dev.Status != "current" {
		t.Fatalf("device = %+v, want current on 1.1.0", dev)
	}
	before := reportsOf(t, s, dev.ID)

	// Replay: the delivered reports are back in the outbox.
	sim.stop()
	outbox := filepath.Join(f.dir, "devices", serial, "outbox")
	for name, b := range queued {
		if err := os.WriteFile(filepath.Join(outbox, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	runSim(t, s, f, brokerViaProxy, time.Second)
	// The restarted device also reports idle: one new report.
	waitFor(t, rolloutTimeout, "the replayed reports are sent again and the new one arrives", func() bool {
		dev = sitePatchState(t, s, siteID).Devices[0]
		return len(outboxEntries(t, f, serial)) == 0 && dev.LastSeq == len(before)+1
	})
	after := reportsOf(t, s, dev.ID)
	if len(after) != len(before)+1 {
		t.Fatalf("after the replay the server holds %d reports, want %d: %s", len(after), len(before)+1, states(after))
	}
	for _, st := range []string{"downloading", "verified", "installed", "booted", "committed"} {
		if n := strings.Count(" "+states(after)+" ", " "+st+" "); n != 1 {
			t.Errorf("the server holds %d %q reports, want 1: %s", n, st, states(after))
		}
	}
	if sp := sitePatchState(t, s, siteID); sp.Counts.Current != 1 || sp.Counts.Total != 1 {
		t.Errorf("site counts = %+v, want the one device current", sp.Counts)
	}
}
