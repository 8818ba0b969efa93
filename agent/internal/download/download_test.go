package download_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/agent/internal/download"
	"github.com/aftercare/aftercare/firmware"
)

func TestOpenFromAnOffset(t *testing.T) {
	image := bytes.Repeat([]byte("0123456789"), 1000)
	n := int64(len(image))
	serveRange := func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(image))
	}
	tests := []struct {
		name      string
		offset    int64
		length    int64 // signed length; 0 means len(image)
		handler   http.HandlerFunc
		wantStart int64
		wantErr   string // "" for success
		mismatch  bool   // the error wraps ErrTooLarge and firmware.ErrMismatch
	}{
		{"whole", 0, 0, serveRange, 0, "", false},
		{"range", 4000, 0, serveRange, 4000, "", false},
		// RFC 9110 §14.2: a server may ignore Range.
		{"range-ignored", 4000, 0, func(w http.ResponseWriter, r *http.Request) { w.Write(image) }, 0, "", false},
		{"offers-more-than-signed", 0, n - 1, serveRange, 0, "more than the signed", true},
		{"range-offers-more-than-signed", 10, 0, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 10-%d/%d", n-1, n))
			w.Header().Set("Content-Length", fmt.Sprint(n))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(image)
		}, 0, "more than the signed", true},
		{"wrong-start", 4000, 0, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 3000-%d/%d", n-1, n))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(image[3000:])
		}, 0, "sent from 3000", false},
		{"another-file", 4000, 0, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 4000-%d/%d", n, n+1))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(image[4000:])
		}, 0, "another file", false},
		{"bad-content-range", 4000, 0, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes=4000-")
			w.WriteHeader(http.StatusPartialContent)
		}, 0, "not bytes first-last/total", false},
		{"partial-without-range", 0, 0, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-9/%d", n))
			w.WriteHeader(http.StatusPartialContent)
		}, 0, "without a range", false},
		{"not-found", 0, 0, http.NotFound, 0, "404", false},
		{"offset-past-the-end", n, 0, serveRange, 0, "outside the signed", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			length := tt.length
			if length == 0 {
				length = n
			}
			src := download.Source{HTTP: &http.Client{Timeout: time.Minute}, URL: srv.URL, Length: length}
			body, start, err := src.Open(context.Background(), tt.offset)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Open(%d) = %v, want an error naming %q", tt.offset, err, tt.wantErr)
				}
				if got := errors.Is(err, download.ErrTooLarge) && errors.Is(err, firmware.ErrMismatch); got != tt.mismatch {
					t.Fatalf("Open(%d) = %v: wraps ErrTooLarge and ErrMismatch = %t, want %t", tt.offset, err, got, tt.mismatch)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%d) = %v", tt.offset, err)
			}
			defer body.Close()
			b, err := io.ReadAll(body)
			if err != nil || start != tt.wantStart || !bytes.Equal(b, image[start:]) {
				t.Fatalf("Open(%d) = start %d, %d bytes, %v; want start %d and the image from there", tt.offset, start, len(b), err, tt.wantStart)
			}
		})
	}
}
