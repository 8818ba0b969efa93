package e2e

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/internal/testenv"
)

// rolloutTimeout bounds how long a small fleet may take to install, reboot
// and commit; it is a hang detector, not a speed measurement.
const rolloutTimeout = 90 * time.Second

var twoSites = map[string]int{"St. Mary Radiology": 2, "Lakeside Cardiology": 1}

// rolloutToAll runs the whole story: three devices in two sites, a signed
// release, a rollout, and every device committed with per-site state right.
func rolloutToAll(t *testing.T, s *server, deviceBroker string) {
	f := enroll(t, s, twoSites)
	runSim(t, s, f, deviceBroker, time.Minute)
	waitReported(t, s, f)
	rel := publish(t, s, "1.1.0")
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel)
	waitFor(t, rolloutTimeout, "every device runs 1.1.0", func() bool {
		for _, sp := range summary(t, s) {
			if sp.Counts.Versions["1.1.0"] != sp.Counts.Total || sp.Counts.Failed > 0 {
				return false
			}
		}
		return true
	})
	sum := summary(t, s)
	for name, n := range twoSites {
		c := sum[name].Counts
		if c.Total != n || c.Current != n || c.Pending+c.Installing+c.Failed != 0 || c.Versions["1.1.0"] != n {
			t.Errorf("site %s counts = %+v, want %d devices all current on 1.1.0", name, c, n)
		}
		for _, d := range sitePatchState(t, s, f.sites[name].ID).Devices {
			if d.State != "committed" || d.InstalledVersion != "1.1.0" || d.Status != "current" {
				t.Errorf("device %s = %+v, want committed 1.1.0 current", d.Serial, d)
			}
		}
	}
}

// waitReported waits until every device of the fleet has enrolled and its
// first report reached the server.
func waitReported(t *testing.T, s *server, f *fleet) {
	t.Helper()
	waitFor(t, 30*time.Second, "every device reported in", func() bool {
		var out struct{ Devices []devicePatch }
		cliJSON(t, s, &out, "devices")
		if len(out.Devices) != len(f.devices) {
			return false
		}
		for _, d := range out.Devices {
			if d.LastSeq == 0 {
				return false
			}
		}
		return true
	})
}

func TestRolloutEmbeddedBroker(t *testing.T) {
	s := startServer(t, serverOptions{})
	rolloutToAll(t, s, "")
}

func TestRolloutMosquitto(t *testing.T) {
	testenv.Need(t, "Mosquitto", "127.0.0.1:1883", "mosquitto -d -c /etc/mosquitto/mosquitto.conf")
	s := startServer(t, serverOptions{brokerURL: "tcp://127.0.0.1:1883"})
	rolloutToAll(t, s, "")
}

// deviceState is what a simulated device keeps on disk.
type deviceState struct {
	Boot struct {
		Primary   string `json:"primary"`
		Try       string `json:"try"`
		TriesLeft int    `json:"tries_left"`
	}
	Slots map[string]struct {
		Version string `json:"version"`
	}
}

func readDevice(t *testing.T, f *fleet, serial string) deviceState {
	t.Helper()
	dir := filepath.Join(f.dir, "devices", serial)
	var st deviceState
	b, _ := os.ReadFile(filepath.Join(dir, "boot", "bootenv.json"))
	json.Unmarshal(b, &st.Boot)
	b, _ = os.ReadFile(filepath.Join(dir, "slots.json"))
	var slots struct {
		Slots map[string]struct {
			Version string `json:"version"`
		} `json:"slots"`
	}
	json.Unmarshal(b, &slots)
	st.Slots = slots.Slots
	return st
}

