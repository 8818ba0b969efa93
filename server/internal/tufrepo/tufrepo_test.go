package tufrepo_test

import (
	"context"
	"errors"
	"log/slog"
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

func newFixture(t *testing.T) *fixture {
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
	f.signT = load(signing.TargetsKeyFile)
	f.opts = tufrepo.Options{Dir: t.TempDir(), SnapshotSigner: load(signing.SnapshotKeyFile), TimestampSigner: load(signing.TimeKeyFile),
		Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return f.now }}
	return f
}

func (f *fixture) root(t *testing.T) []byte {
	b, err := os.ReadFile(filepath.Join(f.keys, signing.RootFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) open(t *testing.T) *tufrepo.Repo {
	t.Helper()
	if err := tufrepo.Init(f.opts, f.root(t)); err != nil {
		t.Fatal(err)
	}
	r, err := tufrepo.Open(f.opts)
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

func TestInitRefusesRootWithoutTheServerKeys(t *testing.T) {
	f := newFixture(t)
	other := newFixture(t)
	if err := tufrepo.Init(other.opts, f.root(t)); err == nil {
		t.Fatal("Init accepted a root that does not list this server's online keys")
	}
	if err := tufrepo.Init(f.opts, []byte(`{"signed":{}}`)); err == nil {
		t.Fatal("Init accepted malformed root metadata")
	}
	if _, err := tufrepo.Open(f.opts); !errors.Is(err, tufrepo.ErrNotInitialized) {
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
	if err := r.Publish(first, nil); err != nil {
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
	entry, _ := signing.TargetEntry(&img)
	m.Signed.Targets[entry.Path] = entry
	m.Sign(f.signT)
	b, _ := m.ToBytes(false)
	parsed, err := r.ParseTargets(b)
	if err != nil {
		t.Fatal(err)
	}
	var invalid *problem.InvalidError
	if err := r.Publish(parsed, nil); !errors.As(err, &invalid) {
		t.Fatalf("Publish(no file for a listed target) = %v, want an InvalidError", err)
	}
	wrong := filepath.Join(f.opts.Dir, "wrong")
	os.WriteFile(wrong, []byte("abd"), 0o644)
	if err := r.Publish(parsed, map[string]tufrepo.Blob{entry.Path: {Path: wrong}}); !errors.As(err, &invalid) {
		t.Fatalf("Publish(file with the wrong digest) = %v, want an InvalidError", err)
	}
	if cur, _ := r.CurrentTargets(); cur != nil {
		t.Fatal("a refused publish changed the current targets")
	}
	right := filepath.Join(f.opts.Dir, "right")
	os.WriteFile(right, []byte("abc"), 0o644)
	if err := r.Publish(parsed, map[string]tufrepo.Blob{entry.Path: {Path: right}}); err != nil {
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
	if err := r.Publish(first, nil); err != nil {
		t.Fatal(err)
	}
	v1 := readTimestamp(t, f).Signed.Version
	f.now = f.now.Add(6 * time.Hour) // three quarters of a day left
	r.Refresh()
	if v := readTimestamp(t, f).Signed.Version; v != v1 {
		t.Fatalf("timestamp re-signed with most of its validity left (v%d -> v%d)", v1, v)
	}
	f.now = f.now.Add(7 * time.Hour) // 11h left of 24h
	r.Refresh()
	ts := readTimestamp(t, f)
	if ts.Signed.Version != v1+1 || !ts.Signed.Expires.After(f.now.Add(23*time.Hour)) {
		t.Fatalf("timestamp after refresh = v%d expiring %s; want v%d valid for a day", ts.Signed.Version, ts.Signed.Expires, v1+1)
	}
	f.now = f.now.Add(5 * 24 * time.Hour) // the snapshot (7 days) is past half
	r.Refresh()
	snap, err := new(metadata.Metadata[metadata.SnapshotType]).FromFile(filepath.Join(f.opts.Dir, "metadata", "2.snapshot.json"))
	if err != nil || !snap.Signed.Expires.After(f.now.Add(6*24*time.Hour)) {
		t.Fatalf("snapshot not re-signed: %v", err)
	}
}
