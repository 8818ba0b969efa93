package update_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/agent/internal/update"
	"github.com/aftercare/aftercare/agent/internal/update/reposim"
	"github.com/aftercare/aftercare/firmware"
)

const device = "d7b1a2c3-0000-4000-8000-000000000001"

// clock is a device clock the test sets.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// device is an update client as one device runs it, with its state
// directory and clock; newClient on the same device is a restart.
type testDevice struct {
	sim      *reposim.Sim
	stateDir string
	clock    *clock
	limits   slowread.Limits
}

func newDevice(t *testing.T, sim *reposim.Sim) *testDevice {
	return &testDevice{sim: sim, stateDir: t.TempDir(), clock: &clock{t: sim.Now}}
}

func (d *testDevice) client(t *testing.T) *update.Client {
	t.Helper()
	c, err := update.New(update.Options{
		ReleaseURL: d.sim.Release.URL(), RolloutURL: d.sim.Rollout.URL(),
		ReleaseRoot: d.sim.Release.RootJSON(1), RolloutRoot: d.sim.Rollout.RootJSON(1),
		DeviceID: device, StateDir: d.stateDir, HTTP: &http.Client{Timeout: 30 * time.Second},
		Limits: d.limits, Now: d.clock.now, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (d *testDevice) assignment(t *testing.T) (*update.Assignment, error) {
	t.Helper()
	return d.client(t).Assignment(context.Background())
}

// published makes a sim with releases 1.0.0 and 1.1.0 and the device
// assigned 1.1.0.
func published(t *testing.T) (*reposim.Sim, firmware.Manifest) {
	t.Helper()
	sim := reposim.New(t)
	sim.AddRelease("1.0.0", false, "pump-x1")
	m := sim.AddRelease("1.1.0", false, "pump-x1")
	sim.Publish(sim.Release)
	sim.Assign(device, "rollout-1", m.TargetPath())
	sim.Publish(sim.Rollout)
	return sim, m
}

// wantRefusal checks err is a refusal with the code.
func wantRefusal(t *testing.T, err error, code string) *update.VerifyError {
	t.Helper()
	var ve *update.VerifyError
	if !errors.As(err, &ve) || !errors.Is(err, update.ErrRefused) || ve.Code != code {
		t.Fatalf("error = %v, want a refusal with code %q", err, code)
	}
	return ve
}

// trustedFiles reads the device's last-known-good metadata of a
// repository, to check a refusal changed none of it.
func (d *testDevice) trustedFiles(t *testing.T, repo string) map[string]string {
	t.Helper()
	out := map[string]string{}
	dir := filepath.Join(d.stateDir, repo, "trusted")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[e.Name()] = string(b)
	}
	state, _ := os.ReadFile(filepath.Join(d.stateDir, repo, "state.json"))
	out["state.json"] = string(state)
	return out
}

func sameFiles(t *testing.T, before, after map[string]string) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("trusted files changed: %d before, %d after", len(before), len(after))
	}
	for name, b := range before {
		if after[name] != b {
			t.Fatalf("trusted file %s changed after a refusal", name)
		}
	}
}

func TestAssignmentVerifiedByBothRepositories(t *testing.T) {
	sim, m := published(t)
	d := newDevice(t, sim)
	asg, err := d.assignment(t)
	if err != nil {
		t.Fatalf("Assignment() = %v", err)
	}
	if asg == nil || asg.RolloutID != "rollout-1" || asg.Target.Path != m.TargetPath() || asg.Target.Manifest.Version != "1.1.0" {
		t.Fatalf("Assignment() = %+v, want rollout-1 of %s", asg, m.TargetPath())
	}
	res, err := http.Get(asg.Target.URL)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("GET %s = %v %v; the target URL must point at the stored image", asg.Target.URL, res, err)
	}
	res.Body.Close()
	// Only the device's own bin was downloaded.
	if n := sim.Requests("rollout/metadata/2." + sim.Rollout.BinOf(device) + ".json"); n != 1 {
		t.Fatalf("the device's bin was downloaded %d times, want once", n)
	}
	sim.Unassign(device)
	sim.Publish(sim.Rollout)
	if asg, err := d.assignment(t); err != nil || asg != nil {
		t.Fatalf("Assignment() after unassigning = %+v, %v; want none", asg, err)
	}
}

