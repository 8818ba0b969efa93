package e2e

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to read the test's database
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/aftercare/aftercare/internal/testenv"
	"github.com/aftercare/aftercare/protocol"
)

// replica starts a second server process next to s: the same keys,
// database, repository directory and broker, a data directory and
// address of its own, and env on top.
func (s *server) replica(t *testing.T, env ...string) *server {
	t.Helper()
	r := *s
	r.dataDir = filepath.Join(t.TempDir(), "data")
	r.listen = testenv.FreeAddr(t)
	r.url = "http://" + r.listen
	r.env = append(slices.Clone(s.env), env...)
	r.launch(t)
	return &r
}

// tufWatcher refreshes a repository as one device would, from whichever
// replica it is pointed at, keeping its trusted metadata across refreshes:
// go-tuf refuses any version that goes backwards.
type tufWatcher struct {
	root  []byte
	cache string
	path  string // the repository under the server URL, e.g. "/tuf/rollout"

	mu        sync.Mutex
	timestamp int64 // the newest timestamp version seen
}

func newTUFWatcher(t *testing.T, rootFile, path string) *tufWatcher {
	t.Helper()
	root, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	return &tufWatcher{root: root, cache: t.TempDir(), path: path}
}

// refresh updates from serverURL and returns the entries of the given
// target paths (nil for those no role lists).
func (w *tufWatcher) refresh(serverURL string, targetPaths ...string) (map[string]bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	base := serverURL + w.path
	cfg, err := config.New(base+"/metadata", w.root)
	if err != nil {
		return nil, err
	}
	cfg.LocalMetadataDir = w.cache
	cfg.LocalTargetsDir = filepath.Join(w.cache, "targets")
	cfg.RemoteTargetsURL = base + "/targets"
	up, err := updater.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := up.Refresh(); err != nil {
		return nil, fmt.Errorf("refresh from %s: %w", serverURL, err)
	}
	v := up.GetTrustedMetadataSet().Timestamp.Signed.Version
	if v < w.timestamp {
		return nil, fmt.Errorf("timestamp v%d from %s after v%d", v, serverURL, w.timestamp)
	}
	w.timestamp = v
	found := map[string]bool{}
	for _, p := range targetPaths {
		if _, err := up.GetTargetInfo(p); err == nil {
			found[p] = true
		}
	}
	return found, nil
}

// eventView is the part of a rollout's view the replica test reads.
type eventView struct {
	Status  string         `json:"status"`
	Wave    int            `json:"wave"`
	Steps   []int          `json:"steps"`
	Counts  map[string]int `json:"counts"`
	Devices []string       `json:"devices"`
	Cohort  []struct {
		DeviceID string `json:"device_id"`
	} `json:"cohort"`
	Events []rolloutEvent `json:"events"`
}

type rolloutEvent struct {
	Key    string `json:"key"`
	Kind   string `json:"kind"`
	SiteID string `json:"site_id"`
}

// has reports whether the rollout recorded an event of the given key, or
// of the given kind when key is "".
func (v eventView) has(key, kind string) bool {
	return slices.ContainsFunc(v.Events, func(e rolloutEvent) bool {
		return (key == "" || e.Key == key) && (kind == "" || e.Kind == kind)
	})
}

// loggedEvents counts, across the servers' logs, the rollout events each
// committed step logged, by kind.
func loggedEvents(t *testing.T, procs ...*proc) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, p := range procs {
		b, err := os.ReadFile(p.log)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `msg="rollout event"`) {
				continue
			}
			_, kind, _ := strings.Cut(line, " kind=")
			kind, _, _ = strings.Cut(kind, " ")
			out[kind]++
		}
	}
	return out
}

