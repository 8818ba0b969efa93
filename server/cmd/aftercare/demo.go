package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"time"

	"github.com/spf13/cobra"

	"github.com/aftercare/aftercare/signing"
)

// demoMarker marks a directory the demo made, so it only ever wipes its own.
const demoMarker = ".aftercare-demo"

type demoOptions struct {
	Dir          string
	Listen       string
	BrokerListen string
	Failing      int
	Exit         bool
}

func demoCmd(e *env) *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole loop on this machine: server, embedded broker, SQLite, simulated devices in two sites, a signed release rolled out",
		Long: `Starts aftercare-server (embedded MQTT broker, SQLite) and aftercare-sim from
the directory of this executable (or PATH), enrolls five simulated infusion
pumps in two sites, builds and signs a release with demo keys, rolls it out
and prints per-site patch state as the devices install, reboot and commit.
The server then stays up for you to try the API until Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return e.demo(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "aftercare-demo", "working directory, recreated on each run")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8080", "server HTTP address")
	f.StringVar(&o.BrokerListen, "broker-listen", "127.0.0.1:1884", "embedded MQTT broker address")
	f.IntVar(&o.Failing, "failing", 0, "number of devices whose health check fails after the update, to show a rollback")
	f.BoolVar(&o.Exit, "exit", false, "exit when the rollout is done instead of keeping the server up")
	return cmd
}

// demoDevices are the simulated pumps: three in one site, two in the other.
var demoSites = []struct {
	name, org string
	devices   int
}{
	{"St. Mary Radiology", "St. Mary Hospital", 3},
	{"Lakeside Cardiology", "Lakeside Clinic", 2},
}

const (
	demoModel   = "pump-x1"
	demoProduct = "infusion-pump"
	demoFrom    = "1.0.0"
	demoTo      = "1.1.0"
)

func (e *env) demo(ctx context.Context, o demoOptions) error {
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(e.stdout, "[%5.1fs] "+format+"\n", append([]any{time.Since(start).Seconds()}, args...)...)
	}
	if err := resetDemoDir(o.Dir); err != nil {
		return err
	}
	keys := filepath.Join(o.Dir, "keys")
	if _, err := signing.InitRepository(ctx, signing.InitOptions{Dir: keys}); err != nil {
		return err
	}
	token := make([]byte, 24)
	rand.Read(token)
	adminToken := "aca_" + hex.EncodeToString(token)
	tokenFile := filepath.Join(o.Dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(adminToken+"\n"), 0o600); err != nil {
		return err
	}
	serverURL := "http://" + o.Listen

	srv, err := e.startChild(ctx, "aftercare-server", filepath.Join(o.Dir, "server.log"),
		[]string{"-listen", o.Listen, "-data-dir", filepath.Join(o.Dir, "server")},
		"AFTERCARE_RELEASE_ROOT="+filepath.Join(keys, signing.RootFile),
		"AFTERCARE_SNAPSHOT_KEY="+filepath.Join(keys, signing.SnapshotKeyFile),
		"AFTERCARE_TIMESTAMP_KEY="+filepath.Join(keys, signing.TimeKeyFile),
		"AFTERCARE_ROLLOUT_ROOT="+filepath.Join(keys, signing.RolloutRootFile),
		"AFTERCARE_ROLLOUT_KEY="+filepath.Join(keys, signing.RolloutKeyFile),
		"AFTERCARE_EMBEDDED_BROKER_LISTEN="+o.BrokerListen,
		"AFTERCARE_ADMIN_TOKEN="+adminToken)
	if err != nil {
		return err
	}
	defer srv.stop()
	if err := waitHealthy(ctx, serverURL, srv); err != nil {
		return err
	}
	say("server up at %s (embedded MQTT broker on %s, mutual TLS with certificates from the server's device CA; SQLite in %s)", serverURL, o.BrokerListen, filepath.Join(o.Dir, "server"))

	c := newClient(serverURL, adminToken)
	devices, err := demoEnrollment(ctx, c, o.Failing)
	if err != nil {
		return err
	}
	devicesFile := filepath.Join(o.Dir, "devices.json")
	if err := writeJSONFile(devicesFile, devices); err != nil {
		return err
	}
	sim, err := e.startChild(ctx, "aftercare-sim", filepath.Join(o.Dir, "devices.log"),
		[]string{"-server", serverURL, "-root", filepath.Join(keys, signing.RootFile), "-rollout-root", filepath.Join(keys, signing.RolloutRootFile),
			"-dir", filepath.Join(o.Dir, "devices"),
			"-devices", devicesFile, "-poll", "30s"})
	if err != nil {
		return err
	}
	defer sim.stop()
	if err := waitEnrolled(ctx, c, len(devices), sim); err != nil {
		return err
	}
	say("%d simulated %s devices enrolled in %d sites, running %s: each made its own key and got a certificate for the broker", len(devices), demoModel, len(demoSites), demoFrom)

	rel, err := e.demoRelease(ctx, c, o.Dir, keys)
	if err != nil {
		return err
	}
	say("release %s %s published: image signed offline with %s, verified and added to the TUF repository",
		rel.Product, rel.Version, demoTargetsKey(keys))
	var rollout struct {
		ID      string   `json:"id"`
		Devices []string `json:"devices"`
	}
	if err := c.postJSON(ctx, "/api/v1/rollouts", map[string]any{"release_id": rel.ID}, &rollout); err != nil {
		return err
	}
	say("rollout %s: %d devices assigned in the rollout repository (signed online; each device fetches only its hash bin), hinted over MQTT", rollout.ID, len(rollout.Devices))

	if err := e.watchRollout(ctx, c, len(devices), o.Failing, say); err != nil {
		return err
	}
	if o.Exit {
		return nil
	}
	fmt.Fprintf(e.stdout, `
