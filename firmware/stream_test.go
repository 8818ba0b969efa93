package firmware_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/aftercare/aftercare/firmware"
)

// boundaries streams the whole image and returns its frame boundaries.
func boundaries(t *testing.T, stored []byte, img firmware.Image) []firmware.Position {
	t.Helper()
	var at []firmware.Position
	err := firmware.StreamImage(context.Background(), io.Discard, bytes.NewReader(stored), img, firmware.StreamOptions{
		AtBoundary: func(p firmware.Position) error { at = append(at, p); return nil },
	})
	if err != nil {
		t.Fatalf("StreamImage() = %v", err)
	}
	return at
}

func TestStreamImageResumesAtEveryBoundary(t *testing.T) {
	tests := []struct {
		c    firmware.Compression
		size int
		want int // boundaries
	}{
		{firmware.CompressionZstd, 5 << 20, 1}, // frames of firmware.FrameBytes
		{firmware.CompressionNone, 5 << 20, 1},
		{firmware.CompressionGzip, 1 << 20, 0}, // gzip cannot restart mid-stream
	}
	for _, tt := range tests {
		t.Run(string(tt.c), func(t *testing.T) {
			path, img, raw := testImage(t, tt.size, tt.c)
			stored, _ := os.ReadFile(path)
			at := boundaries(t, stored, img)
			if len(at) != tt.want {
				t.Fatalf("%d boundaries, want %d", len(at), tt.want)
			}
			for _, p := range at {
				if p.Raw%firmware.FrameBytes != 0 {
					t.Fatalf("boundary at raw byte %d, not a multiple of FrameBytes", p.Raw)
				}
				var out bytes.Buffer
				err := firmware.StreamImage(context.Background(), &out, bytes.NewReader(stored[p.Stored:]), img, firmware.StreamOptions{From: &p})
				if err != nil {
					t.Fatalf("StreamImage(from %+v) = %v", p, err)
				}
				if !bytes.Equal(out.Bytes(), raw[p.Raw:]) {
					t.Fatalf("StreamImage(from raw byte %d) wrote different bytes", p.Raw)
				}
			}
		})
	}
}

func TestStreamImageRefusesABadResumePoint(t *testing.T) {
	path, img, _ := testImage(t, 5<<20, firmware.CompressionZstd)
	stored, _ := os.ReadFile(path)
	at := boundaries(t, stored, img)
	h := sha256.New()
	h.Write([]byte("other bytes"))
	otherState, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
	tests := []struct {
		name string
		p    func() firmware.Position
		want error // nil: any error
	}{
		// A hash state of other bytes: the digests cannot match.
		{"stored-hash-of-other-bytes", func() firmware.Position { p := at[0]; p.StoredHash = otherState; return p }, firmware.ErrMismatch},
		{"raw-hash-of-other-bytes", func() firmware.Position { p := at[0]; p.RawHash = otherState; return p }, firmware.ErrMismatch},
		{"garbage-hash-state", func() firmware.Position { p := at[0]; p.StoredHash = []byte("not a sha256 state"); return p }, nil},
		{"past-the-end", func() firmware.Position { p := at[0]; p.Stored = img.Length + 1; return p }, nil},
		{"negative", func() firmware.Position { p := at[0]; p.Raw = -1; return p }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p()
			start := min(max(p.Stored, 0), img.Length)
			err := firmware.StreamImage(context.Background(), io.Discard, bytes.NewReader(stored[start:]), img, firmware.StreamOptions{From: &p})
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("StreamImage(from %s) = %v, want an error (%v)", tt.name, err, tt.want)
			}
		})
	}
}

func TestStreamImageReadsOtherZstdStreams(t *testing.T) {
	raw := bytes.Repeat([]byte("a single-frame image from an older bundle\n"), 50_000)
	// One frame with a streaming encoder (older bundles), then a skippable
	// frame (RFC 8878 §3.1.2) carrying no image data.
	var stored bytes.Buffer
	enc, _ := zstd.NewWriter(&stored)
	enc.Write(raw)
	enc.Close()
	stored.Write([]byte{0x50, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 'x', 'y', 'z'})
	path := t.TempDir() + "/image"
	os.WriteFile(path, stored.Bytes(), 0o644)
	img, err := firmware.DescribeImage(path, firmware.CompressionZstd)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := firmware.WriteImage(&out, bytes.NewReader(stored.Bytes()), img); err != nil || !bytes.Equal(out.Bytes(), raw) {
		t.Fatalf("WriteImage(single frame + skippable frame) = %v, same bytes %t", err, bytes.Equal(out.Bytes(), raw))
	}
}

func TestStreamImageTruncationIsTold(t *testing.T) {
	path, img, _ := testImage(t, 300_000, firmware.CompressionZstd)
	stored, _ := os.ReadFile(path)
	for _, cut := range []int{0, 3, 10, len(stored) / 2, len(stored) - 1} {
		err := firmware.WriteImage(io.Discard, bytes.NewReader(stored[:cut]), img)
		if !errors.Is(err, firmware.ErrTruncated) || !errors.Is(err, firmware.ErrMismatch) {
			t.Fatalf("WriteImage(first %d of %d bytes) = %v, want ErrTruncated", cut, len(stored), err)
		}
	}
	bad := bytes.Clone(stored)
	bad[len(bad)/2] ^= 1
	if err := firmware.WriteImage(io.Discard, bytes.NewReader(bad), img); errors.Is(err, firmware.ErrTruncated) || !errors.Is(err, firmware.ErrMismatch) {
		t.Fatalf("WriteImage(altered) = %v, want a mismatch that is not a truncation", err)
	}
}

func FuzzStreamImage(f *testing.F) {
	raw := []byte(strings.Repeat("fuzz seed image ", 4000))
	var stored bytes.Buffer
	enc, _ := firmware.Encoder(firmware.CompressionZstd, &stored)
	enc.Write(raw)
	enc.Close()
	path := f.TempDir() + "/image"
	os.WriteFile(path, stored.Bytes(), 0o644)
	img, err := firmware.DescribeImage(path, firmware.CompressionZstd)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(stored.Bytes())
	f.Add([]byte{0x28, 0xB5, 0x2F, 0xFD, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		err := firmware.WriteImage(io.Discard, bytes.NewReader(b), img)
		if (err == nil) != bytes.Equal(b, stored.Bytes()) {
			t.Fatalf("WriteImage() = %v for %d bytes", err, len(b))
		}
	})
}
