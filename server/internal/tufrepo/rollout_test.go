package tufrepo_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
	"github.com/aftercare/aftercare/signing"
)

// memSource is the assignments table as a map, for tests of the
// repository alone; the server's store implements the same reads.
type memSource struct {
	mu sync.Mutex
	m  map[string]tufrepo.Assignment // by device ID
}

func (s *memSource) set(deviceID, rolloutID, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if target == "" {
		delete(s.m, deviceID)
		return
	}
	s.m[deviceID] = tufrepo.Assignment{DeviceID: deviceID, RolloutID: rolloutID, TargetPath: target}
}

func (s *memSource) AssignedDevices(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id := range s.m {
		ids = append(ids, id)
	}
	return ids, nil
}

func (s *memSource) Assignments(_ context.Context, ids []string) ([]tufrepo.Assignment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []tufrepo.Assignment
	for _, id := range ids {
		if a, ok := s.m[id]; ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// rolloutFixture is a release repository with releases and a rollout
// repository over it.
type rolloutFixture struct {
	*fixture
	release *tufrepo.Repo
	targets map[string]string // version -> target path
	src     *memSource
	ropts   tufrepo.RolloutOptions
	rkey    signature.Signer
}

func newRolloutFixture(t testing.TB, bits int, versions ...string) *rolloutFixture {
	t.Helper()
	f := &rolloutFixture{fixture: newFixture(t), targets: map[string]string{}, src: &memSource{m: map[string]tufrepo.Assignment{}}}
	f.release = f.open(t)
	cur, _ := os.ReadFile(filepath.Join(f.keys, signing.TargetsFile))
	for _, v := range versions {
		m, blob := testRelease(t, v)
		signed, err := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: m, Signer: f.signT})
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := f.release.ParseTargets(signed)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.release.Publish(context.Background(), parsed, map[string]tufrepo.Blob{m.TargetPath(): {Path: blob}}); err != nil {
			t.Fatal(err)
		}
		cur = signed
		f.targets[v] = m.TargetPath()
	}
	var err error
	f.rkey, err = signing.LoadSigner(context.Background(), filepath.Join(f.keys, signing.RolloutKeyFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.ropts = tufrepo.RolloutOptions{Dir: t.TempDir(), Signer: f.rkey, Release: f.release, Source: f.src, BinBits: bits,
		Log: f.opts.Log, Now: func() time.Time { return f.now }}
	return f
}

func testRelease(t testing.TB, version string) (*firmware.Manifest, string) {
	t.Helper()
	raw := []byte("image of " + version)
	sum := sha256.Sum256(raw)
	h := hex.EncodeToString(sum[:])
	blob := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(blob, raw, 0o644)
	return &firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: []string{"pump-x1"},
		Image: firmware.Image{Compression: firmware.CompressionNone, Length: int64(len(raw)), SHA256: h, RawLength: int64(len(raw)), RawSHA256: h}}, blob
}

func (f *rolloutFixture) rolloutRoot(t testing.TB) []byte {
	b, err := os.ReadFile(filepath.Join(f.keys, signing.RolloutRootFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *rolloutFixture) openRollout(t testing.TB) *tufrepo.Rollout {
	t.Helper()
	r, err := tufrepo.OpenRollout(f.ropts, f.rolloutRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// countingFetcher is a go-tuf fetcher over loopback HTTP that records
// every file it downloads and the bytes.
type countingFetcher struct {
	mu    sync.Mutex
	files []string
	bytes int64
}

func (c *countingFetcher) DownloadFile(url string, maxLength int64, _ time.Duration) ([]byte, error) {
	res, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: res.StatusCode, URL: url}
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, maxLength+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: url}
	}
	c.mu.Lock()
	c.files = append(c.files, url[strings.LastIndex(url, "/")+1:])
	c.bytes += int64(len(b))
	c.mu.Unlock()
	return b, nil
}

// lookup refreshes the repository at url with a real go-tuf client, as a
// device would, and returns the device's entry (nil when it has none).
func lookup(t testing.TB, url string, root []byte, cache, deviceID string, fetch *countingFetcher) *metadata.TargetFiles {
	t.Helper()
	return lookupPath(t, url, root, cache, protocol.AssignmentPath(deviceID), fetch)
}

// lookupPath refreshes a repository with a real go-tuf client and returns
// the entry of a target path, or nil when no role lists it.
func lookupPath(t testing.TB, url string, root []byte, cache, targetPath string, fetch *countingFetcher) *metadata.TargetFiles {
	t.Helper()
	cfg, err := config.New(url+"/metadata", root)
	if err != nil {
		t.Fatal(err)
	}
	cfg.LocalMetadataDir = cache
	cfg.LocalTargetsDir = filepath.Join(cache, "targets")
	cfg.Fetcher = fetch
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Refresh(); err != nil {
		t.Fatalf("refresh of the repository: %v", err)
	}
	tf, err := up.GetTargetInfo(targetPath)
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return nil
		}
		t.Fatalf("GetTargetInfo(%s): %v", targetPath, err)
	}
	return tf
}

