package firmware_test

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/firmware"
)

// testImage writes a raw image of n bytes (half noise, half pattern) and
// its stored form with compression c, and returns the stored path and its
// description.
func testImage(t *testing.T, n int, c firmware.Compression) (string, firmware.Image, []byte) {
	t.Helper()
	raw := make([]byte, n)
	rand.Read(raw[:n/2])
	for i := n / 2; i < n; i++ {
		raw[i] = byte(i % 7)
	}
	var stored bytes.Buffer
	enc, err := firmware.Encoder(c, &stored)
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(raw)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(path, stored.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := firmware.DescribeImage(path, c)
	if err != nil {
		t.Fatalf("DescribeImage() = %v", err)
	}
	if img.RawLength != int64(n) {
		t.Fatalf("DescribeImage() raw length = %d, want %d", img.RawLength, n)
	}
	return path, img, raw
}

func TestWriteImageRoundTrip(t *testing.T) {
	for _, c := range []firmware.Compression{firmware.CompressionNone, firmware.CompressionGzip, firmware.CompressionZstd} {
		t.Run(string(c), func(t *testing.T) {
			path, img, raw := testImage(t, 300_000, c)
			f, _ := os.Open(path)
			defer f.Close()
			var out bytes.Buffer
			if err := firmware.WriteImage(&out, f, img); err != nil {
				t.Fatalf("WriteImage() = %v", err)
			}
			if !bytes.Equal(out.Bytes(), raw) {
				t.Fatal("WriteImage() wrote different bytes than the raw image")
			}
		})
	}
}

// endless is a reader that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0
	}
	return len(p), nil
}

func TestWriteImageRefusesTamperedStreams(t *testing.T) {
	path, img, _ := testImage(t, 200_000, firmware.CompressionZstd)
	stored, _ := os.ReadFile(path)
	flipped := bytes.Clone(stored)
	flipped[len(flipped)/2] ^= 0x01
	tests := []struct {
		name string
		r    io.Reader
		img  func(firmware.Image) firmware.Image
		what string
	}{
		{"one-byte-changed", bytes.NewReader(flipped), nil, ""},
		{"truncated", bytes.NewReader(stored[:len(stored)-10]), nil, ""},
		{"trailing-bytes", io.MultiReader(bytes.NewReader(stored), strings.NewReader("extra")), nil, "stored length"},
		{"endless-data", io.MultiReader(bytes.NewReader(stored), endless{}), nil, "stored length"},
		{"wrong-signed-digest", bytes.NewReader(stored), func(i firmware.Image) firmware.Image {
			i.SHA256 = strings.Repeat("0", 64)
			return i
		}, "stored sha256"},
		{"raw-longer-than-signed", bytes.NewReader(stored), func(i firmware.Image) firmware.Image {
			i.RawLength -= 1
			return i
		}, "raw length"},
		{"not-zstd", strings.NewReader(strings.Repeat("garbage!", 100)), nil, "decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := img
			if tt.img != nil {
				want = tt.img(img)
			}
			err := firmware.WriteImage(io.Discard, tt.r, want)
			if !errors.Is(err, firmware.ErrMismatch) {
				t.Fatalf("WriteImage() = %v, want ErrMismatch", err)
			}
			if tt.what != "" && !strings.Contains(err.Error(), tt.what) {
				t.Fatalf("WriteImage() = %v, want it to name %q", err, tt.what)
			}
		})
	}
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("no space left on device")
	}
	w.after -= len(p)
	return len(p), nil
}

type failingReader struct{ r io.Reader }

func (f failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errors.New("connection reset by peer")
	}
	return n, err
}

func TestWriteImageTellsIOFailuresFromMismatches(t *testing.T) {
	path, img, _ := testImage(t, 200_000, firmware.CompressionZstd)
	stored, _ := os.ReadFile(path)
	err := firmware.WriteImage(&failingWriter{after: 1000}, bytes.NewReader(stored), img)
	if err == nil || errors.Is(err, firmware.ErrMismatch) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("WriteImage(full disk) = %v, want a write error that is not a mismatch", err)
	}
	err = firmware.WriteImage(io.Discard, failingReader{bytes.NewReader(stored[:5000])}, img)
	if err == nil || errors.Is(err, firmware.ErrMismatch) || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("WriteImage(dropped connection) = %v, want a read error that is not a mismatch", err)
	}
}

