package install_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aftercare/aftercare/agent/internal/download"
	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

// cutAfter answers the first cuts requests with the headers of the whole
// image but only n bytes of its body, then drops the connection.
func cutAfter(stored []byte, n int, cuts int32) func(w http.ResponseWriter, r *http.Request) bool {
	var count atomic.Int32
	return func(w http.ResponseWriter, r *http.Request) bool {
		if count.Add(1) > cuts {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(stored)))
		w.WriteHeader(http.StatusOK)
		w.Write(stored[:n])
		return true // the server closes the connection: the body is short
	}
}

// ignoreRange serves the whole image whatever Range asks (RFC 9110 §14.2
// allows it).
func ignoreRange(stored []byte, next func(w http.ResponseWriter, r *http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if next(w, r) {
			return true
		}
		w.Write(stored)
		return true
	}
}

func TestInstallResumesAfterDroppedConnection(t *testing.T) {
	var rawBuf bytes.Buffer
	writeFirmwareLike(&rawBuf, 6<<20, 7)
	raw := rawBuf.Bytes()
	zst := encodeFrames(t, raw, 256<<10)
	var gz bytes.Buffer
	enc, _ := firmware.Encoder(firmware.CompressionGzip, &gz)
	enc.Write(raw)
	enc.Close()

	tests := []struct {
		name       string
		c          firmware.Compression
		stored     []byte
		ignore     bool   // the server ignores Range
		wantRanges string // Range headers of the requests, comma-separated
	}{
		// The cut comes after 3/4 of the stored bytes; checkpoints every
		// 512 KiB of raw image fall at frame boundaries before it (an
		// uncompressed image has one every firmware.FrameBytes).
		{"zstd-range", firmware.CompressionZstd, zst, false, ",bytes=%d-"},
		{"zstd-server-ignores-range", firmware.CompressionZstd, zst, true, ",bytes=%d-"},
		{"none-range", firmware.CompressionNone, raw, false, ",bytes=%d-"},
		// gzip has no restart point: the second request starts at 0.
		{"gzip-restarts", firmware.CompressionGzip, gz.Bytes(), false, ","},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cut := cutAfter(tt.stored, len(tt.stored)*3/4, 1)
			handler := cut
			if tt.ignore {
				handler = ignoreRange(tt.stored, cut)
			}
			srv := newImageServer(t, tt.stored, handler)
			d := newDevice(t, nil)
			d.reopenWith(t, install.Options{CheckpointBytes: 512 << 10})
			img := describe(tt.c, tt.stored, raw)
			j := install.Job{RolloutID: "ro1", Target: "pump/1.1.0/image", Version: "1.1.0", Image: img}
			src := download.Source{HTTP: &http.Client{Timeout: time.Minute}, URL: srv.URL, Length: img.Length}
			slot, err := d.inst.Install(context.Background(), src.Open, j)
			if err != nil {
				t.Fatalf("Install() after a dropped connection = %v", err)
			}
			if got := fileSum(t, d.slots[slot], img.RawLength); got != img.RawSHA256 {
				t.Fatalf("slot %s holds sha256 %s, want %s", slot, got, img.RawSHA256)
			}
			ranges := strings.Join(srv.Ranges(), ",")
			want := tt.wantRanges
			if strings.Contains(want, "%d") {
				want = fmt.Sprintf(want, d.resumedFrom)
			}
			if ranges != want || (strings.Contains(tt.wantRanges, "%d") && d.resumedFrom == 0) {
				t.Fatalf("requests asked for ranges %q, want %q (resumed from %d)", ranges, want, d.resumedFrom)
			}
		})
	}
}

// reopenWith makes a fresh installer on the same state with extra options,
// logging "download interrupted" stored offsets into d.resumedFrom.
func (d *device) reopenWith(t *testing.T, o install.Options) {
	t.Helper()
	o.Boot, o.Slots, o.Dir = d.boot, d.slots, d.dir
	o.Log = slog.New(&offsetLog{d: d})
	var err error
	if d.inst, err = install.New(o, "1.0.0"); err != nil {
		t.Fatal(err)
	}
}

// offsetLog records the stored_offset of "download interrupted" records.
type offsetLog struct {
	d *device
	slog.Handler
}

func (l *offsetLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *offsetLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *offsetLog) WithGroup(string) slog.Handler            { return l }
func (l *offsetLog) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "download interrupted") {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "stored_offset" {
				l.d.resumedFrom = a.Value.Int64()
			}
			return true
		})
	}
	return nil
}

func TestInstallResumesAfterRestart(t *testing.T) {
	var rawBuf bytes.Buffer
	writeFirmwareLike(&rawBuf, 2<<20, 9)
	raw := rawBuf.Bytes()
	stored := encodeFrames(t, raw, 256<<10)
	img := describe(firmware.CompressionZstd, stored, raw)
	j := install.Job{RolloutID: "ro1", Target: "pump/1.1.0/image", Version: "1.1.0", Image: img}
	// The first agent dies (its context ends) when the download drops.
	srv := newImageServer(t, stored, cutAfter(stored, len(stored)*3/4, 1))
	d := newDevice(t, nil)
	d.reopenWith(t, install.Options{CheckpointBytes: 256 << 10})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := download.Source{HTTP: &http.Client{Timeout: time.Minute}, URL: srv.URL, Length: img.Length}
	calls := 0
	fetch := func(c context.Context, off int64) (io.ReadCloser, int64, error) {
		calls++
		if calls > 1 {
			cancel() // the agent stops instead of fetching again
			return nil, 0, context.Canceled
		}
		return src.Open(c, off)
	}
	if _, err := d.inst.Install(ctx, fetch, j); !errors.Is(err, context.Canceled) {
		t.Fatalf("Install() with the agent stopping = %v, want context.Canceled", err)
	}
	var c struct {
		At firmware.Position `json:"at"`
	}
	b, err := os.ReadFile(filepath.Join(d.dir, "install-checkpoint.json"))
	if err != nil || json.Unmarshal(b, &c) != nil || c.At.Stored == 0 {
		t.Fatalf("no checkpoint after the interrupted install: %v %s", err, b)
	}
	// The next boot reports the interruption as resumable, and the next
	// install asks only for the rest.
	d.boot.PowerOn()
	d.reopenWith(t, install.Options{CheckpointBytes: 256 << 10})
	out, err := d.inst.AfterBoot(context.Background(), healthy)
	if err != nil || out.Kind != install.Interrupted || !out.Resume {
		t.Fatalf("AfterBoot() = %+v, %v; want interrupted and resumable", out, err)
	}
	slot, err := d.inst.Install(context.Background(), src.Open, j)
	if err != nil {
		t.Fatalf("Install() after the restart = %v", err)
	}
	if got := fileSum(t, d.slots[slot], img.RawLength); got != img.RawSHA256 {
		t.Fatalf("slot %s holds sha256 %s, want %s", slot, got, img.RawSHA256)
	}
	ranges := srv.Ranges()
	if last := ranges[len(ranges)-1]; last != fmt.Sprintf("bytes=%d-", c.At.Stored) {
		t.Fatalf("the install after the restart asked for %q, want the rest from the checkpoint at %d", last, c.At.Stored)
	}
	// An install no assignment asks for any more is dropped whole.
	if err := d.inst.Abandon(); err != nil {
		t.Fatalf("Abandon() = %v", err)
	}
	for _, name := range []string{"install.json", "install-checkpoint.json"} {
		if _, err := os.Stat(filepath.Join(d.dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s survived Abandon(): %v", name, err)
		}
	}
}
