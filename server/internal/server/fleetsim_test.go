package server

// The fleet simulator benchmark (issue 6): n lightweight simulated devices
// (simdevice_test.go) in sites, a staged rollout to all of them run by the
// real aftercare-server binary as a child process (rollout engine, TUF
// rollout repository, mqttbridge, SQLite store) through the embedded broker
// or Mosquitto, timed from the rollout's creation until the engine logs it
// completed, and compared with the same number of MQTT hint and state
// messages sent raw through the same broker in the same run.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/aftercare/aftercare/internal/testenv"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/config"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/fleet"
	"github.com/aftercare/aftercare/server/internal/store"
)

const (
	simModel       = "pump-x1"
	simFromVersion = "1.0.0"
	simToVersion   = "1.1.0"
	// simTick is the rollout scheduler's tick in the benchmark: with zero
	// soak, a wave opens on the first tick after the previous one settled.
	simTick = 250 * time.Millisecond
)

// simBinaries builds aftercare-server and the aftercare CLI once per test
// binary, without -race: the benchmark measures the server as shipped.
var simBinaries = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "aftercare-fleetsim-bin")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/aftercare-server", "../../cmd/aftercare")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return dir, nil
})

func TestMain(m *testing.M) {
	if os.Getenv(simBrokerEnv) != "" {
		os.Exit(runSimBroker())
	}
	code := m.Run()
	if dir, err := simBinaries(); err == nil && dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// simEnv is one benchmark run's keys, data directory and server settings.
type simEnv struct {
	bin, dir, keys, data string
	token, listen, url   string
	env                  []string // the server's AFTERCARE_* settings
	cfg                  config.Config
	ca                   *deviceca.CA
	fleet                simFleet
	server               *exec.Cmd
	serverLog            string
	exited               chan struct{}
}

func newSimEnv(tb testing.TB, brokerURL string, extra ...string) *simEnv {
	tb.Helper()
	bin, err := simBinaries()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	e := &simEnv{bin: bin, dir: dir, keys: filepath.Join(dir, "keys"), data: filepath.Join(dir, "data"),
		token: "aca_fleetsim" + strconv.FormatInt(time.Now().UnixNano(), 16), listen: testenv.FreeAddr(tb)}
	e.url = "http://" + e.listen
	e.cli(tb, "keys", "init", "--dir", e.keys)
	e.env = []string{
		"AFTERCARE_RELEASE_ROOT=" + filepath.Join(e.keys, "1.root.json"),
		"AFTERCARE_SNAPSHOT_KEY=" + filepath.Join(e.keys, "snapshot.key"),
		"AFTERCARE_TIMESTAMP_KEY=" + filepath.Join(e.keys, "timestamp.key"),
		"AFTERCARE_ROLLOUT_ROOT=" + filepath.Join(e.keys, "1.rollout-root.json"),
		"AFTERCARE_ROLLOUT_KEY=" + filepath.Join(e.keys, "rollout.key"),
		"AFTERCARE_ADMIN_TOKEN=" + e.token,
		"AFTERCARE_ROLLOUT_TICK=" + simTick.String(),
		"AFTERCARE_LOG_LEVEL=info",
		"AFTERCARE_LISTEN=" + e.listen,
		"AFTERCARE_DATA_DIR=" + e.data,
	}
	if brokerURL != "" {
		e.env = append(e.env, "AFTERCARE_BROKER_URL="+brokerURL,
			"AFTERCARE_BROKER_CA_FILE="+filepath.Join(e.data, "device-ca.pem"),
			"AFTERCARE_BROKER_CLIENT_CERT="+filepath.Join(dir, "server.pem"),
			"AFTERCARE_BROKER_CLIENT_KEY="+filepath.Join(dir, "server.key"))
	} else {
		e.env = append(e.env, "AFTERCARE_EMBEDDED_BROKER_LISTEN="+testenv.FreeAddr(tb))
	}
	e.env = append(e.env, extra...)
	vars := map[string]string{}
	for _, kv := range e.env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	if e.cfg, err = config.Load(nil, func(k string) string { return vars[k] }); err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(e.data, 0o750); err != nil {
		tb.Fatal(err)
	}
	if e.ca, err = deviceca.Open(e.data, "", "", time.Now()); err != nil {
		tb.Fatal(err)
	}
	return e
}

// cli runs the aftercare CLI against the server and returns its output.
func (e *simEnv) cli(tb testing.TB, args ...string) []byte {
	tb.Helper()
	cmd := exec.Command(filepath.Join(e.bin, "aftercare"), args...)
	cmd.Env = append(os.Environ(), "AFTERCARE_SERVER="+e.url, "AFTERCARE_TOKEN="+e.token)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("aftercare %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// withFleet opens the store and the fleet service the server will use.
func (e *simEnv) withFleet(tb testing.TB, f func(*store.Store, *fleet.Service)) {
	tb.Helper()
	st, err := store.Open(context.Background(), string(e.cfg.DatabaseURL))
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	fl, err := fleet.New(fleet.Options{Store: st, Log: slog.New(slog.DiscardHandler), CA: e.ca,
		CRLPath: filepath.Join(e.data, deviceca.CRLFile)})
	if err != nil {
		tb.Fatal(err)
	}
	f(st, fl)
}

// enroll creates the sites and enrolls n devices spread over them, each
// with its own key and a certificate from fleet.Service.Enroll, and writes
// the CRL an external broker reads.
func (e *simEnv) enroll(tb testing.TB, n, sites int) {
	tb.Helper()
	e.withFleet(tb, func(_ *store.Store, fl *fleet.Service) {
		ctx := context.Background()
		type job struct {
			d        *simDevice
			req      protocol.EnrollRequest
			keyBytes []byte
		}
		var jobs []job
		for s := range sites {
			site, err := fl.CreateSite(ctx, fmt.Sprintf("Site %02d", s), fmt.Sprintf("Hospital %02d", s))
			if err != nil {
				tb.Fatal(err)
			}
			per := n/sites + btoi(s < n%sites)
			for lo := 0; lo < per; lo += 1000 {
				toks, _, err := fl.CreateEnrollmentTokens(ctx, site.ID, min(1000, per-lo))
				if err != nil {
					tb.Fatal(err)
				}
				for _, tok := range toks {
					id := fmt.Sprintf("pump-%05d", len(jobs))
					d, key, csr, err := newSimDevice(id)
					if err != nil {
						tb.Fatal(err)
					}
					der, _ := x509.MarshalECPrivateKey(key)
					jobs = append(jobs, job{d: d, keyBytes: der, req: protocol.EnrollRequest{Token: tok, DeviceID: id, Serial: id,
						Model: simModel, InstalledVersion: simFromVersion, CSR: csr}})
				}
			}
		}
		var wg sync.WaitGroup
		errc := make(chan error, len(jobs))
		sem := make(chan struct{}, 4)
		for _, j := range jobs {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				res, err := fl.Enroll(ctx, j.req)
				if err != nil {
					errc <- err
					return
				}
				keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: j.keyBytes})
				if j.d.cert, err = tls.X509KeyPair([]byte(res.Certificate), keyPEM); err != nil {
					errc <- err
				}
			}()
		}
		wg.Wait()
		close(errc)
		if err := <-errc; err != nil {
			tb.Fatal(err)
		}
		if err := fl.WriteCRL(ctx); err != nil {
			tb.Fatal(err)
		}
		for _, j := range jobs {
			e.fleet.devices = append(e.fleet.devices, j.d)
		}
	})
	e.fleet.errs = make(chan error, len(e.fleet.devices)+1)
	if err := os.WriteFile(filepath.Join(e.data, "device-ca.pem"), e.ca.CertificatePEM(), 0o644); err != nil {
		tb.Fatal(err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// issueFiles writes a certificate from the device CA and its key as PEM.
func (e *simEnv) issueFiles(tb testing.TB, cn string, usage x509.ExtKeyUsage, hosts []string, certPath, keyPath string) {
	tb.Helper()
	c, err := serviceCert(e.ca, cn, usage, hosts)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		tb.Fatal(err)
	}
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// startServer runs aftercare-server and waits until it answers.
func (e *simEnv) startServer(tb testing.TB) {
	tb.Helper()
	e.serverLog = filepath.Join(e.dir, "server.log")
	f, err := os.Create(e.serverLog)
	if err != nil {
		tb.Fatal(err)
	}
	e.server = exec.Command(filepath.Join(e.bin, "aftercare-server"))
	e.server.Env = append(os.Environ(), e.env...)
	e.server.Stdout, e.server.Stderr = f, f
	if err := e.server.Start(); err != nil {
		tb.Fatal(err)
	}
	e.exited = make(chan struct{})
	go func() { e.server.Wait(); f.Close(); close(e.exited) }()
	tb.Cleanup(func() { e.stopServer(tb) })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if res, err := http.Get(e.url + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-e.exited:
			tb.Fatalf("aftercare-server exited at start:\n%s", e.logTail())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("aftercare-server does not answer /healthz:\n%s", e.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *simEnv) stopServer(tb testing.TB) {
	if e.server == nil {
		return
	}
	testenv.Stop(e.server.Process, e.exited, os.Interrupt, 20*time.Second)
	if tb.Failed() {
		tb.Logf("--- server log (tail) ---\n%s", e.logTail())
	}
	e.server = nil
}

func (e *simEnv) logTail() string {
	b, _ := os.ReadFile(e.serverLog)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-60):], "\n")
}

// procStatus returns a field of /proc/<pid>/status in MiB ("VmHWM", "VmRSS").
func procStatus(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// procCPU returns the CPU time (user and system) a process has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 12th and 13th of them, in
	// clock ticks (USER_HZ, 100 on Linux).
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// profileSim writes a CPU profile of this process (the simulated devices)
// to $AFTERCARE_FLEETSIM_LOGS/name.pprof until the returned function is
// called, when that variable is set. (The server's own profile:
// AFTERCARE_PPROF_LISTEN, see docs/configuration.md.)
func profileSim(tb testing.TB, name string) func() {
	dir := os.Getenv("AFTERCARE_FLEETSIM_LOGS")
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		tb.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		tb.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// cpuUse is the CPU time two processes used over a span: this test
// process (the simulated devices) and another (the server or a broker).
type cpuUse struct{ self, other time.Duration }

// cpuSince returns the CPU time used since from, which is what cpuSince
// returned for the same pid with a zero from.
func cpuSince(tb testing.TB, pid int, from cpuUse) cpuUse {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	other, err := procCPU(pid)
	if err != nil {
		tb.Fatal(err)
	}
	self := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpuUse{self: self - from.self, other: other - from.other}
}

// publishRelease builds, signs (offline targets key) and uploads a release
// of a small image through the CLI, and returns its ID and target path.
func (e *simEnv) publishRelease(tb testing.TB) (string, string) {
	tb.Helper()
	img := filepath.Join(e.dir, "firmware.img")
	os.WriteFile(img, bytes.Repeat([]byte("aftercare fleet benchmark image\n"), 2048), 0o644)
	bundle := filepath.Join(e.dir, "bundle.tar")
	e.cli(tb, "release", "build", "--image", img, "--product", "infusion-pump", "--version", simToVersion, "--model", simModel, "-o", bundle)
	signed := filepath.Join(e.dir, "targets.json")
	e.cli(tb, "release", "sign", "--bundle", bundle, "--key", filepath.Join(e.keys, "targets-release-engineering.key"),
		"--targets", filepath.Join(e.keys, "1.targets.json"), "-o", signed)
	var rel struct {
		ID         string `json:"id"`
		TargetPath string `json:"target_path"`
	}
	if err := json.Unmarshal(e.cli(tb, "release", "upload", "--bundle", bundle, "--targets", signed, "--json"), &rel); err != nil || rel.ID == "" || rel.TargetPath == "" {
		tb.Fatalf("release upload: %v %+v", err, rel)
	}
	return rel.ID, rel.TargetPath
}

// createRollout creates a staged rollout of the release to every device:
// a canary of 10, then 1 %, 10 %, 50 %, 100 %, no soak.
func (e *simEnv) createRollout(tb testing.TB, releaseID string) string {
	tb.Helper()
	body, _ := json.Marshal(map[string]any{"release_id": releaseID, "cohort": map[string]any{}, "canary": 10,
		"waves": []float64{1, 10, 50, 100}, "soak": "0s", "reason": "fleet simulator benchmark"})
	req, _ := http.NewRequest(http.MethodPost, e.url+"/api/v1/rollouts", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	var out struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || res.StatusCode != http.StatusCreated && res.StatusCode != http.StatusOK || out.ID == "" {
		tb.Fatalf("create rollout: %s %v", res.Status, err)
	}
	return out.ID
}

// waitCompleted follows the server log until the engine logs the rollout
// completed, and returns how many devices succeeded.
func (e *simEnv) waitCompleted(ctx context.Context, rolloutID string) (int, error) {
	f, err := os.Open(e.serverLog)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var partial string
	for {
		line, err := r.ReadString('\n')
		if err == nil {
			line = partial + line
			partial = ""
			if strings.Contains(line, `msg="rollout completed"`) && strings.Contains(line, "rollout_id="+rolloutID) {
				_, after, _ := strings.Cut(line, "succeeded=")
				n, _ := strconv.Atoi(strings.Fields(after)[0])
				return n, nil
			}
			if strings.Contains(line, `msg="rollout halted"`) {
				return 0, errors.New("the rollout halted: " + line)
			}
			continue
		}
		partial += line
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("rollout %s not completed: %w", rolloutID, ctx.Err())
		case <-e.exited:
			return 0, errors.New("aftercare-server exited")
		case err := <-e.fleet.errs:
			return 0, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rawBaseline sends the messages of the rollout raw through the broker at
// brokerURL: a client with the server's identity publishes one hint per
// device (QoS 1, pipelined), each device answers with the state reports
// of an install (QoS 1, one after the other), and the client receives
// them on the server's shared subscription, acknowledging at once. It
// returns the time from the first hint to the last report received.
// The devices connect to it once that client has subscribed.
// brokerPID is the broker's process, for its CPU time.
func (e *simEnv) rawBaseline(tb testing.TB, brokerURL string, clientTLS *tls.Config, brokerPID int) (time.Duration, cpuUse) {
	tb.Helper()
	want := int64(len(e.fleet.devices) * len(simStates))
	var got atomic.Int64
	done := make(chan struct{})
	srv := paho.NewClient(paho.NewClientOptions().AddBroker(brokerURL).SetClientID("fleetsim-raw-server").
		SetTLSConfig(clientTLS).SetCleanSession(true).SetAutoReconnect(false).SetOrderMatters(false))
	if t := srv.Connect(); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
		tb.Fatalf("raw server client: connect: %v", t.Error())
	}
	defer srv.Disconnect(0)
	filter := "$share/fleetsim-raw/" + protocol.DeviceWildcard(protocol.DefaultTopicPrefix, protocol.KindState)
	if t := srv.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		if got.Add(1) == want {
			close(done)
		}
	}); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
		tb.Fatalf("raw server client: subscribe: %v", t.Error())
	}
	// Devices connect once the server's client has subscribed, as they do
	// to the server's own embedded broker.
	if err := e.fleet.connectAll(brokerURL, e.ca.Pool()); err != nil {
		tb.Fatal(err)
	}
	e.fleet.setAction(func(ctx context.Context, d *simDevice) error {
		return d.install(ctx, simFromVersion, "raw/target", simToVersion)
	})
	hint, _ := json.Marshal(protocol.Hint{Format: protocol.Format, Time: time.Now().UTC(), Reason: "raw"})
	cpu0 := cpuSince(tb, brokerPID, cpuUse{})
	start := time.Now()
	toks := make([]paho.Token, len(e.fleet.devices))
	for i, d := range e.fleet.devices {
		toks[i] = srv.Publish(protocol.DeviceTopic(protocol.DefaultTopicPrefix, d.id, protocol.KindHint), 1, false, hint)
	}
	for _, t := range toks {
		if !t.WaitTimeout(5*time.Minute) || t.Error() != nil {
			tb.Fatalf("raw hint: %v", t.Error())
		}
	}
	select {
	case <-done:
	case err := <-e.fleet.errs:
		tb.Fatal(err)
	case <-time.After(10 * time.Minute):
		tb.Fatalf("raw baseline: %d of %d state messages received", got.Load(), want)
	}
	return time.Since(start), cpuSince(tb, brokerPID, cpu0)
}

// serverClientTLS writes the server's client certificate for an external
// broker (server.pem, server.key) and returns the TLS configuration of a
// client with the server's identity.
func (e *simEnv) serverClientTLS(tb testing.TB) *tls.Config {
	tb.Helper()
	certPath, keyPath := filepath.Join(e.dir, "server.pem"), filepath.Join(e.dir, "server.key")
	e.issueFiles(tb, deviceca.ServerCN, x509.ExtKeyUsageClientAuth, nil, certPath, keyPath)
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{c}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// simBrokerEnv makes the test binary run the embedded broker alone
// (runSimBroker) instead of the tests.
const simBrokerEnv = "AFTERCARE_FLEETSIM_BROKER"

// startSimBroker runs the embedded broker for e's configuration in a
// child process and returns its URL, its process ID and a function that
// stops it.
func (e *simEnv) startSimBroker(tb testing.TB) (string, int, func()) {
	tb.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), e.env...), simBrokerEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		tb.Fatalf("embedded broker process: %v", err)
	}
	stop := sync.OnceFunc(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	tb.Cleanup(stop)
	return strings.TrimSpace(line), cmd.Process.Pid, stop
}

// runSimBroker is the child process of startSimBroker: the embedded broker
// as startEmbeddedBroker starts it for the AFTERCARE_* configuration in
// the environment, checking devices against the store, until SIGINT. It
// prints the broker's URL when it listens.
func runSimBroker() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "embedded broker:", err); return 1 }
	cfg, err := config.Load(nil, os.Getenv)
	if err != nil {
		return fail(err)
	}
	ca, err := deviceca.Open(cfg.DataDir, "", "", time.Now())
	if err != nil {
		return fail(err)
	}
	st, err := store.Open(context.Background(), string(cfg.DatabaseURL))
	if err != nil {
		return fail(err)
	}
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	fl, err := fleet.New(fleet.Options{Store: st, Log: log, CA: ca})
	if err != nil {
		return fail(err)
	}
	b, _, err := startEmbeddedBroker(cfg, ca, fl, log)
	if err != nil {
		return fail(err)
	}
	defer b.Close()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	fmt.Println(b.URL())
	<-ctx.Done()
	return 0
}