func TestAttackArbitrarySoftwareNotInReleaseRepository(t *testing.T) {
	sim, _ := published(t)
	evil := []byte("malicious image")
	em := reposim.ManifestFor(evil, "6.6.6", "pump-x1")
	digest, _ := firmware.DecodeSHA256(em.Image.SHA256)
	// The rollout repository (a compromised server) assigns an image the
	// manufacturer never released.
	sim.AssignRaw(device, "rollout-evil", em.TargetPath(), em.Image.Length, metadata.Hashes{"sha256": digest})
	sim.Publish(sim.Rollout)
	_, err := newDevice(t, sim).assignment(t)
	ve := wantRefusal(t, err, update.CodeNotSigned)
	if ve.Target != em.TargetPath() {
		t.Fatalf("refusal names target %q, want %q", ve.Target, em.TargetPath())
	}
}

func TestAttackArbitrarySoftwareSignedByUnknownKey(t *testing.T) {
	sim, _ := published(t)
	evil := sim.AddRelease("6.6.6", false, "pump-x1")
	sim.Publish(sim.Release, reposim.PublishOptions{TargetsKey: reposim.NewKey(t)})
	sim.Assign(device, "rollout-evil", evil.TargetPath())
	sim.Publish(sim.Rollout)
	_, err := newDevice(t, sim).assignment(t)
	wantRefusal(t, err, update.CodeSignature)
}

func TestAttackRollbackToAnOlderRelease(t *testing.T) {
	sim, _ := published(t)
	old := sim.Release.Targets.Signed.Targets["pump/1.0.0/image.img"]
	if old == nil {
		t.Fatal("release 1.0.0 missing")
	}
	sim.Assign(device, "rollout-back", "pump/1.0.0/image.img")
	sim.Publish(sim.Rollout)
	asg, err := newDevice(t, sim).assignment(t)
	if err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, update.Check(asg.Target, "pump-x1", "", "1.1.0"), update.CodeDowngrade)
}

func TestRollbackReleaseSignedForRollbackIsAccepted(t *testing.T) {
	sim := reposim.New(t)
	m := sim.AddRelease("1.0.0", true, "pump-x1")
	sim.Publish(sim.Release)
	sim.Assign(device, "rollout-back", m.TargetPath())
	sim.Publish(sim.Rollout)
	asg, err := newDevice(t, sim).assignment(t)
	if err != nil {
		t.Fatal(err)
	}
	if !asg.Target.AllowRollback {
		t.Fatal("the signed rollback flag was not read")
	}
	if err := update.Check(asg.Target, "pump-x1", "", "1.1.0"); err != nil {
		t.Fatalf("Check(rollback-signed 1.0.0 on 1.1.0) = %v, want accepted", err)
	}
}

func TestAttackRollbackReplayedMetadata(t *testing.T) {
	for _, repo := range []string{"release", "rollout"} {
		t.Run(repo, func(t *testing.T) {
			sim, _ := published(t)
			r := sim.Release
			if repo == "rollout" {
				r = sim.Rollout
			}
			oldTimestamp := r.File("metadata/timestamp.json")
			sim.Publish(r)
			d := newDevice(t, sim)
			if _, err := d.assignment(t); err != nil {
				t.Fatal(err)
			}
			before := d.trustedFiles(t, repo)
			// A mirror replays the previous state.
			r.Put("metadata/timestamp.json", oldTimestamp)
			_, err := d.assignment(t)
			wantRefusal(t, err, update.CodeRollback)
			sameFiles(t, before, d.trustedFiles(t, repo))
			// After a restart, with go-tuf's own cache gone, the device
			// still remembers.
			os.RemoveAll(filepath.Join(d.stateDir, repo, "cache"))
			_, err = d.assignment(t)
			wantRefusal(t, err, update.CodeRollback)
			// Even without any last-known-good copy but the root, the
			// persisted version floors hold.
			for _, f := range []string{"timestamp.json", "snapshot.json", "targets.json"} {
				os.Remove(filepath.Join(d.stateDir, repo, "trusted", f))
			}
			_, err = d.assignment(t)
			ve := wantRefusal(t, err, update.CodeRollback)
			if !strings.Contains(ve.Detail, "was trusted before") {
				t.Fatalf("refusal %q did not come from the persisted floors", ve)
			}
		})
	}
}

