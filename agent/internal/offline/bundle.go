// Package offline reads an offline bundle (see protocol.OfflineManifest for
// its layout) so an air-gapped device can install from a USB stick or a
// local file.
//
// A Bundle is an http.RoundTripper: the agent is built with an HTTP client
// whose transport answers from the bundle instead of the network, and its
// server URL set to BaseURL. Everything else is the online path unchanged:
// go-tuf refreshes both repositories from the device's trusted roots with
// the same size and slow-retrieval limits, the two repositories must agree
// on the image, and the installer checks the signed length and digests
// while it writes. A file missing from the bundle is a 404, as on the
// server, so a bundle lacking metadata fails the TUF refresh.
//
// Reading the bundle only indexes it: metadata and image are read from the
// file when requested, so memory stays small whatever the image size.
package offline

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/aftercare/aftercare/protocol"
)

// BaseURL is the server URL the agent uses with a bundle's client. The
// .invalid name (RFC 2606) can never reach a network.
const BaseURL = "http://offline-bundle.invalid"

// ErrNotBundle is returned by Open when the file is not an offline bundle.
var ErrNotBundle = errors.New("offline: not an offline bundle")

// entry is where a file's bytes lie in the bundle.
type entry struct {
	off, size int64
}

// Bundle is an opened offline bundle. It is safe for concurrent use.
type Bundle struct {
	f        *os.File
	files    map[string]entry
	Manifest protocol.OfflineManifest
}

// Open indexes the bundle at path. It refuses archives with unsafe or
// duplicate names, non-regular files, or more than
// protocol.OfflineMaxEntries files.
func Open(path string) (*Bundle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open offline bundle: %w", err)
	}
	b, err := index(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("offline bundle %s: %w", path, err)
	}
	return b, nil
}

func index(f *os.File) (*Bundle, error) {
	pos := &positionReader{r: f}
	tr := tar.NewReader(pos)
	b := &Bundle{f: f, files: map[string]entry{}}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotBundle, err)
		}
		if h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: entry %q is not a regular file", ErrNotBundle, h.Name)
		}
		if !protocol.ValidOfflineEntry(h.Name) {
			return nil, fmt.Errorf("%w: entry %q is not a repository file", ErrNotBundle, h.Name)
		}
		// Two entries of one name would let the bundle show one file to a
		// reviewer and another to the device.
		if _, dup := b.files[h.Name]; dup {
			return nil, fmt.Errorf("%w: entry %q appears twice", ErrNotBundle, h.Name)
		}
		if len(b.files) == protocol.OfflineMaxEntries {
			return nil, fmt.Errorf("%w: more than %d entries", ErrNotBundle, protocol.OfflineMaxEntries)
		}
		// After Next, the underlying reader stands at the entry's data.
		b.files[h.Name] = entry{off: pos.n, size: h.Size}
	}
	e, ok := b.files[protocol.OfflineManifestName]
	if !ok {
		return nil, fmt.Errorf("%w: no %s", ErrNotBundle, protocol.OfflineManifestName)
	}
	if e.size > protocol.MaxPayloadBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes", ErrNotBundle, protocol.OfflineManifestName, e.size)
	}
	raw := make([]byte, e.size)
	if _, err := f.ReadAt(raw, e.off); err != nil {
		return nil, fmt.Errorf("read %s: %w", protocol.OfflineManifestName, err)
	}
	m, err := protocol.ParseOfflineManifest(raw)
	if err != nil {
		return nil, err
	}
	b.Manifest = m
	return b, nil
}

// positionReader counts how far into the file the tar reader has read or
// skipped.
type positionReader struct {
	r io.ReadSeeker
	n int64
}

func (p *positionReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

// Seek lets the tar reader skip entry data without reading it.
func (p *positionReader) Seek(offset int64, whence int) (int64, error) {
	n, err := p.r.Seek(offset, whence)
	if err == nil {
		p.n = n
	}
	return n, err
}

var _ http.RoundTripper = (*Bundle)(nil)

// Close closes the bundle file.
func (b *Bundle) Close() error { return b.f.Close() }

// Client returns an HTTP client that answers every request from the bundle.
func (b *Bundle) Client() *http.Client { return &http.Client{Transport: b} }

// RoundTrip answers GET requests for BaseURL/<entry> from the bundle: 200
// with the file, 206 for a "bytes=N-" range (a resumed download), 404 for
// a file the bundle does not hold.
func (b *Bundle) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	if req.Method != http.MethodGet || req.URL.Scheme+"://"+req.URL.Host != BaseURL {
		return nil, fmt.Errorf("offline bundle: cannot answer %s %s", req.Method, req.URL.Redacted())
	}
	name := strings.TrimPrefix(req.URL.Path, "/")
	e, ok := b.files[name]
	if !ok || name == protocol.OfflineManifestName {
		return respond(req, http.StatusNotFound, strings.NewReader("not in the offline bundle\n"), -1, nil), nil
	}
	start := int64(0)
	status := http.StatusOK
	header := http.Header{}
	if rng := req.Header.Get("Range"); rng != "" {
		from, ok := parseOpenRange(rng)
		if !ok || from >= e.size {
			header.Set("Content-Range", fmt.Sprintf("bytes */%d", e.size))
			return respond(req, http.StatusRequestedRangeNotSatisfiable, strings.NewReader(""), 0, header), nil
		}
		start, status = from, http.StatusPartialContent
		header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, e.size-1, e.size))
	}
	body := io.NewSectionReader(b.f, e.off+start, e.size-start)
	return respond(req, status, body, e.size-start, header), nil
}

// parseOpenRange reads the one form of Range the agent sends: "bytes=N-".
func parseOpenRange(h string) (int64, bool) {
	v, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, false
	}
	v, ok = strings.CutSuffix(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n >= 0
}

func respond(req *http.Request, status int, body io.Reader, length int64, header http.Header) *http.Response {
	if header == nil {
		header = http.Header{}
	}
	if length >= 0 {
		header.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	return &http.Response{
		Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), StatusCode: status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: header, Body: io.NopCloser(body), ContentLength: length, Request: req,
	}
}