// simResult is one run's figures.
type simResult struct {
	rollout, raw time.Duration
	// rolloutCPU.other is the server's, rawCPU.other the broker's; with
	// Mosquitto the rollout's broker CPU is not counted.
	rolloutCPU, rawCPU cpuUse
	serverHWM          float64 // MiB
	brokerHWM          float64 // MiB, external broker only
}

// runFleetRollout runs the whole benchmark once against the embedded
// broker (brokerKind "embedded") or a Mosquitto it starts ("mosquitto").
func runFleetRollout(tb testing.TB, devices, sites int, brokerKind string) simResult {
	tb.Helper()
	var res simResult
	var e *simEnv
	var mosq *mosquittoProc
	switch brokerKind {
	case "embedded":
		e = newSimEnv(tb, "")
		e.enroll(tb, devices, sites)
		// The baseline runs through the broker the server embeds, started
		// by the same function with the same configuration, in a process of
		// its own (this test binary, see runSimBroker).
		url, pid, stop := e.startSimBroker(tb)
		res.raw, res.rawCPU = e.rawBaseline(tb, url, e.serverClientTLS(tb), pid)
		e.fleet.disconnectAll()
		stop()
	case "mosquitto":
		m := startMosquitto(tb)
		mosq = m
		e = newSimEnv(tb, "ssl://"+m.addr)
		e.enroll(tb, devices, sites)
		m.configure(tb, e)
		res.raw, res.rawCPU = e.rawBaseline(tb, "ssl://"+m.addr, e.serverClientTLS(tb), m.cmd.Process.Pid)
	default:
		tb.Fatalf("unknown broker %q", brokerKind)
	}

	e.startServer(tb)
	relID, target := e.publishRelease(tb)
	brokerURL := e.cfg.DeviceBrokerURL
	if brokerKind == "embedded" {
		e.fleet.disconnectAll()
		if err := e.fleet.connectAll(brokerURL, e.ca.Pool()); err != nil {
			tb.Fatal(err)
		}
	}
	repo := newRolloutRepo(e.url)
	e.fleet.setAction(func(ctx context.Context, d *simDevice) error {
		got, err := repo.entry(ctx, d.id)
		if err != nil {
			return err
		}
		if got != target {
			return fmt.Errorf("assigned %q, want %q", got, target)
		}
		return d.install(ctx, simFromVersion, target, simToVersion)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	stopProfile := profileSim(tb, "rollout-"+brokerKind)
	cpu0 := cpuSince(tb, e.server.Process.Pid, cpuUse{})
	start := time.Now()
	id := e.createRollout(tb, relID)
	succeeded, err := e.waitCompleted(ctx, id)
	res.rollout = time.Since(start)
	res.rolloutCPU = cpuSince(tb, e.server.Process.Pid, cpu0)
	stopProfile()
	if err != nil {
		tb.Fatal(err)
	}
	if succeeded != devices {
		tb.Fatalf("rollout completed with %d of %d devices succeeded", succeeded, devices)
	}
	if d := os.Getenv("AFTERCARE_FLEETSIM_LOGS"); d != "" {
		b, _ := os.ReadFile(e.serverLog)
		os.WriteFile(filepath.Join(d, brokerKind+"-server.log"), b, 0o644)
	}
	if res.serverHWM, err = procStatus(e.server.Process.Pid, "VmHWM"); err != nil {
		tb.Fatal(err)
	}
	if mosq != nil {
		if res.brokerHWM, err = procStatus(mosq.cmd.Process.Pid, "VmHWM"); err != nil {
			tb.Fatal(err)
		}
	}
	e.fleet.disconnectAll()
	return res
}

// TestFleetRolloutSmoke runs the fleet benchmark with 50 devices in 5
// sites against the embedded broker and Mosquitto, to show it works; `make bench` runs
// it with 10,000 (BenchmarkFleetRollout).
func TestFleetRolloutSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs aftercare-server")
	}
	for _, kind := range []string{"embedded", "mosquitto"} {
		t.Run(kind, func(t *testing.T) {
			r := runFleetRollout(t, 50, 5, kind)
			t.Logf("50 devices: rollout %s, raw baseline %s, server VmHWM %.0f MiB", r.rollout, r.raw, r.serverHWM)
		})
	}
}