func TestBundleRoundTrip(t *testing.T) {
	path, img, _ := testImage(t, 100_000, firmware.CompressionZstd)
	sbomPath := filepath.Join(t.TempDir(), "sbom.json")
	os.WriteFile(sbomPath, []byte(`{"bomFormat":"CycloneDX"}`), 0o644)
	sbom, _ := firmware.DescribeImage(sbomPath, firmware.CompressionNone)
	m := &firmware.Manifest{Format: 1, Product: "pump", Version: "1.2.3", Models: []string{"pump-x1"}, Image: img,
		SBOM: &firmware.Artifact{Length: sbom.Length, SHA256: sbom.SHA256}}
	var bundle bytes.Buffer
	if err := firmware.WriteBundle(&bundle, m, firmware.BundleSource{Image: path, SBOM: sbomPath}); err != nil {
		t.Fatalf("WriteBundle() = %v", err)
	}
	br, err := firmware.OpenBundle(bytes.NewReader(bundle.Bytes()))
	if err != nil {
		t.Fatalf("OpenBundle() = %v", err)
	}
	var gotSBOM, gotImage bytes.Buffer
	if err := br.Extract(&gotSBOM, &gotImage); err != nil {
		t.Fatalf("Extract() = %v", err)
	}
	want, _ := os.ReadFile(path)
	if !bytes.Equal(gotImage.Bytes(), want) || gotSBOM.String() != `{"bomFormat":"CycloneDX"}` {
		t.Fatal("Extract() returned different contents")
	}
	if br.Manifest.TargetPath() != "pump/1.2.3/image.zst" {
		t.Fatalf("TargetPath() = %s", br.Manifest.TargetPath())
	}
}

// tarOf builds a tar with the given entries, in order.
func tarOf(entries ...[2]string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		tw.WriteHeader(&tar.Header{Name: e[0], Mode: 0o644, Size: int64(len(e[1])), Typeflag: tar.TypeReg})
		tw.Write([]byte(e[1]))
	}
	tw.Close()
	return b.Bytes()
}

func TestMalformedBundles(t *testing.T) {
	manifest, _ := os.ReadFile("testdata/manifest/valid.json")
	tests := []struct {
		name   string
		bundle []byte
	}{
		{"empty", nil},
		{"not-a-tar", []byte("this is not a tar file at all, just text.")},
		{"image-first", tarOf([2]string{"image", "xx"}, [2]string{"manifest.json", string(manifest)})},
		{"bad-manifest", tarOf([2]string{"manifest.json", `{"format":1}`})},
		{"missing-image", tarOf([2]string{"manifest.json", string(manifest)}, [2]string{"sbom.json", "0123456789"})},
		{"wrong-sbom-digest", tarOf([2]string{"manifest.json", string(manifest)}, [2]string{"sbom.json", "9876543210"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br, err := firmware.OpenBundle(bytes.NewReader(tt.bundle))
			if err == nil {
				err = br.Extract(io.Discard, io.Discard)
			}
			if !errors.Is(err, firmware.ErrBadBundle) {
				t.Fatalf("bundle %s: got %v, want ErrBadBundle", tt.name, err)
			}
		})
	}
}

func FuzzOpenBundle(f *testing.F) {
	manifest, _ := os.ReadFile("testdata/manifest/valid.json")
	f.Add(tarOf([2]string{"manifest.json", string(manifest)}, [2]string{"sbom.json", "0123456789"}))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, b []byte) {
		br, err := firmware.OpenBundle(bytes.NewReader(b))
		if err != nil {
			return
		}
		if err := br.Manifest.Validate(); err != nil {
			t.Fatalf("OpenBundle accepted an invalid manifest: %v", err)
		}
		br.Extract(io.Discard, io.Discard)
	})
}