func TestTamperedImageIsRefused(t *testing.T) {
	s := startServer(t, serverOptions{})
	f := enroll(t, s, map[string]int{"St. Mary Radiology": 1})
	rel := publish(t, s, "1.1.0")
	// One byte of the stored image changes on the server's disk.
	var blob string
	filepath.WalkDir(filepath.Join(s.dataDir, "repository", "release", "targets"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			blob = p
		}
		return nil
	})
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatalf("stored image not found: %v", err)
	}
	b[len(b)/2] ^= 0x20
	os.WriteFile(blob, b, 0o644)

	runSim(t, s, f, "", time.Minute)
	waitReported(t, s, f)
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel)
	st := f.sites["St. Mary Radiology"]
	var dev devicePatch
	waitFor(t, rolloutTimeout, "the device reports the failure", func() bool {
		dev = sitePatchState(t, s, st.ID).Devices[0]
		return dev.Status == "failed"
	})
	if dev.InstalledVersion != "1.0.0" || !strings.Contains(dev.StateReason, "sha256") {
		t.Fatalf("device = %+v, want 1.0.0 still running and a reason naming the digest mismatch", dev)
	}
	disk := readDevice(t, f, f.devices[0].Serial)
	if disk.Boot.Primary != "a" || disk.Boot.Try != "" {
		t.Fatalf("boot environment = %+v; the tampered slot must never be armed", disk.Boot)
	}
	if v, ok := disk.Slots["b"]; ok {
		t.Fatalf("slot b is recorded as holding %q; a refused image must leave it invalid", v.Version)
	}
}

func TestPollFindsUpdateWithoutHints(t *testing.T) {
	s := startServer(t, serverOptions{})
	f := enroll(t, s, map[string]int{"St. Mary Radiology": 1})
	// The device cannot reach the broker: no hint and no report gets
	// through, only its poll timer and HTTP.
	dead := "tcp://" + testenv.FreeAddr(t)
	offline := runSim(t, s, f, dead, time.Second)
	waitFor(t, 30*time.Second, "the device enrolled", func() bool {
		var out struct{ Devices []devicePatch }
		cliJSON(t, s, &out, "devices")
		return len(out.Devices) == len(f.devices)
	})
	rel := publish(t, s, "1.1.0")
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel)
	serial := f.devices[0].Serial
	waitFor(t, rolloutTimeout, "the device installs 1.1.0 by polling", func() bool {
		d := readDevice(t, f, serial)
		return d.Boot.Primary == "b" && d.Slots["b"].Version == "1.1.0"
	})
	if sp := sitePatchState(t, s, f.sites["St. Mary Radiology"].ID); sp.Devices[0].InstalledVersion != "1.0.0" {
		t.Fatalf("the server heard %s from a device that cannot reach the broker", sp.Devices[0].InstalledVersion)
	}
	offline.stop()
	// Back online: the reports buffered on disk arrive, in order, once.
	runSim(t, s, f, "", time.Minute)
	siteID := f.sites["St. Mary Radiology"].ID
	var dev devicePatch
	var detail struct {
		Reports []struct {
			Seq   int    `json:"seq"`
			State string `json:"state"`
		} `json:"reports"`
	}
	// After the restart the device reports idle once more, so its newest
	// report is number 7: idle, downloading, verified, installed, booted,
	// committed, idle.
	waitFor(t, rolloutTimeout, "the buffered reports arrive", func() bool {
		dev = sitePatchState(t, s, siteID).Devices[0]
		if dev.LastSeq < 7 {
			return false
		}
		code, err := (&httpJSON{s}).get(t, "/api/v1/devices/"+dev.ID, &detail)
		return err == nil && code == 200 && len(detail.Reports) == dev.LastSeq
	})
	if dev.InstalledVersion != "1.1.0" || dev.Status != "current" {
		t.Fatalf("device = %+v, want current on 1.1.0", dev)
	}
	var states []string
	for i, r := range detail.Reports {
		if r.Seq != i+1 {
			t.Fatalf("report %d has seq %d: reports were lost or doubled: %+v", i, r.Seq, detail.Reports)
		}
		states = append(states, r.State)
	}
	got := strings.Join(states, " ")
	for _, want := range []string{"downloading", "verified", "installed", "booted", "committed"} {
		if !strings.Contains(got, want) {
			t.Errorf("reports %q lack %q", got, want)
		}
	}
}
