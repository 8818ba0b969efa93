// Package e2e tests Aftercare end to end, as its users run it: the real
// aftercare-server, aftercare-sim and aftercare binaries as processes,
// talking HTTP and MQTT over loopback. Nothing is mocked.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/internal/testenv"
)

// bin is where TestMain built the binaries.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "aftercare-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	args := []string{"build", "-o", dir + "/"}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "../server/cmd/aftercare-server", "../server/cmd/aftercare", "../agent/cmd/aftercare-sim", "../agent/cmd/aftercare-agent")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the binaries under test failed:", err)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// proc is a process under test; its output goes to a log file that is
// printed when the test fails.
type proc struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func start(t *testing.T, logName string, env []string, name string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), logName)
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- %s log ---\n%s", logName, tail(b, 200))
		}
	})
	return p
}

func tail(b []byte, lines int) string {
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// stop interrupts the process and waits for it.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	testenv.Stop(p.cmd.Process, p.exited, os.Interrupt, 15*time.Second)
}

// server is a running aftercare-server with its keys.
type server struct {
	url, token, dataDir, keysDir string
	deviceBroker                 string
	listen                       string
	env                          []string // the server's environment
	proc                         *proc
}

// serverOptions choose the broker; the zero value runs the embedded one.
type serverOptions struct {
	brokerURL string   // external broker, e.g. Mosquitto
	keysInit  []string // extra arguments of `aftercare keys init`
	env       []string // more of the server's environment (AFTERCARE_*=...)
}

func startServer(t *testing.T, o serverOptions) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{dataDir: filepath.Join(dir, "data"), keysDir: filepath.Join(dir, "keys"), token: "aca_" + randomHex(16)}
	runCLI(t, nil, append([]string{"keys", "init", "--dir", s.keysDir}, o.keysInit...)...)
	s.listen = testenv.FreeAddr(t)
	s.url = "http://" + s.listen
	s.env = []string{
		"AFTERCARE_RELEASE_ROOT=" + filepath.Join(s.keysDir, "1.root.json"),
		"AFTERCARE_SNAPSHOT_KEY=" + filepath.Join(s.keysDir, "snapshot.key"),
		"AFTERCARE_TIMESTAMP_KEY=" + filepath.Join(s.keysDir, "timestamp.key"),
		"AFTERCARE_ROLLOUT_ROOT=" + filepath.Join(s.keysDir, "1.rollout-root.json"),
		"AFTERCARE_ROLLOUT_KEY=" + filepath.Join(s.keysDir, "rollout.key"),
		"AFTERCARE_ADMIN_TOKEN=" + s.token,
		// Tests share brokers: a topic tree and share group of their own.
		"AFTERCARE_TOPIC_PREFIX=aftercare-test-" + randomHex(4) + "/v1",
		"AFTERCARE_SHARE_GROUP=g" + randomHex(4),
		"AFTERCARE_LOG_LEVEL=info",
	}
	if o.brokerURL != "" {
		s.env = append(s.env, "AFTERCARE_BROKER_URL="+o.brokerURL)
		s.deviceBroker = o.brokerURL
	} else {
		b := testenv.FreeAddr(t)
		s.env = append(s.env, "AFTERCARE_EMBEDDED_BROKER_LISTEN="+b)
		s.deviceBroker = "ssl://" + b // the embedded broker takes devices over mutual TLS only
	}
	s.env = append(s.env, o.env...)
	s.launch(t)
	return s
}

