package firmware

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

// maxZstdWindow bounds the decoder's memory whatever the stream header asks
// for; images are built with windows of 8 MiB or less (zstd's default level
// uses 8 MiB at most).
const maxZstdWindow = 8 << 20 // 8 MiB

// ErrMismatch is wrapped by every error that means the image bytes do not
// match their signed description: wrong length, wrong digest, or a stream
// that does not decode.
var ErrMismatch = errors.New("firmware: image does not match its signed description")

// A MismatchError says which part of the image failed to match.
// errors.Is(err, ErrMismatch) holds for every MismatchError.
type MismatchError struct {
	What   string // "stored length", "truncated", "stored sha256", "raw length", "raw sha256", "decode"
	Detail string
}

func (e *MismatchError) Error() string { return "image " + e.What + ": " + e.Detail }
func (e *MismatchError) Is(target error) bool {
	return target == ErrMismatch || (target == ErrTruncated && e.What == "truncated")
}

// Decoder returns a reader of the raw image encoded in r with compression c.
// Close it to release the decoder's memory.
func Decoder(c Compression, r io.Reader) (io.ReadCloser, error) {
	switch c {
	case CompressionNone:
		return io.NopCloser(r), nil
	case CompressionGzip:
		return gzip.NewReader(r)
	case CompressionZstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}
	return nil, fmt.Errorf("unknown compression %q", c)
}

// Encoder returns a writer that encodes into w with compression c. Close it
// to flush the stream; closing does not close w. A zstd stream is a run of
// independent frames of FrameBytes of raw image each, so that an install
// can resume at a frame boundary (see StreamImage).
func Encoder(c Compression, w io.Writer) (io.WriteCloser, error) {
	switch c {
	case CompressionNone:
		return nopWriteCloser{w}, nil
	case CompressionGzip:
		return gzip.NewWriter(w), nil
	case CompressionZstd:
		enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(maxZstdWindow), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return &frameWriter{w: w, enc: enc}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", c)
}

// A frameWriter compresses each FrameBytes of input as one zstd frame.
type frameWriter struct {
	w     io.Writer
	enc   *zstd.Encoder
	raw   []byte // the frame being filled
	out   []byte // the last frame encoded
	wrote bool
}

func (f *frameWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if f.raw == nil {
			f.raw = make([]byte, 0, FrameBytes)
		}
		k := min(len(p), FrameBytes-len(f.raw))
		f.raw = append(f.raw, p[:k]...)
		p, n = p[k:], n+k
		if len(f.raw) == FrameBytes {
			if err := f.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (f *frameWriter) flush() error {
	f.out = f.enc.EncodeAll(f.raw, f.out[:0])
	f.raw, f.wrote = f.raw[:0], true
	if _, err := f.w.Write(f.out); err != nil {
		return fmt.Errorf("write zstd frame: %w", err)
	}
	return nil
}

// Close writes the last, partial frame (or an empty frame for an empty
// image).
func (f *frameWriter) Close() error {
	if len(f.raw) > 0 || !f.wrote {
		if err := f.flush(); err != nil {
			return err
		}
	}
	return f.enc.Close()
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// DescribeImage reads the stored image at path, encoded with compression c,
// and returns its description for a manifest.
func DescribeImage(path string, c Compression) (Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return Image{}, fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	stored := newMeter(f)
	dec, err := Decoder(c, stored)
	if err != nil {
		return Image{}, fmt.Errorf("decode image %s: %w", path, err)
	}
	defer dec.Close()
	raw := newMeter(dec)
	if _, err := io.Copy(io.Discard, raw); err != nil {
		if stored.err != nil {
			return Image{}, fmt.Errorf("read image %s: %w", path, stored.err)
		}
		return Image{}, fmt.Errorf("decode image %s as %s: %w", path, c, err)
	}
	if _, err := io.Copy(io.Discard, stored); err != nil {
		return Image{}, fmt.Errorf("read image %s: %w", path, err)
	}
	return Image{
		Compression: c,
		Length:      stored.n, SHA256: stored.sum(),
		RawLength: raw.n, RawSHA256: raw.sum(),
	}, nil
}

// WriteImage decodes the stored image read from r and writes the raw image to
// w, checking while it streams that neither form exceeds its signed length and
// at the end that both digests match img. It reads at most img.Length+1
// bytes from r whatever r holds. On a mismatch the error wraps ErrMismatch and
// w has received unverified bytes: the caller must not use them. A failure to
// read r or to write w is returned wrapped, without ErrMismatch. It is
// StreamImage from the beginning, without boundaries.
func WriteImage(w io.Writer, r io.Reader, img Image) error {
	return StreamImage(context.Background(), w, r, img, StreamOptions{})
}

// A meter counts and hashes what is read through it and remembers the first
// error of its source other than io.EOF.
type meter struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func newMeter(r io.Reader) *meter { return &meter{r: r, h: sha256.New()} }

func (m *meter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.h.Write(p[:n])
	m.n += int64(n)
	if err != nil && err != io.EOF && m.err == nil {
		m.err = err
	}
	return n, err
}

func (m *meter) sum() string { return hex.EncodeToString(m.h.Sum(nil)) }

func sum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