func TestAttackIndefiniteFreeze(t *testing.T) {
	tests := []struct {
		name string
		opts reposim.PublishOptions
	}{
		{"expired-timestamp", reposim.PublishOptions{TimestampExpiry: -time.Minute}},
		{"expired-snapshot", reposim.PublishOptions{SnapshotExpiry: -time.Minute}},
		{"expired-targets", reposim.PublishOptions{TargetsExpiry: -time.Minute}},
	}
	for _, tt := range tests {
		for _, repo := range []string{"release", "rollout"} {
			t.Run(tt.name+"/"+repo, func(t *testing.T) {
				sim, _ := published(t)
				r := map[string]*reposim.Repo{"release": sim.Release, "rollout": sim.Rollout}[repo]
				sim.Publish(r, tt.opts)
				_, err := newDevice(t, sim).assignment(t)
				ve := wantRefusal(t, err, update.CodeExpired)
				if !strings.HasPrefix(ve.Error(), "metadata expired") {
					t.Fatalf("reason %q does not start with \"metadata expired\"", ve.Error())
				}
			})
		}
	}
	// The same metadata is refused once the device's clock passes its
	// expiry: a server that stops signing freezes no device.
	t.Run("frozen-server", func(t *testing.T) {
		sim, _ := published(t)
		d := newDevice(t, sim)
		if _, err := d.assignment(t); err != nil {
			t.Fatal(err)
		}
		d.clock.set(sim.Now.Add(reposim.TimestampExpiry + time.Minute))
		_, err := d.assignment(t)
		wantRefusal(t, err, update.CodeExpired)
	})
}

func TestAttackFreezeWithTheDeviceClockSetBack(t *testing.T) {
	sim, _ := published(t)
	start := sim.Now
	// The release keys' targets expire in an hour and nobody signs them
	// again; the server keeps its timestamps fresh.
	sim.Publish(sim.Release, reposim.PublishOptions{TargetsExpiry: time.Hour})
	sim.Now = start.Add(2 * time.Hour)
	sim.Publish(sim.Release, reposim.PublishOptions{TargetsExpiry: -time.Hour})
	d := newDevice(t, sim)
	d.clock.set(start.Add(30 * time.Minute)) // the device's clock is behind
	// With no floor yet, the clock decides, and calls the expired targets
	// fresh; the refresh records the signed time as the floor.
	if _, err := d.assignment(t); err != nil {
		t.Fatalf("first refresh = %v, want it accepted (no floor yet)", err)
	}
	_, err := d.assignment(t)
	wantRefusal(t, err, update.CodeExpired)
	// A restart does not forget the floor.
	_, err = d.assignment(t)
	wantRefusal(t, err, update.CodeExpired)
}

func TestAttackEndlessDataMetadata(t *testing.T) {
	for _, file := range []string{"release/metadata/timestamp.json", "rollout/metadata/2.snapshot.json"} {
		t.Run(file, func(t *testing.T) {
			sim, _ := published(t)
			stopped := make(chan int64, 1)
			sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
				if f != file {
					return false
				}
				// Valid-looking JSON that never ends.
				w.Write([]byte(`{"signed":{"x":"`))
				chunk := []byte(strings.Repeat("A", 32<<10))
				var n int64
				for {
					if _, err := w.Write(chunk); err != nil {
						stopped <- n
						return true
					}
					n += int64(len(chunk))
				}
			})
			_, err := newDevice(t, sim).assignment(t)
			wantRefusal(t, err, update.CodeTooLarge)
			select {
			case n := <-stopped:
				if n > 64<<20 {
					t.Fatalf("the device read on for %d bytes", n)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the endless server was never cut off")
			}
		})
	}
}

func TestAttackMixAndMatch(t *testing.T) {
	sim, m := published(t)
	old := sim.Release.File("metadata/2.targets.json")
	sim.AddRelease("1.2.0", false, "pump-x1")
	sim.Publish(sim.Release)
	// The mirror serves the previous targets under the new snapshot's name.
	sim.Release.Put("metadata/3.targets.json", old)
	_, err := newDevice(t, sim).assignment(t)
	wantRefusal(t, err, update.CodeMismatch)
	// In the rollout repository a bin of another version under this
	// version's name is refused too.
	sim2, _ := published(t)
	bin := sim2.Rollout.BinOf(device)
	oldBin := sim2.Rollout.File("metadata/2." + bin + ".json")
	sim2.Assign(device, "rollout-2", m.TargetPath())
	sim2.Publish(sim2.Rollout)
	sim2.Rollout.Put("metadata/3."+bin+".json", oldBin)
	_, err = newDevice(t, sim2).assignment(t)
	if !errors.Is(err, update.ErrRefused) {
		t.Fatalf("Assignment(old bin under the new name) = %v, want a refusal", err)
	}
}

