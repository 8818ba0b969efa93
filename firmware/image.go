package firmware

import (
	"compress/gzip"
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
	What   string // "stored length", "stored sha256", "raw length", "raw sha256", "decode"
	Detail string
}

func (e *MismatchError) Error() string        { return "image " + e.What + ": " + e.Detail }
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }

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
// to flush the stream; closing does not close w.
func Encoder(c Compression, w io.Writer) (io.WriteCloser, error) {
	switch c {
	case CompressionNone:
		return nopWriteCloser{w}, nil
	case CompressionGzip:
		return gzip.NewWriter(w), nil
	case CompressionZstd:
		return zstd.NewWriter(w, zstd.WithWindowSize(maxZstdWindow))
	}
	return nil, fmt.Errorf("unknown compression %q", c)
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
// read r or to write w is returned wrapped, without ErrMismatch.
func WriteImage(w io.Writer, r io.Reader, img Image) error {
	// One byte beyond the signed length is enough to detect endless data.
	stored := newMeter(io.LimitReader(r, img.Length+1))
	dec, err := Decoder(img.Compression, stored)
	if err != nil {
		return streamError(img, stored, nil, &MismatchError{What: "decode", Detail: err.Error()})
	}
	defer dec.Close()
	raw := newMeter(io.LimitReader(dec, img.RawLength+1))
	out := &errWriter{w: w}
	if _, err := io.Copy(out, raw); err != nil {
		return streamError(img, stored, out, &MismatchError{What: "decode", Detail: err.Error()})
	}
	// Drain what the decoder left (trailing bytes after the stream) so the
	// stored digest covers everything the server sent.
	if _, err := io.Copy(io.Discard, stored); err != nil {
		return streamError(img, stored, out, err)
	}
	switch {
	case stored.n > img.Length:
		return &MismatchError{What: "stored length", Detail: fmt.Sprintf("more than the signed %d bytes", img.Length)}
	case stored.n < img.Length:
		return &MismatchError{What: "stored length", Detail: fmt.Sprintf("%d bytes, signed %d", stored.n, img.Length)}
	case stored.sum() != img.SHA256:
		return &MismatchError{What: "stored sha256", Detail: fmt.Sprintf("got %s, signed %s", stored.sum(), img.SHA256)}
	case raw.n > img.RawLength:
		return &MismatchError{What: "raw length", Detail: fmt.Sprintf("more than the signed %d bytes", img.RawLength)}
	case raw.n < img.RawLength:
		return &MismatchError{What: "raw length", Detail: fmt.Sprintf("%d bytes, signed %d", raw.n, img.RawLength)}
	case raw.sum() != img.RawSHA256:
		return &MismatchError{What: "raw sha256", Detail: fmt.Sprintf("got %s, signed %s", raw.sum(), img.RawSHA256)}
	}
	return nil
}

// streamError tells why a stream stopped: the source failed, the
// destination failed, the source sent more than signed, or else the bytes
// did not decode (decodeErr).
func streamError(img Image, stored *meter, out *errWriter, decodeErr error) error {
	switch {
	case stored.err != nil:
		return fmt.Errorf("read image: %w", stored.err)
	case out != nil && out.err != nil:
		return fmt.Errorf("write image: %w", out.err)
	case stored.n > img.Length:
		return &MismatchError{What: "stored length", Detail: fmt.Sprintf("more than the signed %d bytes", img.Length)}
	}
	// A stream that does not decode is most often one that was altered:
	// read the rest (never past the signed length) and, if its digest
	// differs from the signed one, say so, since that is the cause.
	if _, err := io.Copy(io.Discard, stored); err == nil {
		if stored.n != img.Length || stored.sum() != img.SHA256 {
			return &MismatchError{What: "stored sha256", Detail: fmt.Sprintf("the image does not decode and its digest %s (%d bytes) differs from the signed %s (%d bytes); it was altered or corrupted in transit",
				stored.sum(), stored.n, img.SHA256, img.Length)}
		}
	}
	return decodeErr
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

// An errWriter remembers the first error of its destination.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}