// TestReplicasShareScheduledWork runs two aftercare-server processes on
// one PostgreSQL schema, one repository directory, one device CA and
// Mosquitto. A rollout with three waves and zero soak is created through
// replica A, which holds the scheduler lease; a site defers the patch
// shortly. A is killed (SIGKILL, no goodbye) once the second wave opened;
// B takes the lease over after its TTL, ends the deferral and, once A is
// back as a follower (to hand over the reports the broker queued for its
// session), finishes. Each wave opens once, the deferral's reminder and
// end are recorded once, devices (served by B) and a TUF client reading
// from both replicas see one consistent repository whose versions only
// increase.
func TestReplicasShareScheduledWork(t *testing.T) {
	testenv.Need(t, "Mosquitto", "127.0.0.1:1883", "mosquitto -d -c /etc/mosquitto/mosquitto.conf")
	dbURL := testenv.PostgresSchema(t)
	shared := t.TempDir()
	a := startServer(t, serverOptions{brokerURL: "tcp://127.0.0.1:1883", env: []string{
		"AFTERCARE_DATABASE_URL=" + dbURL,
		"AFTERCARE_REPOSITORY_DIR=" + shared,
		"AFTERCARE_ROLLOUT_TICK=200ms",
		"AFTERCARE_ROLLOUT_LEASE_TTL=3s",
		"AFTERCARE_DEFERRAL_REMINDER=1h",
	}})
	b := a.replica(t,
		"AFTERCARE_DEVICE_CA_CERT="+filepath.Join(a.dataDir, "device-ca.pem"),
		"AFTERCARE_DEVICE_CA_KEY="+filepath.Join(a.dataDir, "device-ca.key"))
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for name, p := range map[string]*proc{"A": a.proc, "B": b.proc} { // A after its restart
			raw, _ := os.ReadFile(p.log)
			var lines []string
			for _, l := range strings.Split(string(raw), "\n") {
				if !strings.Contains(l, "http request") {
					lines = append(lines, l)
				}
			}
			t.Logf("--- replica %s, without its requests ---\n%s", name, tail([]byte(strings.Join(lines, "\n")), 150))
		}
	})
	holder := func() string {
		db, err := sql.Open("pgx", dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var h string
		if err := db.QueryRow(`SELECT holder FROM leases WHERE name = 'rollout.scheduler'`).Scan(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	instance := func(s *server) string {
		id, err := os.ReadFile(filepath.Join(s.dataDir, "instance-id"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(id))
	}
	if h := holder(); h != instance(a) {
		t.Fatalf("scheduler lease held by %q, want replica A (%s), which started first", h, instance(a))
	}

	// Tokens made through A; the devices enroll, fetch and renew through B.
	f := enroll(t, a, map[string]int{"North ICU": 6, "Lakeside Cardiology": 1})
	lakeside := f.sites["Lakeside Cardiology"].ID
	runCLI(t, a.cliEnv(), "site", "policy", "set", lakeside, "--approval", "approval", "--reason", "change board")
	runSim(t, b, f, "", 2*time.Second)
	waitReported(t, b, f)
	rel := publish(t, a, "1.1.0")
	if got := runCLI(t, b.cliEnv(), "release", "list"); !strings.Contains(got, "1.1.0") {
		t.Fatalf("replica B does not list the release published through A:\n%s", got)
	}

	rolloutTUF := newTUFWatcher(t, filepath.Join(a.keysDir, "1.rollout-root.json"), "/tuf/rollout")
	releaseTUF := newTUFWatcher(t, filepath.Join(a.keysDir, "1.root.json"), "/tuf/release")
	var ro struct{ ID string }
	cliJSON(t, a, &ro, "rollout", "create", "--release", rel, "--canary", "1", "--waves", "50,100", "--soak", "0s",
		"--severity", "high", "--reason", "fixes CVE-2026-0001")
	runCLI(t, a.cliEnv(), "defer", lakeside, ro.ID, "--until", "12s", "--reason", "theatre busy")
	show := func(s *server) eventView {
		var v eventView
		cliJSON(t, s, &v, "rollout", "show", ro.ID)
		return v
	}
	// Read the repositories from the replicas in turn, as one device that
	// is sent to either: every state verifies, no version goes back. It
	// returns whether each serves every assignment the rollout made (an
	// assignment is published just after it is committed).
	check := func(servers ...*server) bool {
		t.Helper()
		v := show(servers[len(servers)-1])
		var paths []string
		for _, id := range v.Devices {
			paths = append(paths, protocol.AssignmentPath(id))
		}
		all := true
		for _, s := range servers {
			found, err := rolloutTUF.refresh(s.url, paths...)
			if err != nil {
				t.Fatal(err)
			}
			all = all && len(found) == len(paths)
			if _, err := releaseTUF.refresh(s.url); err != nil {
				t.Fatal(err)
			}
		}
		return all
	}
	waitFor(t, rolloutTimeout, "the second wave opens", func() bool {
		check(a, b)
		return show(b).has("wave/1", "")
	})
	if h := holder(); h != instance(a) {
		t.Fatalf("scheduler lease held by %q before A dies, want A (%s)", h, instance(a))
	}
	killedA := a.proc
	killedA.cmd.Process.Kill()
	<-killedA.exited
	killed := time.Now()
	waitFor(t, rolloutTimeout, "replica B takes the lease over and ends the deferral", func() bool {
		check(b)
		return holder() == instance(b) && show(b).has("", "deferral.ended")
	})
	t.Logf("replica B ended the deferral %s after A was killed", time.Since(killed).Round(time.Millisecond))
	// A crashed replica is restarted on its data directory, as systemd
	// or Kubernetes would: its broker session (clean session off) holds
	// the share of device reports the broker queued for it meanwhile.
	// It comes back as a follower: B keeps the lease.
	a.launch(t)
	waitFor(t, rolloutTimeout, "replica B completes the rollout", func() bool {
		check(b)
		return show(b).Status == "completed"
	})
	if h := holder(); h != instance(b) {
		t.Fatalf("scheduler lease held by %q after A came back, want B (%s) still", h, instance(b))
	}
	// The site's IT and the release engineer, asking either replica, see
	// the reminder and the deferral's end.
	for _, cmd := range [][]string{{"pending", lakeside}, {"rollout", "show", ro.ID}} {
		out := runCLI(t, a.cliEnv(), cmd...)
		if !strings.Contains(out, "deferral.reminder site "+lakeside) || !strings.Contains(out, "deferral.ended site "+lakeside) {
			t.Fatalf("aftercare %s lacks the reminder and the end of the deferral:\n%s", strings.Join(cmd, " "), out)
		}
	}
	runCLI(t, b.cliEnv(), "approve", lakeside, ro.ID, "--reason", "theatre free")
	waitFor(t, rolloutTimeout, "every device of the rollout succeeded", func() bool {
		check(a, b)
		return show(b).Counts["succeeded"] == len(f.devices)
	})
	waitFor(t, 10*time.Second, "both replicas serve every assignment", func() bool { return check(a, b) })

	v := show(b)
	if len(v.Devices) != len(f.devices) || len(slices.Compact(slices.Sorted(slices.Values(v.Devices)))) != len(f.devices) {
		t.Fatalf("the rollout assigned %v, want each of the %d devices once", v.Devices, len(f.devices))
	}
	var waves []string
	for _, e := range v.Events {
		if e.Kind == "wave.opened" {
			waves = append(waves, e.Key)
		}
	}
	if !slices.Equal(waves, []string{"wave/0", "wave/1", "wave/2"}) {
		t.Fatalf("waves opened %v, want wave/0, wave/1, wave/2 once each", waves)
	}
	// Each committed step logs its events: across both processes, each
	// event happened exactly once.
	logged := loggedEvents(t, killedA, a.proc, b.proc)
	want := map[string]int{"wave.opened": 3, "deferral.reminder": 1, "deferral.ended": 1, "rollout.completed": 1}
	for kind, n := range want {
		if logged[kind] != n {
			t.Errorf("logged %d %s event(s) across both replicas, want %d (all: %v)", logged[kind], kind, n, logged)
		}
	}
}