func TestAttackFastForwardRecoveryAfterOnlineKeyRotation(t *testing.T) {
	sim, _ := published(t)
	d := newDevice(t, sim)
	if _, err := d.assignment(t); err != nil {
		t.Fatal(err)
	}
	// An attacker with the rollout key signs a timestamp far in the
	// future of versions; the device trusts it (it is validly signed).
	sim.Publish(sim.Rollout, reposim.PublishOptions{TimestampVersion: 1 << 40})
	if _, err := d.assignment(t); err != nil {
		t.Fatal(err)
	}
	// The server cannot publish past it.
	sim.Publish(sim.Rollout, reposim.PublishOptions{TimestampVersion: 10})
	_, err := d.assignment(t)
	wantRefusal(t, err, update.CodeRollback)
	// The manufacturer revokes the key; the server signs with a new one.
	sim.RotateRoot(sim.Rollout, reposim.RotateOptions{Role: "online", NewKey: reposim.NewKey(t)})
	sim.Publish(sim.Rollout, reposim.PublishOptions{TimestampVersion: 11})
	asg, err := d.assignment(t)
	if err != nil || asg == nil {
		t.Fatalf("Assignment() after the rotation = %+v, %v; want the device recovered", asg, err)
	}
}

func TestAttackCompromisedOnlineKeys(t *testing.T) {
	t.Run("rollout-assigns-other-bytes-under-a-signed-name", func(t *testing.T) {
		sim, m := published(t)
		evil := []byte("malicious image")
		em := reposim.ManifestFor(evil, m.Version, "pump-x1")
		digest, _ := firmware.DecodeSHA256(em.Image.SHA256)
		sim.AssignRaw(device, "rollout-evil", m.TargetPath(), em.Image.Length, metadata.Hashes{"sha256": digest})
		sim.Publish(sim.Rollout)
		_, err := newDevice(t, sim).assignment(t)
		wantRefusal(t, err, update.CodeDisagree)
	})
	t.Run("release-snapshot-points-at-forged-targets", func(t *testing.T) {
		sim, _ := published(t)
		// The attacker holds the release repository's snapshot and
		// timestamp keys, not the release key.
		evil := sim.AddRelease("6.6.6", false, "pump-x1")
		sim.Publish(sim.Release, reposim.PublishOptions{TargetsKey: sim.Release.SnapshotKey})
		sim.Assign(device, "rollout-evil", evil.TargetPath())
		sim.Publish(sim.Rollout)
		_, err := newDevice(t, sim).assignment(t)
		wantRefusal(t, err, update.CodeSignature)
	})
}

func TestAttackMaliciousMirrorWrongMetadataBytes(t *testing.T) {
	for _, file := range []string{"release/metadata/2.targets.json", "rollout/metadata/2.snapshot.json"} {
		t.Run(file, func(t *testing.T) {
			sim, _ := published(t)
			sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
				if f != file {
					return false
				}
				repo, name, _ := strings.Cut(f, "/")
				b := map[string]*reposim.Repo{"release": sim.Release, "rollout": sim.Rollout}[repo].File(name)
				b[len(b)/2] ^= 0x01
				w.Write(b)
				return true
			})
			_, err := newDevice(t, sim).assignment(t)
			if !errors.Is(err, update.ErrRefused) {
				t.Fatalf("Assignment(altered %s) = %v, want a refusal", file, err)
			}
		})
	}
}

func TestAttackSlowRetrievalMetadata(t *testing.T) {
	sim, _ := published(t)
	sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
		if f != "rollout/metadata/timestamp.json" {
			return false
		}
		reposim.Trickle(w, r, sim.Rollout.File("metadata/timestamp.json"), 20*time.Millisecond)
		return true
	})
	d := newDevice(t, sim)
	// Short limits keep the test quick; the logic is that of the defaults.
	d.limits = slowread.Limits{Idle: 2 * time.Second, MinRate: 1000, Window: 300 * time.Millisecond}
	_, err := d.assignment(t)
	if !errors.Is(err, slowread.ErrTooSlow) || errors.Is(err, update.ErrRefused) {
		t.Fatalf("Assignment(trickling server) = %v, want slow retrieval (retried, not a refusal)", err)
	}
}

func TestAttackWrongHardwareModel(t *testing.T) {
	sim := reposim.New(t)
	m := sim.AddRelease("2.0.0", false, "ct-scanner")
	sim.Publish(sim.Release)
	sim.Assign(device, "rollout-1", m.TargetPath())
	sim.Publish(sim.Rollout)
	asg, err := newDevice(t, sim).assignment(t)
	if err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, update.Check(asg.Target, "pump-x1", "rev-b", "1.0.0"), update.CodeModel)
}

