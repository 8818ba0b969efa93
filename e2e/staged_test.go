package e2e

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// stagedView is the part of `aftercare rollout show --json` the test reads.
type stagedView struct {
	ID           string         `json:"id"`
	Status       string         `json:"status"`
	StatusReason string         `json:"status_reason"`
	Counts       map[string]int `json:"counts"`
	Cohort       []struct {
		DeviceID string `json:"device_id"`
		SiteID   string `json:"site_id"`
		State    string `json:"state"`
	} `json:"cohort"`
}

// TestStagedRolloutHaltsResumesAndWaitsForApproval plays the whole story
// with real binaries: a canary and waves across two sites where one device
// fails its health check, so the rollout halts itself naming it; a resume
// with a reason finishes it; a third site requires approval, and its device
// waits until the site's IT approves.
func TestStagedRolloutHaltsResumesAndWaitsForApproval(t *testing.T) {
	s := startServer(t, serverOptions{})
	s.restart(t, "AFTERCARE_ROLLOUT_TICK=200ms")
	f := enroll(t, s, map[string]int{"North ICU": 3, "South Radiology": 2})
	// One device rolls back: its new slot fails the health check.
	f.devices[0].FailHealth = true
	failing := f.devices[0].Serial
	b, _ := json.Marshal(f.devices)
	if err := os.WriteFile(f.devicesFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	g := enroll(t, s, map[string]int{"Lakeside Cardiology": 1})
	approvalSite := g.sites["Lakeside Cardiology"].ID
	runCLI(t, s.cliEnv(), "site", "policy", "set", approvalSite, "--approval", "approval", "--reason", "change board approves every patch")
	runSim(t, s, f, "", 2*time.Second)
	runSim(t, s, g, "", 2*time.Second)
	waitFor(t, 30*time.Second, "every device reported in", func() bool {
		var out struct{ Devices []devicePatch }
		cliJSON(t, s, &out, "devices")
		for _, d := range out.Devices {
			if d.LastSeq == 0 {
				return false
			}
		}
		return len(out.Devices) == 6
	})
	failingID := deviceIDBySerial(t, s, failing, f.sites["North ICU"].ID, f.sites["South Radiology"].ID)
	rel := publish(t, s, "1.1.0")

	var ro stagedView
	cliJSON(t, s, &ro, "rollout", "create", "--release", rel, "--canary", "2", "--waves", "50,100", "--soak", "1s",
		"--max-failure", "10", "--severity", "high", "--reason", "fixes CVE-2026-0001")
	show := func() stagedView {
		var v stagedView
		cliJSON(t, s, &v, "rollout", "show", ro.ID)
		return v
	}
	waitFor(t, rolloutTimeout, "the rollout halts itself on the failing device", func() bool { return show().Status == "halted" })
	v := show()
	if !strings.Contains(v.StatusReason, failingID) || !strings.Contains(v.StatusReason, "threshold") {
		t.Fatalf("halt reason %q does not name the failing device %s and the threshold", v.StatusReason, failingID)
	}
	if _, err := tryCLI(s.cliEnv(), "rollout", "resume", ro.ID); err == nil || !strings.Contains(err.Error(), "reason is required") {
		t.Fatalf("resume without a reason: err = %v, want refused naming the reason", err)
	}
	runCLI(t, s.cliEnv(), "rollout", "resume", ro.ID, "--reason", "unit PX1 has a known bad sensor; replaced")
	waitFor(t, rolloutTimeout, "the rollout completes", func() bool { return show().Status == "completed" })
	v = show()
	if v.Counts["succeeded"] != 4 || v.Counts["failed"] != 1 || v.Counts["held"] != 1 {
		t.Fatalf("completed rollout counts %v; want 4 succeeded, 1 failed, 1 held for approval", v.Counts)
	}
	onNew := versionCount(t, s, f.sites["North ICU"].ID, "1.1.0") + versionCount(t, s, f.sites["South Radiology"].ID, "1.1.0")
	if onNew != 4 || versionCount(t, s, approvalSite, "1.1.0") != 0 {
		t.Fatalf("%d device(s) of the auto sites on 1.1.0, want 4; the approval site's device must still wait", onNew)
	}
	out := runCLI(t, s.cliEnv(), "pending", approvalSite)
	if !strings.Contains(out, "1.1.0 (high)") || !strings.Contains(out, "awaiting approval") {
		t.Fatalf("pending for the approval site:\n%s\nwant 1.1.0 (high) awaiting approval", out)
	}
	runCLI(t, s.cliEnv(), "approve", approvalSite, ro.ID, "--reason", "maintenance booked")
	waitFor(t, rolloutTimeout, "the approval site's device runs 1.1.0", func() bool {
		return versionCount(t, s, approvalSite, "1.1.0") == 1
	})
	out = runCLI(t, s.cliEnv(), "compliance")
	if !strings.Contains(out, "Lakeside Cardiology") {
		t.Fatalf("compliance summary lacks a site:\n%s", out)
	}

	// Maintenance windows: an invalid time zone changes nothing; a window
	// that is closed now (two days ahead, UTC) holds the next install
	// on the device, which downloads but reports waiting.
	if _, err := tryCLI(s.cliEnv(), "site", "window", "set", approvalSite, "--timezone", "Mars/Olympus", "--window", "sat/01:00-05:00"); err == nil || !strings.Contains(err.Error(), "Mars/Olympus") {
		t.Fatalf("window with an invalid time zone: err = %v, want refused naming it", err)
	}
	day := strings.ToLower(time.Now().UTC().Add(48 * time.Hour).Weekday().String()[:3])
	runCLI(t, s.cliEnv(), "site", "window", "set", approvalSite, "--timezone", "UTC", "--window", day+"/00:00-01:00", "--reason", "night shift only")
	if out := runCLI(t, s.cliEnv(), "site", "policy", "show", approvalSite); !strings.Contains(out, day+" 00:00-01:00 (UTC)") || !strings.Contains(out, "approval approval") {
		t.Fatalf("site policy show:\n%s\nwant the approval policy and the window", out)
	}
	rel2 := publish(t, s, "1.2.0")
	var ro2 stagedView
	cliJSON(t, s, &ro2, "rollout", "create", "--release", rel2, "--site", approvalSite, "--severity", "critical", "--reason", "fixes CVE-2026-0002")
	if _, err := tryCLI(s.cliEnv(), "defer", approvalSite, ro2.ID, "--until", "720h", "--reason", "too long"); err == nil || !strings.Contains(err.Error(), "maximum deferral") {
		t.Fatalf("defer past the maximum for a critical patch: err = %v", err)
	}
	runCLI(t, s.cliEnv(), "approve", approvalSite, ro2.ID, "--reason", "ok")
	waitFor(t, rolloutTimeout, "the device waits for its maintenance window", func() bool {
		for _, d := range sitePatchState(t, s, approvalSite).Devices {
			if d.State == "waiting" && strings.Contains(d.StateReason, "outside the maintenance window") && d.InstalledVersion == "1.1.0" {
				return true
			}
		}
		return false
	})
}

// deviceIDBySerial finds a device of the given sites by serial (two
// fleets may reuse serials).
func deviceIDBySerial(t *testing.T, s *server, serial string, siteIDs ...string) string {
	t.Helper()
	var out struct {
		Devices []struct {
			ID     string `json:"id"`
			Serial string `json:"serial"`
			SiteID string `json:"site_id"`
		}
	}
	cliJSON(t, s, &out, "devices")
	for _, d := range out.Devices {
		if d.Serial == serial && slices.Contains(siteIDs, d.SiteID) {
			return d.ID
		}
	}
	t.Fatalf("no device with serial %s", serial)
	return ""
}

func versionCount(t *testing.T, s *server, siteID, version string) int {
	t.Helper()
	n := 0
	for _, d := range sitePatchState(t, s, siteID).Devices {
		if d.InstalledVersion == version && d.State == "committed" {
			n++
		}
	}
	return n
}