func TestRolloutBinnedAssignments(t *testing.T) {
	f := newRolloutFixture(t, 4, "1.1.0")
	r := f.openRollout(t)
	var ids []string
	for i := range 50 {
		id := fmt.Sprintf("dev-%02d", i)
		ids = append(ids, id)
		f.src.set(id, "rollout-1", f.targets["1.1.0"])
	}
	if err := r.AssignmentsChanged(context.Background(), ids); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	fetch := &countingFetcher{}
	tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-07", fetch)
	if tf == nil {
		t.Fatal("the device's assignment is not in its bin")
	}
	rel, _ := f.release.Target(f.targets["1.1.0"])
	if tf.Length != rel.Length || !slices.Equal(tf.Hashes["sha256"], rel.Hashes["sha256"]) {
		t.Fatalf("assignment = %d bytes %x, want the release's %d bytes %x", tf.Length, tf.Hashes["sha256"], rel.Length, rel.Hashes["sha256"])
	}
	custom, err := protocol.ParseAssignmentCustom(*tf.Custom)
	if err != nil || custom.Target != f.targets["1.1.0"] || custom.RolloutID != "rollout-1" {
		t.Fatalf("assignment custom = %+v, %v", custom, err)
	}
	var bins []string
	for _, name := range fetch.files {
		if strings.Contains(name, tufrepo.BinPrefix+"-") {
			bins = append(bins, name)
		}
	}
	if want := r.BinOf("dev-07"); len(bins) != 1 || !strings.HasSuffix(bins[0], "."+want+".json") {
		t.Fatalf("device downloaded bins %v, want only its own %s", bins, want)
	}
	if tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-unassigned", &countingFetcher{}); tf != nil {
		t.Fatalf("an unassigned device found an assignment: %+v", tf)
	}
}

func readSnapshotMeta(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	ts, err := new(metadata.Metadata[metadata.TimestampType]).FromFile(filepath.Join(dir, "metadata", "timestamp.json"))
	if err != nil {
		t.Fatal(err)
	}
	v := ts.Signed.Meta["snapshot.json"].Version
	snap, err := new(metadata.Metadata[metadata.SnapshotType]).FromFile(filepath.Join(dir, "metadata", fmt.Sprintf("%d.snapshot.json", v)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{"snapshot": v}
	for name, mf := range snap.Signed.Meta {
		out[strings.TrimSuffix(name, ".json")] = mf.Version
	}
	return out
}

func TestRolloutPublishesOnlyChangedBins(t *testing.T) {
	f := newRolloutFixture(t, 4, "1.1.0", "1.2.0")
	r := f.openRollout(t)
	for i := range 40 {
		f.src.set(fmt.Sprintf("dev-%02d", i), "rollout-1", f.targets["1.1.0"])
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := readSnapshotMeta(t, f.ropts.Dir)
	if len(before) != 16+2 {
		t.Fatalf("snapshot lists %v, want targets and 16 bins", before)
	}
	f.src.set("dev-03", "rollout-2", f.targets["1.2.0"])
	f.src.set("dev-04", "", "") // unassigned
	if err := r.AssignmentsChanged(context.Background(), []string{"dev-03", "dev-04"}); err != nil {
		t.Fatal(err)
	}
	after := readSnapshotMeta(t, f.ropts.Dir)
	changed := map[string]bool{r.BinOf("dev-03"): true, r.BinOf("dev-04"): true, "snapshot": true}
	for name, v := range after {
		want := before[name]
		if changed[name] {
			want++
		}
		if v != want {
			t.Errorf("%s version %d -> %d, want %d", name, before[name], v, want)
		}
	}
	// Publishing the same assignments again changes nothing.
	if err := r.AssignmentsChanged(context.Background(), []string{"dev-03"}); err != nil {
		t.Fatal(err)
	}
	if again := readSnapshotMeta(t, f.ropts.Dir); again["snapshot"] != after["snapshot"] {
		t.Fatalf("an unchanged bin made a new snapshot (v%d -> v%d)", after["snapshot"], again["snapshot"])
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-03", &countingFetcher{})
	if c, _ := protocol.ParseAssignmentCustom(*tf.Custom); c.Target != f.targets["1.2.0"] {
		t.Fatalf("dev-03 is assigned %s, want %s", c.Target, f.targets["1.2.0"])
	}
	if tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-04", &countingFetcher{}); tf != nil {
		t.Fatal("an unassigned device kept its assignment")
	}
}

func TestRolloutSyncRepairsAMissedPublish(t *testing.T) {
	f := newRolloutFixture(t, 2, "1.1.0")
	r := f.openRollout(t)
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The assignment is committed but the server stops before publishing.
	f.src.set("dev-1", "rollout-1", f.targets["1.1.0"])
	r2 := f.openRollout(t)
	if err := r2.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	if tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-1", &countingFetcher{}); tf == nil {
		t.Fatal("Sync did not publish the assignment made before the restart")
	}
}

func TestRolloutFlat(t *testing.T) {
	f := newRolloutFixture(t, 0, "1.1.0")
	r := f.openRollout(t)
	f.src.set("dev-1", "rollout-1", f.targets["1.1.0"])
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	if tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-1", &countingFetcher{}); tf == nil {
		t.Fatal("flat repository lacks the assignment")
	}
	f.ropts.BinBits = 3
	if _, err := tufrepo.OpenRollout(f.ropts, f.rolloutRoot(t)); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Fatalf("OpenRollout(other bin count) = %v, want a refusal", err)
	}
}

