package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/internal/testenv"
)

// agentDevice is one device running the real aftercare-agent binary with
// the file bootloader: its configuration, slot files and state directory
// live in a temporary directory.
type agentDevice struct {
	dir, stateDir, config string
	serial                string
}

// agentConfig says where the device's agent looks for the fleet.
type agentConfig struct {
	serverURL, brokerURL, token string
}

// newAgentDevice prepares a device with a factory image in slot A.
func newAgentDevice(t *testing.T, s *server, serial string) *agentDevice {
	t.Helper()
	dir := t.TempDir()
	d := &agentDevice{dir: dir, stateDir: filepath.Join(dir, "state"), config: filepath.Join(dir, "agent.yaml"), serial: serial}
	if err := os.WriteFile(filepath.Join(dir, "slot-a.img"), []byte("factory image "+serial), 0o640); err != nil {
		t.Fatal(err)
	}
	return d
}

// configure writes the agent's configuration file.
func (d *agentDevice) configure(t *testing.T, s *server, c agentConfig) {
	t.Helper()
	y := fmt.Sprintf(`server_url: %s
broker_url: %s
state_dir: %s
serial: %s
model: pump-x1
factory_version: 1.0.0
trusted_root: %s
trusted_rollout_root: %s
bootloader: file
slot_a: %s
slot_b: %s
poll_interval: 1h
health_timeout: 30s
log_level: debug
`, c.serverURL, c.brokerURL, d.stateDir, d.serial, filepath.Join(s.keysDir, "1.root.json"), filepath.Join(s.keysDir, "1.rollout-root.json"),
		filepath.Join(d.dir, "slot-a.img"), filepath.Join(d.dir, "slot-b.img"))
	if c.token != "" {
		y += "enrollment_token: " + c.token + "\n"
	}
	if err := os.WriteFile(d.config, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
}

// offline points the agent at addresses where nothing listens.
func (d *agentDevice) offline(t *testing.T, s *server) {
	t.Helper()
	d.configure(t, s, agentConfig{serverURL: "http://" + testenv.FreeAddr(t), brokerURL: "tcp://" + testenv.FreeAddr(t)})
}

// online points the agent at the test server and its broker.
func (d *agentDevice) online(t *testing.T, s *server) {
	t.Helper()
	d.configure(t, s, agentConfig{serverURL: s.url, brokerURL: s.deviceBroker})
}

// run starts the agent service.
func (d *agentDevice) run(t *testing.T) *proc {
	t.Helper()
	return start(t, "agent-"+d.serial+"-"+randomHex(2)+".log", nil, "aftercare-agent", "-config", d.config)
}

// installBundle runs `aftercare-agent install-bundle` and returns its
// output and error.
func (d *agentDevice) installBundle(t *testing.T, bundle string) (string, error) {
	t.Helper()
	out, err := exec.Command(filepath.Join(bin, "aftercare-agent"), "install-bundle", "-config", d.config, bundle).CombinedOutput()
	return string(out), err
}

// bootEnv reads the file bootloader's environment.
func (d *agentDevice) bootEnv(t *testing.T) (primary, try string) {
	t.Helper()
	var env struct {
		Primary string `json:"primary"`
		Try     string `json:"try"`
	}
	b, err := os.ReadFile(filepath.Join(d.stateDir, "boot", "bootenv.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	return env.Primary, env.Try
}

// deviceReport is one report as the server stored it.
type deviceReport struct {
	Seq   int    `json:"seq"`
	State string `json:"state"`
}

// timelineEntry is a report or a security event on a device's timeline.
type timelineEntry struct {
	Kind   string        `json:"kind"` // "report" or "event"
	Seq    int           `json:"seq"`
	Report *deviceReport `json:"report"`
}

// reportsOf returns the device's reports as the server holds them, after
// checking that reports and security events, which share one sequence,
// are numbered 1..n together: none lost, none counted twice.
func reportsOf(t *testing.T, s *server, deviceID string) []deviceReport {
	t.Helper()
	var tl struct {
		Timeline []timelineEntry `json:"timeline"`
	}
	if code, err := (&httpJSON{s}).get(t, "/api/v1/devices/"+deviceID+"/timeline", &tl); err != nil || code != 200 {
		t.Fatalf("GET timeline of %s: %d %v", deviceID, code, err)
	}
	slices.SortFunc(tl.Timeline, func(a, b timelineEntry) int { return a.Seq - b.Seq })
	var reports []deviceReport
	for i, e := range tl.Timeline {
		if e.Seq != i+1 {
			t.Fatalf("timeline entry %d (%s) has seq %d: reports or events were lost or counted twice: %+v", i, e.Kind, e.Seq, tl.Timeline)
		}
		if e.Kind == "report" && e.Report != nil {
			reports = append(reports, *e.Report)
		}
	}
	return reports
}

func states(rs []deviceReport) string {
	var out []string
	for _, r := range rs {
		out = append(out, r.State)
	}
	return strings.Join(out, " ")
}

// deviceBySerial finds an enrolled device in the server's list.
func deviceBySerial(t *testing.T, s *server, serial string) (devicePatch, bool) {
	t.Helper()
	var out struct{ Devices []devicePatch }
	cliJSON(t, s, &out, "devices")
	for _, d := range out.Devices {
		if d.Serial == serial {
			return d, true
		}
	}
	return devicePatch{}, false
}

// waitDevice waits until the server's view of the device satisfies cond.
func waitDevice(t *testing.T, s *server, serial string, timeout time.Duration, what string, cond func(devicePatch) bool) devicePatch {
	t.Helper()
	var d devicePatch
	waitFor(t, timeout, what, func() bool {
		var ok bool
		d, ok = deviceBySerial(t, s, serial)
		return ok && cond(d)
	})
	return d
}
