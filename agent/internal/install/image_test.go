package install_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/aftercare/aftercare/firmware"
)

// writeFirmwareLike writes n bytes of deterministic content that compresses
// like a root file system: blocks of noise (compressed binaries), runs of
// zeros (free space), text, and earlier blocks repeated with small changes.
func writeFirmwareLike(w io.Writer, n int64, seed uint64) error {
	const block = 64 << 10
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'f', 'w'}))
	text := []byte(strings.Repeat("int pump_rate(struct channel *c) { return c->ml_per_h * SCALE; }\n", block/64+1))[:block]
	buf := make([]byte, block)
	var prev [][]byte
	for written := int64(0); written < n; {
		switch k := rng.IntN(10); {
		case k < 4: // noise
			for i := 0; i < block; i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8; j++ {
					buf[i+j] = byte(v >> (8 * j))
				}
			}
		case k < 6: // free space
			clear(buf)
		case k < 8: // text
			copy(buf, text)
			buf[rng.IntN(block)] = byte(rng.Uint32())
		default: // an earlier block, lightly changed
			if len(prev) == 0 {
				clear(buf)
				break
			}
			copy(buf, prev[rng.IntN(len(prev))])
			for range 16 {
				buf[rng.IntN(block)] = byte(rng.Uint32())
			}
		}
		if len(prev) < 64 {
			prev = append(prev, bytes.Clone(buf))
		}
		m := min(int64(block), n-written)
		if _, err := w.Write(buf[:m]); err != nil {
			return err
		}
		written += m
	}
	return nil
}

// encodeFrames compresses raw as independent zstd frames of frameBytes
// each, as firmware.Encoder does with its 4 MiB frames; tests use smaller
// frames to get more boundaries from a small image.
func encodeFrames(t testing.TB, raw []byte, frameBytes int) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var out []byte
	for off := 0; off < len(raw); off += frameBytes {
		out = enc.EncodeAll(raw[off:min(off+frameBytes, len(raw))], out)
	}
	return out
}

// describe returns the image description of stored, whose raw form is raw.
func describe(c firmware.Compression, stored, raw []byte) firmware.Image {
	s, r := sha256.Sum256(stored), sha256.Sum256(raw)
	return firmware.Image{Compression: c, Length: int64(len(stored)), SHA256: hex.EncodeToString(s[:]),
		RawLength: int64(len(raw)), RawSHA256: hex.EncodeToString(r[:])}
}

// imageServer serves one stored image with Range support
// (http.ServeContent) and remembers the Range header of each request.
type imageServer struct {
	*httptest.Server
	mu     sync.Mutex
	ranges []string // guarded by mu
}

func newImageServer(t testing.TB, stored []byte, handler func(w http.ResponseWriter, r *http.Request) bool) *imageServer {
	t.Helper()
	s := &imageServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.ranges = append(s.ranges, r.Header.Get("Range"))
		s.mu.Unlock()
		if handler != nil && handler(w, r) {
			return
		}
		http.ServeContent(w, r, "image.zst", time.Time{}, bytes.NewReader(stored))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *imageServer) Ranges() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}
