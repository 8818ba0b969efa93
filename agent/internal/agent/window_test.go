package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/agent/internal/update/reposim"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

func (a *testAgent) states(t *testing.T) []string {
	var out []string
	for _, r := range a.reports(t) {
		out = append(out, string(r.State)+":"+r.Reason)
	}
	return out
}

// windowed assigns release 1.1.0 to the test device with one maintenance
// window an hour from now, and returns the agent, the window's start and
// the release.
func windowed(t *testing.T) (*reposim.Sim, *testAgent, time.Time, firmware.Manifest) {
	t.Helper()
	sim := reposim.New(t)
	m := sim.AddRelease("1.1.0", false, "pump-x1")
	sim.Publish(sim.Release)
	start := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	sim.AssignInWindows(testDeviceID, "rollout-1", m.TargetPath(), []protocol.Window{{Start: start, End: start.Add(time.Hour)}})
	sim.Publish(sim.Rollout)
	return sim, newTestAgent(t, sim, "", slowread.Limits{}), start, m
}

func TestInstallWaitsForTheMaintenanceWindow(t *testing.T) {
	_, a, start, _ := windowed(t)
	ctx := context.Background()
	for range 2 {
		if err := a.check(ctx); err != nil {
			t.Fatalf("check() outside the window = %v, want nil (waiting)", err)
		}
	}
	a.notArmed(t)
	got := a.states(t)
	want := "waiting:outside the maintenance window; the next opens " + start.Format(time.RFC3339)
	if len(got) != 3 || got[2] != want {
		t.Fatalf("reports = %q; want downloading, verified and one %q", got, want)
	}
	if d := a.nextCheck(); d > time.Hour+time.Minute {
		t.Fatalf("nextCheck() = %s, want at most until the window opens", d)
	}
	// Inside the window: the written slot is armed without a second download.
	a.opts.Now = func() time.Time { return start.Add(time.Minute) }
	if err := a.check(ctx); !errors.Is(err, ErrReboot) {
		t.Fatalf("check() inside the window = %v, want ErrReboot", err)
	}
	downloads := 0
	for _, s := range a.states(t) {
		if strings.HasPrefix(s, "downloading") {
			downloads++
		}
	}
	if downloads != 1 {
		t.Fatalf("reports %q: the image was downloaded %d times, want once", a.states(t), downloads)
	}
	if slot, err := a.boot.PowerOn(); err != nil || slot != firmware.SlotB {
		t.Fatalf("after arming inside the window the device booted %s (%v), want b", slot, err)
	}
}

func TestBusyHookHoldsTheInstall(t *testing.T) {
	sim, _ := assigned(t)
	a := newTestAgent(t, sim, "", slowread.Limits{})
	hook := filepath.Join(t.TempDir(), "busy")
	write := func(script string) {
		if err := os.WriteFile(hook+".tmp", []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(hook+".tmp", hook); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		script string
		reason string
	}{
		{"patient-connected", "#!/bin/sh\necho 'patient connected: infusion running'\nexit 1\n", "device busy: patient connected: infusion running"},
		{"silent-busy", "#!/bin/sh\nexit 3\n", "device busy: busy hook exited exit status 3"},
	}
	a.opts.BusyHook = hook
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			write(tt.script)
			if err := a.check(context.Background()); err != nil {
				t.Fatalf("check() while busy = %v, want nil", err)
			}
			a.notArmed(t)
			got := a.states(t)
			if last := got[len(got)-1]; last != "waiting:"+tt.reason {
				t.Fatalf("last report %q, want waiting with %q", last, tt.reason)
			}
		})
	}
	a.opts.BusyHook = filepath.Join(t.TempDir(), "missing")
	if err := a.check(context.Background()); err != nil {
		t.Fatalf("check() with a hook that cannot run = %v, want nil (busy)", err)
	}
	a.notArmed(t)
	a.opts.BusyHook = hook
	write("#!/bin/sh\nexit 0\n")
	if err := a.check(context.Background()); !errors.Is(err, ErrReboot) {
		t.Fatalf("check() once free = %v, want ErrReboot", err)
	}
}

// An agent that restarts while its verified image waits for the window
// arms that image once the window opens, without downloading it again;
// an image changed in the slot meanwhile is downloaded again.
func TestWaitingImageSurvivesAnAgentRestart(t *testing.T) {
	sim, a, start, m := windowed(t)
	ctx := context.Background()
	if err := a.check(ctx); err != nil {
		t.Fatalf("check() outside the window = %v, want nil (waiting)", err)
	}
	restart := func() {
		t.Helper()
		next, err := New(a.opts)
		if err != nil {
			t.Fatal(err)
		}
		a.Agent = next
		if err := a.afterBoot(ctx); err != nil {
			t.Fatalf("afterBoot() after the restart = %v", err)
		}
	}
	restart()
	got := a.states(t)
	if last := got[len(got)-1]; !strings.HasPrefix(last, "verified:slot b holds the verified image") {
		t.Fatalf("reports %q: after the restart want verified, waiting to be armed", got)
	}
	if err := a.check(ctx); err != nil {
		t.Fatalf("check() after the restart = %v, want nil (waiting)", err)
	}
	if n := sim.Requests(imageFile(m)); n != 1 {
		t.Fatalf("the image was fetched %d times after the restart, want once in all", n)
	}
	a.opts.Now = func() time.Time { return start.Add(time.Minute) }
	restart()
	if err := a.check(ctx); !errors.Is(err, ErrReboot) {
		t.Fatalf("check() inside the window after a restart = %v, want ErrReboot", err)
	}
	if n := sim.Requests(imageFile(m)); n != 1 {
		t.Fatalf("the image was fetched %d times before arming, want once", n)
	}
	if slot, err := a.boot.PowerOn(); err != nil || slot != firmware.SlotB {
		t.Fatalf("after arming the device booted %s (%v), want b", slot, err)
	}
}

func TestWaitingImageChangedInTheSlotIsDownloadedAgain(t *testing.T) {
	sim, a, start, m := windowed(t)
	ctx := context.Background()
	if err := a.check(ctx); err != nil {
		t.Fatalf("check() outside the window = %v, want nil (waiting)", err)
	}
	f, err := os.OpenFile(a.opts.Slots[firmware.SlotB], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("flipped"), 100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	next, err := New(a.opts)
	if err != nil {
		t.Fatal(err)
	}
	a.Agent = next
	a.opts.Now = func() time.Time { return start.Add(time.Minute) }
	if err := a.afterBoot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.check(ctx); !errors.Is(err, ErrReboot) {
		t.Fatalf("check() inside the window = %v, want ErrReboot", err)
	}
	if n := sim.Requests(imageFile(m)); n != 2 {
		t.Fatalf("the image was fetched %d times, want twice (the changed slot is written again)", n)
	}
}
