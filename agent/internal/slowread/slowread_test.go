package slowread_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aftercare/aftercare/agent/internal/slowread"
)

var errAborted = errors.New("aborted")

// pipeSource is a source that blocks until its writer sends; abort closes
// it, as cancelling a request's context closes its connection.
func pipeSource() (*io.PipeReader, *io.PipeWriter, func()) {
	pr, pw := io.Pipe()
	return pr, pw, func() { pr.CloseWithError(errAborted) }
}

func TestStalledSourceIsAbortedAfterIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pr, pw, abort := pipeSource()
		defer pw.Close()
		r := slowread.New(pr, slowread.Limits{Idle: 30 * time.Second}, abort)
		start := time.Now()
		_, err := r.Read(make([]byte, 10))
		if !errors.Is(err, slowread.ErrTooSlow) {
			t.Fatalf("Read(stalled) = %v, want ErrTooSlow", err)
		}
		if waited := time.Since(start); waited != 30*time.Second {
			t.Fatalf("gave up after %s, want the idle limit 30s", waited)
		}
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, slowread.ErrTooSlow) {
			t.Fatalf("second Read = %v, want the same ErrTooSlow", err)
		}
	})
}

func TestTricklingSourceIsTooSlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pr, pw, abort := pipeSource()
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			// One byte every 5s: never idle for 30s, but 0.2 B/s.
			for {
				if _, err := pw.Write([]byte{'x'}); err != nil {
					return
				}
				time.Sleep(5 * time.Second)
			}
		}()
		r := slowread.New(pr, slowread.Limits{Idle: 30 * time.Second, MinRate: 1024, Window: time.Minute}, abort)
		start := time.Now()
		n, err := io.Copy(io.Discard, r)
		if !errors.Is(err, slowread.ErrTooSlow) {
			t.Fatalf("Copy(trickle) = %d bytes, %v; want ErrTooSlow", n, err)
		}
		if took := time.Since(start); took < time.Minute || took > time.Minute+5*time.Second {
			t.Fatalf("gave up after %s, want one window of a minute", took)
		}
		if n > 13 {
			t.Fatalf("read %d bytes before giving up, want about 12", n)
		}
	})
}

func TestFastSourcePasses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pr, pw, abort := pipeSource()
		payload := bytes.Repeat([]byte("firmware"), 64<<10)
		go func() {
			for off := 0; off < len(payload); off += 32 << 10 {
				pw.Write(payload[off:min(off+32<<10, len(payload))])
				time.Sleep(time.Second) // 32 KiB/s, well above 1 KiB/s
			}
			pw.Close()
		}()
		r := slowread.New(pr, slowread.Limits{Idle: 30 * time.Second, MinRate: 1024, Window: 10 * time.Second}, abort)
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("ReadAll(fast source) = %d bytes, %v; want all %d", len(got), err, len(payload))
		}
	})
}

func TestSlowConsumerIsNotBlamed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		payload := bytes.Repeat([]byte("x"), 4096)
		r := slowread.New(bytes.NewReader(payload), slowread.Limits{Idle: time.Second, MinRate: 1 << 20, Window: time.Millisecond}, nil)
		buf := make([]byte, 16)
		total := 0
		for {
			n, err := r.Read(buf)
			total += n
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Read after %d bytes = %v; a slow writer of the data is not a slow source", total, err)
			}
			time.Sleep(time.Minute) // a slow flash write
		}
		if total != len(payload) {
			t.Fatalf("read %d bytes, want %d", total, len(payload))
		}
	})
}