// BenchmarkFleetRollout is issue 6's fleet simulator benchmark: 10,000
// simulated devices in 50 sites, a rollout to all of them in waves (canary
// 10, 1 %, 10 %, 50 %, 100 %) with zero soak, until every device has
// committed, against the embedded broker and against Mosquitto
// (set_tcp_nodelay true, the shipped deploy/mosquitto configuration).
// It reports the rollout's time as a ratio to the raw message baseline
// measured in the same run ("x_raw"; goal ≤ 3) and the server process's
// peak RSS ("server_MiB", VmHWM of the aftercare-server child process;
// goal < 500; with the embedded broker it includes the broker).
//
// AFTERCARE_FLEETSIM_DEVICES sets another device count (default 10,000;
// the goal is for 10,000), for quicker runs while profiling.
func BenchmarkFleetRollout(b *testing.B) {
	n := simDeviceCount(b, 10_000)
	for _, kind := range []string{"embedded", "mosquitto"} {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				r := runFleetRollout(b, n, 50, kind)
				b.ReportMetric(r.rollout.Seconds()/r.raw.Seconds(), "x_raw")
				b.ReportMetric(r.rollout.Seconds(), "rollout_s")
				b.ReportMetric(r.raw.Seconds(), "raw_s")
				b.ReportMetric(r.serverHWM, "server_MiB")
				b.ReportMetric(r.rolloutCPU.other.Seconds(), "server_cpu_s")
				b.ReportMetric(r.rolloutCPU.self.Seconds(), "sim_cpu_s")
				b.ReportMetric(r.rawCPU.other.Seconds(), "raw_broker_cpu_s")
				b.ReportMetric(r.rawCPU.self.Seconds(), "raw_sim_cpu_s")
				if r.brokerHWM > 0 {
					b.ReportMetric(r.brokerHWM, "mosquitto_MiB")
				}
			}
		})
	}
}

