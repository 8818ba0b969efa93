package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/offline"
	"github.com/aftercare/aftercare/agent/internal/update"
	"github.com/aftercare/aftercare/agent/internal/update/reposim"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

// recorder keeps every file a client fetched successfully, by URL path.
type recorder struct {
	next  http.RoundTripper
	mu    sync.Mutex
	files map[string][]byte // guarded by mu
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := r.next.RoundTrip(req)
	if err != nil || res.StatusCode != http.StatusOK {
		return res, err
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.files[strings.TrimPrefix(req.URL.Path, "/")] = b
	r.mu.Unlock()
	res.Body = io.NopCloser(bytes.NewReader(b))
	return res, nil
}

// bundleFiles collects what a fresh device fetches for its assignment, as
// `aftercare offline-bundle` does against the server.
func bundleFiles(t *testing.T, sim *reposim.Sim) map[string][]byte {
	t.Helper()
	rec := &recorder{next: NewHTTPClient().Transport, files: map[string][]byte{}}
	httpc := &http.Client{Transport: rec}
	up, err := update.New(update.Options{ReleaseURL: sim.ServerURL() + "/tuf/release", RolloutURL: sim.ServerURL() + "/tuf/rollout",
		ReleaseRoot: sim.Release.RootJSON(1), RolloutRoot: sim.Rollout.RootJSON(1), DeviceID: testDeviceID,
		StateDir: t.TempDir(), HTTP: httpc, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	asg, err := up.Assignment(context.Background())
	if err != nil || asg == nil {
		t.Fatalf("Assignment() = %v, %v", asg, err)
	}
	res, err := httpc.Get(asg.Target.URL)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return rec.files
}

// writeBundle writes files as an offline bundle for the test device.
func writeBundle(t *testing.T, files map[string][]byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bundle.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	m := protocol.OfflineManifest{Format: protocol.OfflineFormat, DeviceID: testDeviceID, Version: "1.1.0"}
	all := maps.Clone(files)
	all[protocol.OfflineManifestName] = m.Marshal()
	for _, name := range slices.Sorted(maps.Keys(all)) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(all[name])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(all[name])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// offlineDevice is a device's state directory, slots and bootloader.
type offlineDevice struct {
	dir  string
	boot *boot.File
}

func newOfflineDevice(t *testing.T) *offlineDevice {
	t.Helper()
	dir := t.TempDir()
	bl, err := boot.OpenFile(filepath.Join(dir, "boot"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bl.PowerOn(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "slot-a.img"), []byte("factory image"), 0o640)
	return &offlineDevice{dir: dir, boot: bl}
}

// agentFor builds the device's agent reading from the bundle at path.
func (d *offlineDevice) agentFor(t *testing.T, sim *reposim.Sim, path, model, running string) *testAgent {
	t.Helper()
	b, err := offline.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	logs := &syncBuffer{}
	a, err := New(Options{
		ServerURL: offline.BaseURL, Identity: Identity{DeviceID: testDeviceID, TopicPrefix: protocol.DefaultTopicPrefix},
		BrokerURL: "tcp://offline-bundle.invalid:1883", Model: model, FactoryVersion: running,
		BootstrapRoot: sim.Release.RootJSON(1), RolloutRoot: sim.Rollout.RootJSON(1), StateDir: d.dir, Boot: d.boot,
		Slots: map[firmware.Slot]string{firmware.SlotA: filepath.Join(d.dir, "slot-a.img"), firmware.SlotB: filepath.Join(d.dir, "slot-b.img")},
		HTTP:  b.Client(), Log: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &testAgent{Agent: a, dir: d.dir, boot: d.boot, log: logs}
}

func TestInstallOffline(t *testing.T) {
	sim, m := assigned(t)
	good := bundleFiles(t, sim)
	image := ""
	for name := range good {
		if strings.Contains(name, "/targets/") {
			image = name
		}
	}
	changed := func(name string, f func([]byte) []byte) map[string][]byte {
		out := maps.Clone(good)
		out[name] = f(slices.Clone(out[name]))
		return out
	}
	without := func(name string) map[string][]byte {
		out := maps.Clone(good)
		delete(out, name)
		return out
	}
	tests := []struct {
		name    string
		files   map[string][]byte
		model   string
		running string
		wantErr error
		want    string // in the error and the failed report
	}{
		{"valid", good, "pump-x1", "1.0.0", ErrReboot, ""},
		{"image-byte-changed", changed(image, func(b []byte) []byte { b[len(b)/2] ^= 1; return b }), "pump-x1", "1.0.0",
			update.ErrRefused, "sha256"},
		{"rollout-timestamp-altered", changed("tuf/rollout/metadata/timestamp.json", laterExpiry), "pump-x1", "1.0.0", update.ErrRefused, "not signed to threshold"},
		{"release-targets-missing", without(targetsFile(good)), "pump-x1", "1.0.0", nil, "release repository unavailable"},
		{"other-model", good, "monitor-z", "1.0.0", update.ErrRefused, "model mismatch"},
		{"downgrade", good, "pump-x1", "2.0.0", update.ErrRefused, "downgrade"},
		{"already-running", good, "pump-x1", m.Version, ErrNothingToInstall, "already runs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newOfflineDevice(t)
			a := d.agentFor(t, sim, writeBundle(t, tt.files), tt.model, tt.running)
			err := a.InstallOffline(context.Background())
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("InstallOffline() = %v, want %v containing %q", err, tt.wantErr, tt.want)
			}
			if tt.wantErr == ErrReboot {
				if b, _ := os.ReadFile(filepath.Join(d.dir, "boot", "bootenv.json")); !strings.Contains(string(b), `"try":"b"`) {
					t.Fatalf("boot environment %s: slot b not armed", b)
				}
				var states []string
				for _, r := range a.reports(t) {
					states = append(states, string(r.State))
				}
				if got := strings.Join(states, " "); got != "downloading verified installed" {
					t.Fatalf("queued reports %q, want downloading verified installed", got)
				}
				return
			}
			a.notArmed(t)
			if errors.Is(err, update.ErrRefused) && !slices.ContainsFunc(a.failures(t), func(r string) bool { return strings.Contains(r, tt.want) }) {
				t.Fatalf("failed reports %q do not name %q", a.failures(t), tt.want)
			}
		})
	}
}

// A refusal from a damaged copy must not make the device skip the same
// assignment from a good copy: the operator asked for it.
func TestInstallOfflineAfterDamagedCopy(t *testing.T) {
	sim, _ := assigned(t)
	good := bundleFiles(t, sim)
	bad := maps.Clone(good)
	for name, b := range bad {
		if strings.Contains(name, "/targets/") {
			b = slices.Clone(b)
			b[0] ^= 1
			bad[name] = b
		}
	}
	d := newOfflineDevice(t)
	if err := d.agentFor(t, sim, writeBundle(t, bad), "pump-x1", "1.0.0").InstallOffline(context.Background()); !errors.Is(err, update.ErrRefused) {
		t.Fatalf("InstallOffline(damaged) = %v, want a refusal", err)
	}
	if err := d.agentFor(t, sim, writeBundle(t, good), "pump-x1", "1.0.0").InstallOffline(context.Background()); !errors.Is(err, ErrReboot) {
		t.Fatalf("InstallOffline(good copy) = %v, want ErrReboot", err)
	}
}

// laterExpiry changes the year of the first signed expiry: still valid
// JSON, no longer what was signed (a whitespace change would not do: the
// signature covers canonical JSON).
func laterExpiry(b []byte) []byte {
	loc := regexp.MustCompile(`"expires":\s*"\d{3}(\d)`).FindSubmatchIndex(b)
	i := loc[2]
	if b[i] == '9' {
		b[i] = '0'
	} else {
		b[i]++
	}
	return b
}

// targetsFile names the release repository's targets metadata in files.
func targetsFile(files map[string][]byte) string {
	for name := range files {
		if strings.HasPrefix(name, "tuf/release/metadata/") && strings.HasSuffix(name, ".targets.json") {
			return name
		}
	}
	return "tuf/release/metadata/targets.json"
}
