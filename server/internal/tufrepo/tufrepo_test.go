package tufrepo_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
	"github.com/aftercare/aftercare/signing"
)

type fixture struct {
	keys  string
	opts  tufrepo.Options
	now   time.Time
	signT signature.Signer
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{keys: t.TempDir(), now: time.Now()}
	if _, err := signing.InitRepository(context.Background(), signing.InitOptions{Dir: f.keys}); err != nil {
		t.Fatal(err)
	}
	load := func(n string) signature.Signer {
		s, err := signing.LoadSigner(context.Background(), filepath.Join(f.keys, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	f.signT = load(signing.OfflineKeyFile(metadata.TARGETS, signing.DefaultTargetsHolder))
	f.opts = tufrepo.Options{Dir: t.TempDir(), SnapshotSigner: load(signing.SnapshotKeyFile), TimestampSigner: load(signing.TimeKeyFile),
		Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return f.now }}
	return f
}

func (f *fixture) root(t testing.TB) []byte {
	b, err := os.ReadFile(filepath.Join(f.keys, signing.RootFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) open(t testing.TB) *tufrepo.Repo {
	t.Helper()
	r, err := tufrepo.Open(f.opts, f.root(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// emptyTargets signs targets metadata with no targets at version v.
func (f *fixture) emptyTargets(t *testing.T, v int64, s signature.Signer) []byte {
	t.Helper()
	m := metadata.Targets(f.now.Add(24 * time.Hour))
	m.Signed.Version = v
	m.Sign(s)
	b, _ := m.ToBytes(false)
	return b
}

func TestOpenRefusesRootWithoutTheServerKeys(t *testing.T) {
	f := newFixture(t)
	other := newFixture(t)
	if _, err := tufrepo.Open(other.opts, f.root(t)); !errors.Is(err, tufrepo.ErrKeyNotInRoot) {
		t.Fatalf("Open(root without this server's online keys) = %v, want ErrKeyNotInRoot", err)
	}
	if _, err := tufrepo.Open(f.opts, []byte(`{"signed":{}}`)); err == nil {
		t.Fatal("Open accepted malformed root metadata")
	}
	if _, err := tufrepo.Open(f.opts, nil); !errors.Is(err, tufrepo.ErrNotInitialized) {
		t.Fatalf("Open(uninitialised) = %v, want ErrNotInitialized", err)
	}
}

func TestParseTargetsVersionDiscipline(t *testing.T) {
	f := newFixture(t)
	r := f.open(t)
	first, err := r.ParseTargets(f.emptyTargets(t, 5, f.signT))
	if err != nil {
		t.Fatalf("ParseTargets(first, v5) = %v", err)
	}
	if err := r.Publish(context.Background(), first, nil); err != nil {
		t.Fatal(err)
	}
	for _, v := range []int64{5, 4, 7} {
		if _, err := r.ParseTargets(f.emptyTargets(t, v, f.signT)); !errors.Is(err, problem.ErrConflict) {
			t.Errorf("ParseTargets(v%d after v5) = %v, want ErrConflict", v, err)
		}
	}
	if _, err := r.ParseTargets(f.emptyTargets(t, 6, f.opts.SnapshotSigner)); err == nil {
		t.Error("ParseTargets accepted targets signed with the snapshot key")
	}
	if _, err := r.ParseTargets(f.emptyTargets(t, 6, f.signT)); err != nil {
		t.Errorf("ParseTargets(v6) = %v", err)
	}
}

func TestPublishRefusesTargetsWithoutFiles(t *testing.T) {
	f := newFixture(t)
	r := f.open(t)
	m := metadata.Targets(f.now.Add(24 * time.Hour))
	m.Signed.Version = 2
	img := firmware.Manifest{Format: 1, Product: "pump", Version: "1.0.0", Models: []string{"x"},
		Image: firmware.Image{Compression: "none", Length: 3, SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", RawLength: 3, RawSHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}
	entry, _ := signing.TargetEntry(&img, false)
	m.Signed.Targets[entry.Path] = entry
	m.Sign(f.signT)
	b, _ := m.ToBytes(false)
	parsed, err := r.ParseTargets(b)
	if err != nil {
		t.Fatal(err)
	}
	var invalid *problem.InvalidError
	if err := r.Publish(context.Background(), parsed, nil); !errors.As(err, &invalid) {
		t.Fatalf("Publish(no file for a listed target) = %v, want an InvalidError", err)
	}
	wrong := filepath.Join(f.opts.Dir, "wrong")
	os.WriteFile(wrong, []byte("abd"), 0o644)
	if err := r.Publish(context.Background(), parsed, map[string]tufrepo.Blob{entry.Path: {Path: wrong}}); !errors.As(err, &invalid) {
		t.Fatalf("Publish(file with the wrong digest) = %v, want an InvalidError", err)
	}
	if cur, _ := r.CurrentTargets(); cur != nil {
		t.Fatal("a refused publish changed the current targets")
	}
	right := filepath.Join(f.opts.Dir, "right")
	os.WriteFile(right, []byte("abc"), 0o644)
	if err := r.Publish(context.Background(), parsed, map[string]tufrepo.Blob{entry.Path: {Path: right}}); err != nil {
		t.Fatalf("Publish(right file) = %v", err)
	}
	if p, _ := r.BlobPath(entry.Path); filepath.Base(p) != img.Image.SHA256+".image.img" {
		t.Fatalf("BlobPath() = %s, want the consistent-snapshot name", p)
	}
}

func readTimestamp(t *testing.T, f *fixture) *metadata.Metadata[metadata.TimestampType] {
	t.Helper()
	ts, err := new(metadata.Metadata[metadata.TimestampType]).FromFile(filepath.Join(f.opts.Dir, "metadata", "timestamp.json"))
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestRefreshResignsBeforeExpiry(t *testing.T) {
	f := newFixture(t)
	r := f.open(t)
	first, _ := r.ParseTargets(f.emptyTargets(t, 1, f.signT))
	if err := r.Publish(context.Background(), first, nil); err != nil {
		t.Fatal(err)
	}
	v1 := readTimestamp(t, f).Signed.Version
	f.now = f.now.Add(6 * time.Hour) // three quarters of a day left
	r.Refresh(context.Background())
	if v := readTimestamp(t, f).Signed.Version; v != v1 {
		t.Fatalf("timestamp re-signed with most of its validity left (v%d -> v%d)", v1, v)
	}
	f.now = f.now.Add(7 * time.Hour) // 11h left of 24h
	r.Refresh(context.Background())
	ts := readTimestamp(t, f)
	if ts.Signed.Version != v1+1 || !ts.Signed.Expires.After(f.now.Add(23*time.Hour)) {
		t.Fatalf("timestamp after refresh = v%d expiring %s; want v%d valid for a day", ts.Signed.Version, ts.Signed.Expires, v1+1)
	}
	f.now = f.now.Add(5 * 24 * time.Hour) // the snapshot (7 days) is past half
	r.Refresh(context.Background())
	snap, err := new(metadata.Metadata[metadata.SnapshotType]).FromFile(filepath.Join(f.opts.Dir, "metadata", "2.snapshot.json"))
	if err != nil || !snap.Signed.Expires.After(f.now.Add(6*24*time.Hour)) {
		t.Fatalf("snapshot not re-signed: %v", err)
	}
}

func TestReleaseRootRotationOfReleaseKeys(t *testing.T) {
	f := newRolloutFixture(t, 1, "1.1.0")
	rootKey, _ := signing.LoadSigner(context.Background(), filepath.Join(f.keys, signing.OfflineKeyFile("root", signing.DefaultRootHolder)), nil)
	priv, _, _ := signing.GenerateKey(signing.Ed25519, nil)
	p := filepath.Join(t.TempDir(), "targets-dave.key")
	os.WriteFile(p, priv, 0o600)
	dave, _ := signing.LoadSigner(context.Background(), p, nil)
	davePub, _ := dave.PublicKey()
	next, err := signing.RotateRoot(signing.RotateOptions{
		Current: f.root(t), Roles: []string{"targets"}, Remove: []string{signing.DefaultTargetsHolder},
		Add: []signing.NewKey{{Holder: "dave", Public: davePub}}, Signers: []signature.Signer{rootKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.release.UpdateRoot(context.Background(), next, nil); !errors.Is(err, problem.ErrConflict) {
		t.Fatalf("UpdateRoot(new release keys, old targets) = %v, want ErrConflict", err)
	}
	cur, _ := f.release.CurrentTargets()
	oldSigned, _ := signing.Resign(cur, f.signT, f.now.Add(time.Hour))
	var invalid *problem.InvalidError
	if err := f.release.UpdateRoot(context.Background(), next, oldSigned); !errors.As(err, &invalid) {
		t.Fatalf("UpdateRoot(targets signed by the removed key) = %v, want InvalidError", err)
	}
	if b, _ := f.release.Root(); bytes.Contains(b, []byte(`"version": 2`)) {
		t.Fatal("a refused root update changed the root")
	}
	resigned, _ := signing.Resign(cur, dave, f.now.Add(time.Hour))
	if err := f.release.UpdateRoot(context.Background(), next, resigned); err != nil {
		t.Fatalf("UpdateRoot(new keys, re-signed targets) = %v", err)
	}
	// A device starting from root v1 follows the chain to v2 and trusts
	// the targets dave signed.
	srv := httptest.NewServer(http.FileServer(http.Dir(f.opts.Dir)))
	defer srv.Close()
	if tf := lookupPath(t, srv.URL, f.root(t), t.TempDir(), f.targets["1.1.0"], &countingFetcher{}); tf == nil {
		t.Fatal("release not found after the rotation")
	}
}

func TestReleaseRootUpdateRefusals(t *testing.T) {
	f := newFixture(t)
	r := f.open(t)
	priv, _, _ := signing.GenerateKey(signing.Ed25519, nil)
	p := filepath.Join(t.TempDir(), "root-mallory.key")
	os.WriteFile(p, priv, 0o600)
	mallory, _ := signing.LoadSigner(context.Background(), p, nil)
	malloryPub, _ := mallory.PublicKey()
	// Only the new root key signed: the old root keys never vouched.
	next, err := signing.RotateRoot(signing.RotateOptions{
		Current: f.root(t), Roles: []string{"root"}, Remove: []string{signing.DefaultRootHolder},
		Add: []signing.NewKey{{Holder: "mallory", Public: malloryPub}}, Signers: []signature.Signer{mallory},
	})
	if err != nil {
		t.Fatal(err)
	}
	var invalid *problem.InvalidError
	if err := r.UpdateRoot(context.Background(), next, nil); !errors.As(err, &invalid) {
		t.Fatalf("UpdateRoot(not signed by the old root keys) = %v, want InvalidError", err)
	}
	if err := r.UpdateRoot(context.Background(), f.root(t), nil); !errors.Is(err, problem.ErrConflict) {
		t.Fatalf("UpdateRoot(same version) = %v, want ErrConflict", err)
	}
	if _, err := os.Stat(filepath.Join(f.opts.Dir, "metadata", "2.root.json")); err == nil {
		t.Fatal("a refused root was written")
	}
}