The server keeps running at %[1]s; Ctrl-C stops it and the devices.
Web console: %[1]s/console/ (sign in with the token in %[3]s).
Logs: %[2]s/server.log, %[2]s/devices.log. Try:

  export AFTERCARE_TOKEN=$(cat %[3]s)
  curl -s -H "Authorization: Bearer $AFTERCARE_TOKEN" %[1]s/api/v1/patch-state
  ./bin/aftercare patch-state
  ./bin/aftercare patch-state --site <site id from: ./bin/aftercare site list>
`, serverURL, o.Dir, tokenFile)
	select {
	case <-ctx.Done():
	case <-srv.exited:
		return errors.New("the server stopped; see its log")
	}
	return nil
}

// resetDemoDir empties dir if an earlier demo made it, and refuses to touch
// a directory the demo did not make.
func resetDemoDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		if _, err := os.Stat(filepath.Join(dir, demoMarker)); err != nil {
			return fmt.Errorf("%s exists and was not made by the demo; choose another --dir", dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, demoMarker), nil, 0o644)
}

// child is a process the demo started.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startChild runs a sibling binary with its output in logPath.
func (e *env) startChild(ctx context.Context, name, logPath string, args []string, extraEnv ...string) (*child, error) {
	bin, err := findBinary(name)
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), extraEnv...)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(c.exited)
	}()
	return c, nil
}

// stop asks the child to shut down and waits a while for it.
func (c *child) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
	}
}

// findBinary looks next to this executable first, then in PATH.
func findBinary(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found next to this program or in PATH; run `make build` first", name)
	}
	return p, nil
}

func waitHealthy(ctx context.Context, serverURL string, srv *child) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, serverURL+"/healthz", nil)
		if res, err := http.DefaultTransport.RoundTrip(req); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-srv.exited:
			return errors.New("the server exited at start; see its log")
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("the server did not answer /healthz within 30s; see its log")
}

// simDevice is one entry of aftercare-sim's devices file.
type simDevice struct {
	Serial     string `json:"serial"`
	Model      string `json:"model"`
	Version    string `json:"version"`
	Token      string `json:"token"`
	FailHealth bool   `json:"fail_health,omitempty"`
}

func demoEnrollment(ctx context.Context, c *client, failing int) ([]simDevice, error) {
	var devices []simDevice
	for i, s := range demoSites {
		var st site
		if err := c.postJSON(ctx, "/api/v1/sites", map[string]string{"name": s.name, "organisation": s.org}, &st); err != nil {
			return nil, err
		}
		var toks struct {
			Tokens []string `json:"tokens"`
		}
		if err := c.postJSON(ctx, "/api/v1/sites/"+st.ID+"/enrollment-tokens", map[string]int{"count": s.devices}, &toks); err != nil {
			return nil, err
		}
		for j, t := range toks.Tokens {
			devices = append(devices, simDevice{
				Serial: fmt.Sprintf("PX1-%d%03d", i+1, j+1), Model: demoModel, Version: demoFrom, Token: t,
				FailHealth: len(devices) < failing,
			})
		}
	}
	return devices, nil
}

func waitEnrolled(ctx context.Context, c *client, n int, sim *child) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var out struct {
			Devices []device `json:"devices"`
		}
		if err := c.getJSON(ctx, "/api/v1/devices", &out); err != nil {
			return err
		}
		seen := 0
		for _, d := range out.Devices {
			if !d.LastSeen.IsZero() {
				seen++
			}
		}
		if seen == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sim.exited:
			return errors.New("the device simulator exited; see its log")
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("the %d simulated devices did not all report within 60s; see the logs", n)
}

// demoRelease builds an 8 MiB firmware-like image, bundles it, signs it with
// the demo's targets key and uploads it.
func (e *env) demoRelease(ctx context.Context, c *client, dir, keys string) (release, error) {
	img := filepath.Join(dir, "firmware-"+demoTo+".img")
	if err := os.WriteFile(img, demoImage(8<<20), 0o644); err != nil {
		return release{}, err
	}
	bundle := filepath.Join(dir, "bundle-"+demoTo+".tar")
	if _, err := buildBundle(buildOptions{
		Image: img, Output: bundle, Product: demoProduct, Version: demoTo, Models: []string{demoModel},
		Compression: "zstd", Notes: "Demo release: fixes a made-up CVE in the pump's web UI.",
	}); err != nil {
		return release{}, err
	}
	// The first release is signed on the empty targets metadata from
	// `keys init`; later ones on the server's current targets.
	current, err := os.ReadFile(filepath.Join(keys, signing.TargetsFile))
	if err != nil {
		return release{}, err
	}
	signed, _, err := e.sign(ctx, signOptions{Bundle: bundle, Key: demoTargetsKey(keys), Expires: 365 * 24 * time.Hour}, current)
	if err != nil {
		return release{}, err
	}
	var rel release
	err = c.uploadRelease(ctx, bundle, signed, &rel)
	return rel, err
}

// demoTargetsKey is the release key `keys init` makes without named holders.
func demoTargetsKey(keys string) string {
	return filepath.Join(keys, signing.OfflineKeyFile("targets", signing.DefaultTargetsHolder))
}

// demoImage is compressible filler shaped like firmware: runs of zeros,
// repeated tables and some noise.
func demoImage(n int) []byte {
	b := make([]byte, n)
	var x uint64 = 0x9e3779b97f4a7c15
	for i := 0; i < n; i += 4096 {
		x = bits.RotateLeft64(x*0xbf58476d1ce4e5b9, 17)
		switch x % 4 {
		case 0: // zeros
		case 1, 2:
			for j := i; j < i+4096 && j < n; j++ {
				b[j] = byte(j % 251)
			}
		default:
			rand.Read(b[i:min(i+4096, n)])
		}
	}
	return b
}

// watchRollout prints the summary whenever it changes until every device
// ran the new version or failed.
func (e *env) watchRollout(ctx context.Context, c *client, n, failing int, say func(string, ...any)) error {
	var last []sitePatch
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		sites, err := fetchSummary(ctx, c)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(sites, last) {
			say("per-site patch state:")
			printSummary(e.stdout, sites)
			last = sites
		}
		done, failed := 0, 0
		for _, s := range sites {
			done += s.Counts.Versions[demoTo]
			failed += s.Counts.Failed
		}
		if done+failed == n {
			if failed != failing {
				return fmt.Errorf("%d devices failed to install %s; see the reasons with `aftercare patch-state --site <id>` and the logs", failed, demoTo)
			}
			if failing > 0 {
				say("%d devices run %s; %d rolled back to %s after a failed health check", done, demoTo, failed, demoFrom)
			} else {
				say("all %d devices run %s", done, demoTo)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return errors.New("the rollout did not finish within 5 minutes; see the logs")
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
