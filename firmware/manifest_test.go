package firmware_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/firmware"
)

func readSeeds(tb testing.TB, dir string) [][]byte {
	tb.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil || len(names) == 0 {
		tb.Fatalf("no seeds in %s: %v", dir, err)
	}
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func validManifest(t *testing.T) *firmware.Manifest {
	t.Helper()
	b, err := os.ReadFile("testdata/manifest/valid.json")
	if err != nil {
		t.Fatal(err)
	}
	m, err := firmware.ParseManifest(b)
	if err != nil {
		t.Fatalf("ParseManifest(valid.json) = %v", err)
	}
	return m
}

func TestParseManifestFiles(t *testing.T) {
	tests := []struct {
		file    string
		wantErr string // "" for valid
	}{
		{"valid.json", ""},
		{"neg-length.json", "image length -5 must be positive"},
		{"unknown-field.json", `unknown field "rollback"`},
		{"trailing-data.json", "trailing data"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata/manifest", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			_, err = firmware.ParseManifest(b)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("ParseManifest() = %v, want nil", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("ParseManifest() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestManifestValidate(t *testing.T) {
	tests := []struct {
		name    string
		modify  func(*firmware.Manifest)
		wantErr string
	}{
		{"valid", func(*firmware.Manifest) {}, ""},
		{"wrong-format", func(m *firmware.Manifest) { m.Format = 2 }, "format 2 is not supported"},
		{"bad-version", func(m *firmware.Manifest) { m.Version = "v2.1" }, "not a semantic version"},
		{"no-models", func(m *firmware.Manifest) { m.Models = nil }, "at least one"},
		{"model-with-slash", func(m *firmware.Manifest) { m.Models = []string{"a/b"} }, `models[0] "a/b"`},
		{"duplicate-model", func(m *firmware.Manifest) { m.Models = []string{"x", "x"} }, "listed twice"},
		{"product-uppercase", func(m *firmware.Manifest) { m.Product = "Pump" }, "manifest product"},
		{"unknown-compression", func(m *firmware.Manifest) { m.Image.Compression = "lzma" }, "compression"},
		{"short-digest", func(m *firmware.Manifest) { m.Image.SHA256 = "abc" }, "64 lower-case hex"},
		{"uncompressed-mismatch", func(m *firmware.Manifest) { m.Image.Compression = firmware.CompressionNone }, "uncompressed"},
		{"zero-sbom", func(m *firmware.Manifest) { m.SBOM.Length = 0 }, "sbom length"},
		{"huge-notes", func(m *firmware.Manifest) { m.Notes = strings.Repeat("x", 20000) }, "notes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest(t)
			tt.modify(m)
			err := m.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	m := validManifest(t)
	m.Version, m.Models, m.Image.Length = "x", nil, 0
	err := m.Validate()
	for _, want := range []string{"version", "models", "image length"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}

func TestAppliesTo(t *testing.T) {
	m := validManifest(t) // models pump-x1, pump-x2; revision rev-b
	for _, tt := range []struct {
		model, rev string
		want       bool
	}{
		{"pump-x1", "rev-b", true},
		{"pump-x2", "rev-b", true},
		{"pump-x1", "rev-a", false},
		{"ct-scanner", "rev-b", false},
	} {
		if got := m.AppliesTo(tt.model, tt.rev); got != tt.want {
			t.Errorf("AppliesTo(%s, %s) = %v, want %v", tt.model, tt.rev, got, tt.want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"1.0.0", "1.0.0", 0},
		{"1.0.0", "1.1.0", -1},
		{"1.10.0", "1.9.0", 1},
		{"2.0.0-rc.1", "2.0.0", -1},
		{"2.0.0+build.7", "2.0.0", 0},
	} {
		if got := firmware.CompareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareVersions(%s, %s) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	for _, b := range readSeeds(f, "testdata/manifest") {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := firmware.ParseManifest(b)
		if err != nil {
			return
		}
		again, err := firmware.ParseManifest(m.Marshal())
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip changed the manifest: %v", err)
		}
	})
}
