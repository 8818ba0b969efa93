package access

import (
	"sync"
	"time"
)

// Failed token checks per remote address: at most FailureLimit in
// FailureWindow, then the address is refused (429) until the window ends.
const (
	FailureLimit  = 10
	FailureWindow = time.Minute
	// maxTrackedAddrs bounds the limiter's memory; past it, expired
	// windows are dropped, and if none expired the oldest is.
	maxTrackedAddrs = 100_000
)

// A Limiter counts failed authentications per key (a remote address) in
// fixed windows. It is safe for concurrent use.
type Limiter struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu    sync.Mutex
	fails map[string]*failWindow // guarded by mu
}

type failWindow struct {
	start time.Time
	count int
}

// NewLimiter returns a limiter allowing limit failures per window; now is
// the clock (nil: time.Now).
func NewLimiter(limit int, window time.Duration, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{limit: limit, window: window, now: now, fails: map[string]*failWindow{}}
}

// Blocked reports whether key has used up its failures in the current
// window, and when it may try again.
func (l *Limiter) Blocked(key string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	w := l.currentLocked(key, now)
	if w == nil || w.count < l.limit {
		return false, 0
	}
	return true, w.start.Add(l.window).Sub(now)
}

// Fail counts one failure for key.
func (l *Limiter) Fail(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	w := l.currentLocked(key, now)
	if w == nil {
		if len(l.fails) >= maxTrackedAddrs {
			l.pruneLocked(now)
		}
		w = &failWindow{start: now}
		l.fails[key] = w
	}
	w.count++
}

// currentLocked returns key's window if it has not ended. l.mu must be held.
func (l *Limiter) currentLocked(key string, now time.Time) *failWindow {
	w := l.fails[key]
	if w == nil {
		return nil
	}
	if !now.Before(w.start.Add(l.window)) {
		delete(l.fails, key)
		return nil
	}
	return w
}

// pruneLocked drops ended windows, or the oldest one if none ended. l.mu
// must be held.
func (l *Limiter) pruneLocked(now time.Time) {
	var oldestKey string
	var oldest time.Time
	for k, w := range l.fails {
		if !now.Before(w.start.Add(l.window)) {
			delete(l.fails, k)
			continue
		}
		if oldestKey == "" || w.start.Before(oldest) {
			oldestKey, oldest = k, w.start
		}
	}
	if len(l.fails) >= maxTrackedAddrs {
		delete(l.fails, oldestKey)
	}
}
