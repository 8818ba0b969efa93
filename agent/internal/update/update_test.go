package update_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/agent/internal/update"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/signing"
)

// repo is a release repository built on disk and served over HTTP, with
// every role's key at hand so tests can publish what an attacker would.
type repo struct {
	t       *testing.T
	dir     string
	srv     *httptest.Server
	keys    map[string]signature.Signer
	root    *metadata.Metadata[metadata.RootType]
	targets *metadata.Metadata[metadata.TargetsType]
	snapV   int64
	tsV     int64
}

func newRepo(t *testing.T) *repo {
	t.Helper()
	keysDir := t.TempDir()
	if _, err := signing.InitRepository(context.Background(), signing.InitOptions{Dir: keysDir}); err != nil {
		t.Fatal(err)
	}
	r := &repo{t: t, dir: t.TempDir(), keys: map[string]signature.Signer{}}
	for role, file := range map[string]string{"root": signing.RootKeyFile, "targets": signing.TargetsKeyFile, "snapshot": signing.SnapshotKeyFile, "timestamp": signing.TimeKeyFile} {
		s, err := signing.LoadSigner(context.Background(), filepath.Join(keysDir, file), nil)
		if err != nil {
			t.Fatal(err)
		}
		r.keys[role] = s
	}
	var err error
	if r.root, err = new(metadata.Metadata[metadata.RootType]).FromFile(filepath.Join(keysDir, signing.RootFile)); err != nil {
		t.Fatal(err)
	}
	if r.targets, err = new(metadata.Metadata[metadata.TargetsType]).FromFile(filepath.Join(keysDir, signing.TargetsFile)); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(r.dir, "metadata"), 0o755)
	r.write("metadata/1.root.json", r.root)
	r.srv = httptest.NewServer(http.FileServer(http.Dir(r.dir)))
	t.Cleanup(r.srv.Close)
	return r
}

type toBytes interface{ ToBytes(bool) ([]byte, error) }

func (r *repo) write(name string, m toBytes) []byte {
	b, err := m.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.dir, name), b, 0o644); err != nil {
		r.t.Fatal(err)
	}
	return b
}

// release adds a release to the targets metadata and stores its image.
func (r *repo) release(version string, models ...string) firmware.Manifest {
	raw := []byte("image of " + version)
	sum := sha256.Sum256(raw)
	h := hex.EncodeToString(sum[:])
	m := firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: models,
		Image: firmware.Image{Compression: firmware.CompressionNone, Length: int64(len(raw)), SHA256: h, RawLength: int64(len(raw)), RawSHA256: h}}
	entry, err := signing.TargetEntry(&m)
	if err != nil {
		r.t.Fatal(err)
	}
	r.targets.Signed.Targets[entry.Path] = entry
	dir := filepath.Join(r.dir, "targets", "pump", version)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, h+".image.img"), raw, 0o644)
	return m
}

// publish signs and writes targets (with signer, default the targets key),
// snapshot and timestamp, the timestamp expiring after tsExpiry.
func (r *repo) publish(targetsSigner signature.Signer, tsExpiry time.Duration) {
	if targetsSigner == nil {
		targetsSigner = r.keys["targets"]
	}
	r.targets.Signed.Version++
	r.targets.ClearSignatures()
	r.targets.Sign(targetsSigner)
	tb := r.write(fmt.Sprintf("metadata/%d.targets.json", r.targets.Signed.Version), r.targets)
	r.snapV++
	snap := metadata.Snapshot(time.Now().Add(24 * time.Hour))
	snap.Signed.Version = r.snapV
	snap.Signed.Meta["targets.json"] = metaFile(r.targets.Signed.Version, tb)
	snap.Sign(r.keys["snapshot"])
	sb := r.write(fmt.Sprintf("metadata/%d.snapshot.json", r.snapV), snap)
	r.tsV++
	ts := metadata.Timestamp(time.Now().Add(tsExpiry))
	ts.Signed.Version = r.tsV
	ts.Signed.Meta["snapshot.json"] = metaFile(r.snapV, sb)
	ts.Sign(r.keys["timestamp"])
	r.write("metadata/timestamp.json", ts)
}