func TestRolloutSkipsTargetsNotInTheReleaseRepository(t *testing.T) {
	f := newRolloutFixture(t, 1, "1.1.0")
	r := f.openRollout(t)
	f.src.set("dev-1", "rollout-1", "pump/6.6.6/image.img")
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	if tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-1", &countingFetcher{}); tf != nil {
		t.Fatal("the rollout repository assigned a target the release repository does not sign")
	}
}

func TestRolloutRefreshAndPrune(t *testing.T) {
	f := newRolloutFixture(t, 2, "1.1.0", "1.2.0")
	r := f.openRollout(t)
	f.src.set("dev-1", "rollout-1", f.targets["1.1.0"])
	r.Sync(context.Background())
	for i := range 5 {
		f.src.set("dev-1", fmt.Sprintf("rollout-%d", i+2), f.targets[[]string{"1.1.0", "1.2.0"}[i%2]])
		if err := r.AssignmentsChanged(context.Background(), []string{"dev-1"}); err != nil {
			t.Fatal(err)
		}
	}
	snaps, _ := filepath.Glob(filepath.Join(f.ropts.Dir, "metadata", "*.snapshot.json"))
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots on disk after 6 publishes, want the last 2", len(snaps))
	}
	before := readSnapshotMeta(t, f.ropts.Dir)
	f.now = f.now.Add(16 * 24 * time.Hour) // past half of the bins' 30 days
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := readSnapshotMeta(t, f.ropts.Dir)
	for name, v := range after {
		if v <= before[name] {
			t.Errorf("%s not re-signed (v%d)", name, v)
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	// A client checks expiry against the real clock, which is 16 days
	// behind this test's; what it verifies is that every file is signed.
	if tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-1", &countingFetcher{}); tf == nil {
		t.Fatal("assignment lost in refresh")
	}
}

func TestRolloutRootRotationResignsEverything(t *testing.T) {
	f := newRolloutFixture(t, 2, "1.1.0")
	r := f.openRollout(t)
	f.src.set("dev-1", "rollout-1", f.targets["1.1.0"])
	r.Sync(context.Background())
	// The rollout key leaks: the manufacturer replaces it.
	priv, _, _ := signing.GenerateKey(signing.Ed25519, nil)
	newKeyPath := filepath.Join(t.TempDir(), "rollout-2.key")
	os.WriteFile(newKeyPath, priv, 0o600)
	newKey, _ := signing.LoadSigner(context.Background(), newKeyPath, nil)
	pub, _ := newKey.PublicKey()
	rootKey, _ := signing.LoadSigner(context.Background(), filepath.Join(f.keys, signing.OfflineKeyFile("root", signing.DefaultRootHolder)), nil)
	next, err := signing.RotateRoot(signing.RotateOptions{
		Current: f.rolloutRoot(t), Roles: []string{"targets", "snapshot", "timestamp"}, Remove: []string{signing.OnlineHolder},
		Add: []signing.NewKey{{Holder: signing.OnlineHolder, Public: pub}}, Signers: []signature.Signer{rootKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The running server holds the old key: it cannot take the new root.
	if err := r.UpdateRoot(context.Background(), next); err == nil {
		t.Fatal("UpdateRoot accepted a root that drops the server's current key")
	}
	// Restarted with the new key and the new root configured.
	f.ropts.Signer = newKey
	r2, err := tufrepo.OpenRollout(f.ropts, next)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(f.ropts.Dir)))
	defer srv.Close()
	if tf := lookup(t, srv.URL, f.rolloutRoot(t), t.TempDir(), "dev-1", &countingFetcher{}); tf == nil {
		t.Fatal("a device starting from root v1 does not find its assignment after the rotation")
	}
	var raw map[string]any
	b, _ := os.ReadFile(filepath.Join(f.ropts.Dir, "metadata", "timestamp.json"))
	json.Unmarshal(b, &raw)
	if _, ok := raw["signed"].(map[string]any)[protocol.SignedAtField]; !ok {
		t.Fatalf("timestamp lacks %s", protocol.SignedAtField)
	}
}