// launch starts the server process on s.listen and waits until it answers.
func (s *server) launch(t *testing.T) {
	t.Helper()
	s.proc = start(t, "server-"+randomHex(2)+".log", s.env, "aftercare-server", "-listen", s.listen, "-data-dir", s.dataDir)
	waitFor(t, 30*time.Second, "the server answers /healthz", func() bool {
		res, err := http.Get(s.url + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
}

// restart stops the server and starts it again on the same data directory
// and addresses, with the environment changed by set (KEY=value entries
// replace those of the same key).
func (s *server) restart(t *testing.T, set ...string) {
	t.Helper()
	s.proc.stop()
	for _, kv := range set {
		key, _, _ := strings.Cut(kv, "=")
		for i, old := range s.env {
			if strings.HasPrefix(old, key+"=") {
				s.env = append(s.env[:i], s.env[i+1:]...)
				break
			}
		}
		s.env = append(s.env, kv)
	}
	s.launch(t)
}

// cliEnv is the environment of CLI commands that talk to the server.
func (s *server) cliEnv() []string {
	return []string{"AFTERCARE_SERVER=" + s.url, "AFTERCARE_TOKEN=" + s.token}
}

// runCLI runs the aftercare CLI and returns its standard output.
func runCLI(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out, err := tryCLI(env, args...)
	if err != nil {
		t.Fatalf("aftercare %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func tryCLI(env []string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(bin, "aftercare"), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

// cliJSON runs a CLI command with --json and decodes its output.
func cliJSON(t *testing.T, s *server, out any, args ...string) {
	t.Helper()
	b := runCLI(t, s.cliEnv(), append(args, "--json")...)
	if err := json.Unmarshal([]byte(b), out); err != nil {
		t.Fatalf("aftercare %s --json: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// waitFor polls cond until it holds or the timeout passes. It waits on
// other processes, never to pace the code under test.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type site struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type devicePatch struct {
	ID               string `json:"id"`
	Serial           string `json:"serial"`
	InstalledVersion string `json:"installed_version"`
	State            string `json:"state"`
	StateReason      string `json:"state_reason"`
	Status           string `json:"status"`
	LastSeq          int    `json:"last_seq"`
}

type sitePatch struct {
	Site   site `json:"site"`
	Counts struct {
		Total, Current, Pending, Installing, Failed int
		Versions                                    map[string]int
	} `json:"counts"`
	Devices []devicePatch `json:"devices"`
}

// simDevice is one entry of aftercare-sim's devices file.
type simDevice struct {
	Serial     string `json:"serial"`
	Model      string `json:"model"`
	Version    string `json:"version"`
	Token      string `json:"token,omitempty"`
	FailHealth bool   `json:"fail_health,omitempty"`
}

// fleet is a set of simulated devices, enrolled into sites.
type fleet struct {
	dir, devicesFile string
	sites            map[string]site // by name
	devices          []simDevice
}

// enroll creates the sites and one enrollment token per device; perSite
// maps a site name to its number of devices.
func enroll(t *testing.T, s *server, perSite map[string]int) *fleet {
	t.Helper()
	f := &fleet{dir: t.TempDir(), sites: map[string]site{}}
	i := 0
	for name, n := range perSite {
		var st site
		cliJSON(t, s, &st, "site", "create", name)
		f.sites[name] = st
		var toks struct{ Tokens []string }
		cliJSON(t, s, &toks, "site", "tokens", st.ID, "--count", fmt.Sprint(n))
		for _, tok := range toks.Tokens {
			i++
			f.devices = append(f.devices, simDevice{Serial: fmt.Sprintf("PX1-%04d", i), Model: "pump-x1", Version: "1.0.0", Token: tok})
		}
	}
	f.devicesFile = filepath.Join(f.dir, "devices.json")
	b, _ := json.Marshal(f.devices)
	os.WriteFile(f.devicesFile, b, 0o600)
	return f
}

// runSim starts the simulator for the fleet; brokerURL overrides the
// broker the devices were given at enrollment when not empty.
func runSim(t *testing.T, s *server, f *fleet, brokerURL string, poll time.Duration) *proc {
	t.Helper()
	args := []string{"-server", s.url, "-root", filepath.Join(s.keysDir, "1.root.json"), "-rollout-root", filepath.Join(s.keysDir, "1.rollout-root.json"),
		"-dir", filepath.Join(f.dir, "devices"),
		"-devices", f.devicesFile, "-poll", poll.String(), "-log-level", "debug"}
	if brokerURL != "" {
		args = append(args, "-broker", brokerURL)
	}
	return start(t, "sim-"+randomHex(2)+".log", nil, "aftercare-sim", args...)
}

// publish builds, signs (with the offline targets key) and uploads a
// release through the CLI, and returns its ID.
func publish(t *testing.T, s *server, version string) string {
	t.Helper()
	return publishWithSBOM(t, s, version, "")
}

// publishWithSBOM is publish with the release's SBOM file ("" for none).
func publishWithSBOM(t *testing.T, s *server, version, sbom string) string {
	t.Helper()
	bundle := buildBundle(t, version, sbom)
	signed := filepath.Join(t.TempDir(), "targets.json")
	runCLI(t, nil, "release", "sign", "--bundle", bundle, "--key", filepath.Join(s.keysDir, "targets-release-engineering.key"),
		"--targets", currentTargets(t, s), "-o", signed)
	var rel struct{ ID string }
	cliJSON(t, s, &rel, "release", "upload", "--bundle", bundle, "--targets", signed)
	return rel.ID
}

// buildBundle builds a release bundle of a 2 MiB image, with the SBOM file
// sbom ("" for none), with the CLI.
func buildBundle(t *testing.T, version, sbom string) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "firmware.img")
	raw := make([]byte, 2<<20)
	rand.Read(raw[:1<<20]) // half noise, half zeros: compressible like firmware
	os.WriteFile(img, raw, 0o644)
	bundle := filepath.Join(dir, "bundle.tar")
	build := []string{"release", "build", "--image", img, "--product", "infusion-pump", "--version", version, "--model", "pump-x1", "-o", bundle}
	if sbom != "" {
		build = append(build, "--sbom", sbom)
	}
	runCLI(t, nil, build...)
	return bundle
}

// currentTargets fetches the targets metadata the next release is signed
// on, as a release engineer carries it to the offline machine.
func currentTargets(t *testing.T, s *server) string {
	t.Helper()
	current := filepath.Join(t.TempDir(), "current.json")
	res, err := http.DefaultClient.Do(authGet(t, s, "/api/v1/repository/targets"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusOK {
		f, _ := os.Create(current)
		f.ReadFrom(res.Body)
		f.Close()
	} else {
		copyFile(t, filepath.Join(s.keysDir, "1.targets.json"), current)
	}
	return current
}

func authGet(t *testing.T, s *server, path string) *http.Request {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, s.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	return req
}

func copyFile(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(to, b, 0o644)
}

// summary returns the per-site patch state by site name.
func summary(t *testing.T, s *server) map[string]sitePatch {
	t.Helper()
	var out struct{ Sites []sitePatch }
	cliJSON(t, s, &out, "patch-state")
	m := map[string]sitePatch{}
	for _, sp := range out.Sites {
		m[sp.Site.Name] = sp
	}
	return m
}

// sitePatchState returns one site's patch state with its devices.
func sitePatchState(t *testing.T, s *server, siteID string) sitePatch {
	t.Helper()
	var sp sitePatch
	cliJSON(t, s, &sp, "patch-state", "--site", siteID)
	return sp
}

// httpJSON reads the admin API directly, for what the CLI does not print.
type httpJSON struct{ s *server }

func (h *httpJSON) get(t *testing.T, path string, out any) (int, error) {
	t.Helper()
	res, err := http.DefaultClient.Do(authGet(t, h.s, path))
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	return res.StatusCode, json.NewDecoder(res.Body).Decode(out)
}