func metaFile(v int64, b []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(b)
	mf := metadata.MetaFile(v)
	mf.Length = int64(len(b))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

func (r *repo) client(t *testing.T) *update.Client {
	t.Helper()
	rootBytes, _ := r.root.ToBytes(false)
	c, err := update.New(update.Options{RepositoryURL: r.srv.URL, BootstrapRoot: rootBytes, CacheDir: t.TempDir(), HTTP: &http.Client{Timeout: 10 * time.Second}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLookupSignedTarget(t *testing.T) {
	r := newRepo(t)
	m := r.release("1.1.0", "pump-x1")
	r.publish(nil, time.Hour)
	got, err := r.client(t).Lookup(context.Background(), m.TargetPath())
	if err != nil {
		t.Fatalf("Lookup() = %v", err)
	}
	if got.Manifest.Version != "1.1.0" || got.Length != m.Image.Length {
		t.Fatalf("Lookup() = %+v, want version 1.1.0 length %d", got, m.Image.Length)
	}
	res, err := http.Get(got.URL)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("GET %s = %v %v; the target URL must point at the stored image", got.URL, res, err)
	}
	res.Body.Close()
}

func TestLookupRefusals(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(r *repo) string // returns the target path to look up
		wantMsg string
	}{
		{"not-in-repository", func(r *repo) string {
			r.release("1.1.0", "pump-x1")
			r.publish(nil, time.Hour)
			return "pump/6.6.6/image.img"
		}, "not in the release repository"},
		{"targets-signed-by-unknown-key", func(r *repo) string {
			m := r.release("1.1.0", "pump-x1")
			r.publish(r.keys["snapshot"], time.Hour) // a server key, not the release key
			return m.TargetPath()
		}, "signature"},
		{"expired-timestamp", func(r *repo) string {
			m := r.release("1.1.0", "pump-x1")
			r.publish(nil, -time.Minute)
			return m.TargetPath()
		}, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRepo(t)
			path := tt.setup(r)
			_, err := r.client(t).Lookup(context.Background(), path)
			if !errors.Is(err, update.ErrRefused) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Lookup() = %v, want a refusal mentioning %q", err, tt.wantMsg)
			}
		})
	}
}

func TestUnreachableRepositoryIsNotARefusal(t *testing.T) {
	r := newRepo(t)
	m := r.release("1.1.0", "pump-x1")
	r.publish(nil, time.Hour)
	c := r.client(t)
	r.srv.Close()
	_, err := c.Lookup(context.Background(), m.TargetPath())
	if err == nil || errors.Is(err, update.ErrRefused) {
		t.Fatalf("Lookup(server down) = %v, want a retryable error", err)
	}
}

func TestCheck(t *testing.T) {
	target := &update.Target{Path: "pump/2.0.0/image.img", Manifest: firmware.Manifest{Version: "2.0.0", Models: []string{"pump-x1"}, HardwareRevisions: []string{"rev-b"}}}
	tests := []struct {
		name, model, rev, running string
		wantMsg                   string
	}{
		{"newer", "pump-x1", "rev-b", "1.9.0", ""},
		{"same", "pump-x1", "rev-b", "2.0.0", ""},
		{"wrong-model", "ct-scanner", "rev-b", "1.0.0", "model mismatch"},
		{"wrong-revision", "pump-x1", "rev-a", "1.0.0", "model mismatch"},
		{"older-version", "pump-x1", "rev-b", "2.1.0", "downgrade"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := update.Check(target, tt.model, tt.rev, tt.running)
			if tt.wantMsg == "" && err != nil {
				t.Fatalf("Check() = %v, want nil", err)
			}
			if tt.wantMsg != "" && (!errors.Is(err, update.ErrRefused) || !strings.Contains(err.Error(), tt.wantMsg)) {
				t.Fatalf("Check() = %v, want a refusal mentioning %q", err, tt.wantMsg)
			}
		})
	}
}
