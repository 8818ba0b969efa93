// Package download opens an image on the update server from a byte offset:
// an HTTP Range request, checked against the signed length, read through
// the slow-retrieval limits. The installer (agent/internal/install) asks
// for the offset of its last checkpoint after a dropped connection or a
// restart; the server may honour the range (206) or send the whole image
// (200), and Open says which.
package download

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/firmware"
)

// ErrTooLarge is wrapped by the error of a server that offers more bytes
// than the signed length: nothing is read. It wraps firmware.ErrMismatch,
// since the offer contradicts the signed description.
var ErrTooLarge = fmt.Errorf("download: the server offers more than the signed length (%w)", firmware.ErrMismatch)

// A Source is one image on the server. It is safe for concurrent use.
type Source struct {
	HTTP   *http.Client    // required; its transport has timeouts
	URL    string          // required
	Length int64           // signed length of the stored image, bytes; required
	Limits slowread.Limits // the zero value imposes none
}

// Open requests the image from byte offset and returns the body and the
// offset it really starts at: offset when the server answered 206 with a
// matching Content-Range, 0 when it answered 200 with the whole image. The
// body fails with slowread.ErrTooSlow when the server stalls or trickles.
// Close the body to end the request.
func (s Source) Open(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
	if offset < 0 || offset >= max(s.Length, 1) {
		return nil, 0, fmt.Errorf("download %s from byte %d: outside the signed %d bytes", s.URL, offset, s.Length)
	}
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		cancel()
		return nil, 0, err
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	res, err := s.HTTP.Do(req)
	if err != nil {
		cancel()
		return nil, 0, fmt.Errorf("download %s: %w", s.URL, err)
	}
	start, err := s.check(res, offset)
	if err != nil {
		res.Body.Close()
		cancel()
		return nil, 0, err
	}
	return &body{Reader: slowread.New(res.Body, s.Limits, cancel), cancel: cancel}, start, nil
}

// check returns where the response's body starts in the image.
func (s Source) check(res *http.Response, offset int64) (int64, error) {
	switch res.StatusCode {
	case http.StatusOK:
		// RFC 9110 §14.2: a server may ignore Range; the body is the
		// whole image.
		if res.ContentLength > s.Length {
			return 0, fmt.Errorf("%w: %d bytes, signed %d; nothing was downloaded", ErrTooLarge, res.ContentLength, s.Length)
		}
		return 0, nil
	case http.StatusPartialContent:
		if offset == 0 {
			return 0, fmt.Errorf("download %s: partial content (206) for a request without a range", s.URL)
		}
		start, total, err := parseContentRange(res.Header.Get("Content-Range"))
		if err != nil {
			return 0, fmt.Errorf("download %s from byte %d: %w", s.URL, offset, err)
		}
		if total != s.Length && total != -1 {
			return 0, fmt.Errorf("download %s: the server's image has %d bytes, signed %d; it is another file", s.URL, total, s.Length)
		}
		if start != offset {
			return 0, fmt.Errorf("download %s: asked for bytes from %d, the server sent from %d", s.URL, offset, start)
		}
		if res.ContentLength > s.Length-offset {
			return 0, fmt.Errorf("%w: %d bytes from byte %d, signed %d in all", ErrTooLarge, res.ContentLength, offset, s.Length)
		}
		return start, nil
	}
	return 0, fmt.Errorf("download %s: status %s", s.URL, res.Status)
}

// parseContentRange reads "bytes first-last/total" (RFC 9110 §14.4); total
// is -1 for "*".
func parseContentRange(v string) (first, total int64, err error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	span, size, ok2 := strings.Cut(rest, "/")
	firstS, lastS, ok3 := strings.Cut(span, "-")
	if !ok || !ok2 || !ok3 {
		return 0, 0, fmt.Errorf("Content-Range %q is not bytes first-last/total", v)
	}
	first, err1 := strconv.ParseInt(firstS, 10, 64)
	last, err2 := strconv.ParseInt(lastS, 10, 64)
	total = -1
	var err3 error
	if size != "*" {
		total, err3 = strconv.ParseInt(size, 10, 64)
	}
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || (total >= 0 && last >= total) {
		return 0, 0, fmt.Errorf("Content-Range %q is not bytes first-last/total", v)
	}
	return first, total, nil
}

// body is a download's limited reader and its request's cancel.
type body struct {
	*slowread.Reader
	cancel context.CancelFunc
}

func (b *body) Close() error {
	err := b.Reader.Close()
	b.cancel()
	return err
}
