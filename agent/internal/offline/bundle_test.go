package offline

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

const testDevice = "d7b1a2c3-0000-4000-8000-0000000000aa"

type file struct {
	name, body string
	typ        byte // 0 means a regular file
}

func manifest() file {
	m := protocol.OfflineManifest{Format: protocol.OfflineFormat, DeviceID: testDevice, ReleaseID: "r1",
		Target: "pump/1.1.0/image.zst", Version: "1.1.0", Created: time.Unix(0, 0).UTC()}
	return file{name: protocol.OfflineManifestName, body: string(m.Marshal())}
}

func writeBundle(t *testing.T, files ...file) string {
	t.Helper()
	return writeBundleTo(t, t.TempDir(), files...)
}

func writeBundleTo(t testing.TB, dir string, files ...file) string {
	t.Helper()
	p := filepath.Join(dir, "bundle.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, fl := range files {
		h := &tar.Header{Name: fl.name, Mode: 0o644, Size: int64(len(fl.body)), Typeflag: tar.TypeReg}
		if fl.typ != 0 {
			h.Typeflag, h.Size, h.Linkname = fl.typ, 0, "/etc/passwd"
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if fl.typ == 0 {
			io.WriteString(tw, fl.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpen(t *testing.T) {
	ts := file{name: "tuf/rollout/metadata/timestamp.json", body: `{"signed":{}}`}
	img := file{name: "tuf/release/targets/pump/1.1.0/ab.image.zst", body: strings.Repeat("x", 3000)}
	tests := []struct {
		name    string
		files   []file
		wantErr string
	}{
		{"valid", []file{manifest(), ts, img}, ""},
		{"no-manifest", []file{ts, img}, "no bundle.json"},
		{"bad-manifest", []file{{name: protocol.OfflineManifestName, body: `{"format":1,"device_id":"../x"}`}}, "not a valid ID"},
		{"unknown-manifest-field", []file{{name: protocol.OfflineManifestName, body: `{"format":1,"evil":true}`}}, "unknown field"},
		{"duplicate-entry", []file{manifest(), ts, {name: ts.name, body: "other"}}, "appears twice"},
		{"path-traversal", []file{manifest(), {name: "tuf/release/metadata/../../../etc/passwd", body: "x"}}, "not a repository file"},
		{"absolute-path", []file{manifest(), {name: "/tuf/release/metadata/root.json", body: "x"}}, "not a repository file"},
		{"outside-tuf", []file{manifest(), {name: "etc/shadow", body: "x"}}, "not a repository file"},
		{"symlink", []file{manifest(), {name: "tuf/release/metadata/2.root.json", typ: tar.TypeSymlink}}, "not a regular file"},
		{"not-a-tar", nil, "not an offline bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeBundle(t, tt.files...)
			if tt.files == nil {
				os.WriteFile(path, []byte(strings.Repeat("garbage!", 200)), 0o600)
			}
			b, err := Open(path)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Open() = %v", err)
				}
				b.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Open(%s) = %v, want an error containing %q", tt.name, err, tt.wantErr)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	body := strings.Repeat("0123456789", 500)
	b, err := Open(writeBundle(t, manifest(), file{name: "tuf/release/targets/pump/ab.img", body: body},
		file{name: "tuf/release/metadata/timestamp.json", body: `{"ts":1}`}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if b.Manifest.DeviceID != testDevice || b.Manifest.Version != "1.1.0" {
		t.Fatalf("Manifest = %+v", b.Manifest)
	}
	tests := []struct {
		name       string
		url, rng   string
		wantStatus int
		wantBody   string
	}{
		{"metadata", BaseURL + "/tuf/release/metadata/timestamp.json", "", 200, `{"ts":1}`},
		{"image", BaseURL + "/tuf/release/targets/pump/ab.img", "", 200, body},
		{"resume", BaseURL + "/tuf/release/targets/pump/ab.img", "bytes=4990-", 206, body[4990:]},
		{"range-past-end", BaseURL + "/tuf/release/targets/pump/ab.img", "bytes=5000-", 416, ""},
		{"range-form-unsupported", BaseURL + "/tuf/release/targets/pump/ab.img", "bytes=0-10", 416, ""},
		{"missing", BaseURL + "/tuf/release/metadata/3.root.json", "", 404, "not in the offline bundle\n"},
		{"manifest-not-served", BaseURL + "/bundle.json", "", 404, "not in the offline bundle\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, tt.url, nil)
			if tt.rng != "" {
				req.Header.Set("Range", tt.rng)
			}
			res, err := b.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tt.wantStatus || string(got) != tt.wantBody {
				t.Fatalf("GET %s (Range %q) = %d %.40q, want %d %.40q", tt.url, tt.rng, res.StatusCode, got, tt.wantStatus, tt.wantBody)
			}
			if res.StatusCode/100 == 2 && res.ContentLength != int64(len(tt.wantBody)) {
				t.Fatalf("Content-Length = %d, want %d", res.ContentLength, len(tt.wantBody))
			}
		})
	}
	// Nothing but the bundle's own name is answered: the agent never
	// reaches a network through it.
	if _, err := b.Client().Get("http://fleet.example.com/tuf/release/metadata/timestamp.json"); err == nil {
		t.Fatal("GET of another host succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, BaseURL+"/tuf/release/metadata/timestamp.json", nil)
	if _, err := b.Client().Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("GET with a cancelled context = %v, want context.Canceled", err)
	}
}

// FuzzOpen feeds arbitrary files to Open: it must refuse or index them
// without panicking, and every indexed entry must lie inside the file.
func FuzzOpen(f *testing.F) {
	seed := func(files ...file) []byte {
		b, err := os.ReadFile(writeBundleTo(f, f.TempDir(), files...))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(manifest(), file{name: "tuf/release/metadata/timestamp.json", body: `{}`}))
	f.Add(seed(manifest()))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p := filepath.Join(t.TempDir(), "b.tar")
		os.WriteFile(p, raw, 0o600)
		b, err := Open(p)
		if err != nil {
			return
		}
		defer b.Close()
		for name, e := range b.files {
			if e.off < 0 || e.size < 0 || e.off+e.size > int64(len(raw)) || !protocol.ValidOfflineEntry(name) {
				t.Fatalf("entry %q at %d+%d lies outside the %d-byte file or is unsafe", name, e.off, e.size, len(raw))
			}
		}
	})
}