func TestAttackRootRotationDeviceSeveralVersionsBehind(t *testing.T) {
	sim, _ := published(t)
	d := newDevice(t, sim)
	newRootKey := reposim.NewKey(t)
	// v2: new release key; v3: new timestamp key; v4: a new root key
	// (signed by the old threshold and the new key); v5: signed by the
	// new root key alone.
	sim.RotateRoot(sim.Release, reposim.RotateOptions{Role: "targets", NewKey: reposim.NewKey(t)})
	sim.RotateRoot(sim.Release, reposim.RotateOptions{Role: "timestamp", NewKey: reposim.NewKey(t)})
	sim.RotateRoot(sim.Release, reposim.RotateOptions{Role: "root", NewKey: newRootKey})
	sim.RotateRoot(sim.Release, reposim.RotateOptions{SignWith: []signature.Signer{newRootKey}})
	sim.Publish(sim.Release)
	asg, err := d.assignment(t)
	if err != nil || asg == nil {
		t.Fatalf("Assignment() of a device 4 root versions behind = %+v, %v", asg, err)
	}
	files := d.trustedFiles(t, "release")
	if !strings.Contains(files["root.json"], `"version":5`) {
		t.Fatal("the device did not keep root v5")
	}
}

func TestAttackThresholdNotMet(t *testing.T) {
	sim, _ := published(t)
	d := newDevice(t, sim)
	if _, err := d.assignment(t); err != nil {
		t.Fatal(err)
	}
	before := d.trustedFiles(t, "release")
	// Root v2 trusts an attacker's release key, signed by one of the two
	// root keys required.
	sim.RotateRoot(sim.Release, reposim.RotateOptions{Role: "targets", NewKey: reposim.NewKey(t), SignWith: sim.RootKeys[:1]})
	sim.Publish(sim.Release)
	_, err := d.assignment(t)
	wantRefusal(t, err, update.CodeSignature)
	sameFiles(t, before, d.trustedFiles(t, "release"))
}

func TestPowerLossInGoTUFCacheIsHarmless(t *testing.T) {
	sim, _ := published(t)
	d := newDevice(t, sim)
	if _, err := d.assignment(t); err != nil {
		t.Fatal(err)
	}
	// go-tuf writes its cache without fsync: after a power cut its files
	// may be empty. The device's own copies are intact.
	for _, repo := range []string{"release", "rollout"} {
		entries, _ := os.ReadDir(filepath.Join(d.stateDir, repo, "cache"))
		for _, e := range entries {
			os.WriteFile(filepath.Join(d.stateDir, repo, "cache", e.Name()), nil, 0o600)
		}
	}
	if asg, err := d.assignment(t); err != nil || asg == nil {
		t.Fatalf("Assignment() after emptied go-tuf cache = %+v, %v", asg, err)
	}
}

func TestUnreachableRepositoryIsNotARefusal(t *testing.T) {
	sim, _ := published(t)
	d := newDevice(t, sim)
	sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return true
	})
	_, err := d.assignment(t)
	if err == nil || errors.Is(err, update.ErrRefused) {
		t.Fatalf("Assignment(server down) = %v, want a retryable error", err)
	}
}

func TestCheck(t *testing.T) {
	target := &update.Target{Path: "pump/2.0.0/image.img", Manifest: firmware.Manifest{Version: "2.0.0", Models: []string{"pump-x1"}, HardwareRevisions: []string{"rev-b"}}}
	tests := []struct {
		name, model, rev, running string
		rollback                  bool
		wantCode                  string
	}{
		{"newer", "pump-x1", "rev-b", "1.9.0", false, ""},
		{"same", "pump-x1", "rev-b", "2.0.0", false, ""},
		{"wrong-model", "ct-scanner", "rev-b", "1.0.0", false, update.CodeModel},
		{"wrong-revision", "pump-x1", "rev-a", "1.0.0", false, update.CodeModel},
		{"older-version", "pump-x1", "rev-b", "2.1.0", false, update.CodeDowngrade},
		{"older-version-signed-for-rollback", "pump-x1", "rev-b", "2.1.0", true, ""},
		{"rollback-flag-does-not-change-model", "ct-scanner", "rev-b", "2.1.0", true, update.CodeModel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := *target
			tg.AllowRollback = tt.rollback
			err := update.Check(&tg, tt.model, tt.rev, tt.running)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("Check() = %v, want nil", err)
				}
				return
			}
			wantRefusal(t, err, tt.wantCode)
		})
	}
}