// simDeviceCount is AFTERCARE_FLEETSIM_DEVICES, or def when unset.
func simDeviceCount(tb testing.TB, def int) int {
	v := os.Getenv("AFTERCARE_FLEETSIM_DEVICES")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 50 {
		tb.Fatalf("AFTERCARE_FLEETSIM_DEVICES=%q: want a number of devices, at least 50 (one per site)", v)
	}
	return n
}

// BenchmarkIdleDevices connects 5,000 simulated devices to the server's
// embedded broker and reports the server process's resident memory once
// they are all connected and idle ("server_MiB", VmRSS of the
// aftercare-server child process; goal ≤ 150 MB) and per device
// ("KiB/device", the growth over the server before they connected).
// AFTERCARE_FLEETSIM_DEVICES sets another device count (default 5,000).
func BenchmarkIdleDevices(b *testing.B) {
	n := simDeviceCount(b, 5000)
	for range b.N {
		e := newSimEnv(b, "")
		e.enroll(b, n, 50)
		e.startServer(b)
		time.Sleep(2 * time.Second) // let the start settle before the reading
		before, err := procStatus(e.server.Process.Pid, "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		e.fleet.setAction(func(context.Context, *simDevice) error { return nil })
		if err := e.fleet.connectAll(e.cfg.DeviceBrokerURL, e.ca.Pool()); err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Second) // idle
		after, err := procStatus(e.server.Process.Pid, "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(after, "server_MiB")
		b.ReportMetric((after-before)*1024/float64(n), "KiB/device")
		e.fleet.disconnectAll()
		e.stopServer(b)
	}
}

// mosquittoProc is a Mosquitto started for the benchmark.
type mosquittoProc struct {
	bin, addr, dir string
	cmd            *exec.Cmd
}

// shippedMosquittoConf is the configuration the benchmark runs Mosquitto
// with, paths and port rewritten.
const shippedMosquittoConf = "../../../deploy/mosquitto/aftercare-mtls.conf"

func startMosquitto(tb testing.TB) *mosquittoProc {
	tb.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		testenv.Missing(tb, "mosquitto is not installed; install it with: apt-get install mosquitto")
	}
	return &mosquittoProc{bin: bin, addr: testenv.FreeAddr(tb), dir: tb.TempDir()}
}

