// Package slowread protects a download against slow retrieval: a server,
// mirror or network path that stalls, or that trickles bytes just fast
// enough to keep a connection alive, would otherwise hold the device's
// update forever (TUF calls this a slow retrieval attack; it is the
// client's job to notice).
//
// A Reader wraps the body of a download and fails with an error wrapping
// ErrTooSlow when the source waits longer than Limits.Idle for a byte, or
// when, over each Limits.Window of time spent waiting on it, it delivers
// less than Limits.MinRate bytes per second. Only time spent inside the
// source's Read counts, so a slow consumer (a flash write) never makes a
// fast source look slow.
//
// A Read blocked on the network cannot be interrupted from inside; when the
// idle limit passes, the Reader calls the abort function it was given,
// which must make the blocked Read return: for an HTTP body, cancel the
// request's context.
//
//	ctx, cancel := context.WithCancel(ctx)
//	defer cancel()
//	res, err := client.Do(req.WithContext(ctx))
//	...
//	body := slowread.New(res.Body, limits, cancel)
//	defer body.Close()
//
// Time is read from the time package, so tests run a Reader inside
// testing/synctest.
package slowread

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// ErrTooSlow is wrapped by the error a Reader returns when its source broke
// the limits.
var ErrTooSlow = errors.New("slow retrieval")

// Limits say how slow a source may be. The zero value imposes none.
type Limits struct {
	// Idle is the longest one Read may wait for data; 0 disables it.
	Idle time.Duration
	// MinRate is the lowest acceptable average rate, in bytes per second,
	// over each Window of time spent waiting on the source; 0 disables it.
	MinRate int64
	// Window is the waiting time MinRate is averaged over; default 30s.
	Window time.Duration
}

// DefaultLimits suit metadata and images on a slow hospital network:
// nothing for 30s, or less than 1 KiB/s over 60s of waiting, is too slow.
func DefaultLimits() Limits {
	return Limits{Idle: 30 * time.Second, MinRate: 1 << 10, Window: time.Minute}
}

// Reader enforces Limits on a source. It is not safe for concurrent use
// (neither is the io.Reader it wraps).
type Reader struct {
	r      io.Reader
	limits Limits
	abort  func()

	waited   time.Duration // waiting time in the current window
	got      int64         // bytes in the current window
	timedOut atomic.Bool
	err      error // sticky: once too slow, always too slow
}

// New returns a Reader of r. abort is called from another goroutine when a
// Read waited Limits.Idle; it must make that Read return. It may be nil
// when r's Read cannot block (tests, files).
func New(r io.Reader, l Limits, abort func()) *Reader {
	if l.Window <= 0 {
		l.Window = 30 * time.Second
	}
	if abort == nil {
		abort = func() {}
	}
	return &Reader{r: r, limits: l, abort: abort}
}

// Read reads from the source, failing with an error wrapping ErrTooSlow
// when the source is too slow. A source error other than the abort's is
// returned as it is.
func (s *Reader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	start := time.Now()
	var timer *time.Timer
	if s.limits.Idle > 0 {
		timer = time.AfterFunc(s.limits.Idle, func() {
			s.timedOut.Store(true)
			s.abort()
		})
	}
	n, err := s.r.Read(p)
	if timer != nil {
		timer.Stop()
	}
	if s.timedOut.Load() {
		s.err = fmt.Errorf("%w: no data for %s", ErrTooSlow, s.limits.Idle)
		return n, s.err
	}
	s.waited += time.Since(start)
	s.got += int64(n)
	if s.limits.MinRate > 0 && s.waited >= s.limits.Window {
		if rate := float64(s.got) / s.waited.Seconds(); rate < float64(s.limits.MinRate) {
			s.err = fmt.Errorf("%w: %d bytes in %s of waiting (%.0f B/s), below the minimum %d B/s",
				ErrTooSlow, s.got, s.waited.Round(time.Millisecond), rate, s.limits.MinRate)
			s.abort()
			return n, s.err
		}
		s.waited, s.got = 0, 0
	}
	return n, err
}

// Close closes the source when it is an io.Closer.
func (s *Reader) Close() error {
	if c, ok := s.r.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