// configure writes the broker's certificate and configuration for e's
// device CA and starts Mosquitto.
func (m *mosquittoProc) configure(tb testing.TB, e *simEnv) {
	tb.Helper()
	e.issueFiles(tb, "mosquitto", x509.ExtKeyUsageServerAuth, []string{"127.0.0.1"}, filepath.Join(m.dir, "broker.pem"), filepath.Join(m.dir, "broker.key"))
	os.WriteFile(filepath.Join(m.dir, "device-ca.pem"), e.ca.CertificatePEM(), 0o644)
	acl, err := os.ReadFile("../../../deploy/mosquitto/aftercare.acl")
	if err != nil {
		tb.Fatal(err)
	}
	os.WriteFile(filepath.Join(m.dir, "aftercare.acl"), acl, 0o644)
	b, err := os.ReadFile(shippedMosquittoConf)
	if err != nil {
		tb.Fatal(err)
	}
	conf := string(b)
	host, port, _ := net.SplitHostPort(m.addr)
	for old, repl := range map[string]string{
		"listener 8883\n":                            "listener " + port + " " + host + "\n",
		"/etc/mosquitto/aftercare/":                  m.dir + "/",
		"/var/lib/aftercare/":                        e.data + "/",
		"persistence true\n":                         "persistence false\n",
		"persistence_location /var/lib/mosquitto/\n": "",
	} {
		if !strings.Contains(conf, old) {
			tb.Fatalf("%s no longer holds %q", shippedMosquittoConf, old)
		}
		conf = strings.ReplaceAll(conf, old, repl)
	}
	if !strings.Contains(conf, "\nset_tcp_nodelay true") {
		tb.Fatalf("%s does not set set_tcp_nodelay true", shippedMosquittoConf)
	}
	if u, err := user.Current(); err == nil && u.Uid == "0" {
		conf += "user root\n" // else Mosquitto drops to a user that cannot read the test directory
	}
	confPath := filepath.Join(m.dir, "mosquitto.conf")
	os.WriteFile(confPath, []byte(conf), 0o644)
	logf, err := os.Create(filepath.Join(m.dir, "mosquitto.log"))
	if err != nil {
		tb.Fatal(err)
	}
	m.cmd = exec.Command(m.bin, "-c", confPath)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	if err := m.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { m.cmd.Wait(); logf.Close(); close(exited) }()
	tb.Cleanup(func() { testenv.Stop(m.cmd.Process, exited, syscall.SIGTERM, 10*time.Second) })
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", m.addr, time.Second); err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(m.dir, "mosquitto.log"))
			tb.Fatalf("mosquitto exited at start:\n%s", out)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatal("mosquitto does not accept connections on " + m.addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
