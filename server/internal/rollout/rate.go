package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Duration is a time.Duration that reads and writes JSON as "30m".
type Duration time.Duration

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string such as "1h30m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) String() string { return time.Duration(d).String() }

// Rate is how fast a rollout notifies devices, as policy (like AWS IoT
// Jobs' job executions rollout config): a static maximum per minute, or
// exponential growth from a base rate, multiplied by IncrementFactor each
// time NotifiedThreshold more devices were notified or SucceededThreshold
// more succeeded, up to MaxPerMinute. The zero Rate does not limit.
type Rate struct {
	MaxPerMinute       float64 `json:"max_per_minute,omitempty"`
	BasePerMinute      float64 `json:"base_per_minute,omitempty"`
	IncrementFactor    float64 `json:"increment_factor,omitempty"`
	NotifiedThreshold  int     `json:"notified_threshold,omitempty"`
	SucceededThreshold int     `json:"succeeded_threshold,omitempty"`
}

const maxRatePerMinute = 1_000_000

// maxEarnSpan is the longest gap between two Take calls that earns credit.
const maxEarnSpan = time.Minute

func (r Rate) exponential() bool { return r.BasePerMinute > 0 }

func (r Rate) validate() error {
	var errs []error
	if r.MaxPerMinute < 0 || r.MaxPerMinute > maxRatePerMinute || r.BasePerMinute < 0 || r.BasePerMinute > maxRatePerMinute {
		errs = append(errs, fmt.Errorf("rate max_per_minute %g and base_per_minute %g must be between 0 and %d", r.MaxPerMinute, r.BasePerMinute, maxRatePerMinute))
	}
	if r.exponential() {
		if r.IncrementFactor <= 1 || r.IncrementFactor > 5 {
			errs = append(errs, fmt.Errorf("rate increment_factor %g must be above 1 and at most 5", r.IncrementFactor))
		}
		if (r.NotifiedThreshold > 0) == (r.SucceededThreshold > 0) {
			errs = append(errs, errors.New("an exponential rate needs exactly one of notified_threshold and succeeded_threshold"))
		}
		if r.MaxPerMinute > 0 && r.MaxPerMinute < r.BasePerMinute {
			errs = append(errs, fmt.Errorf("rate max_per_minute %g is below base_per_minute %g", r.MaxPerMinute, r.BasePerMinute))
		}
	} else if r.IncrementFactor != 0 || r.NotifiedThreshold != 0 || r.SucceededThreshold != 0 {
		errs = append(errs, errors.New("rate increment_factor and thresholds need base_per_minute"))
	}
	return errors.Join(errs...)
}

// A Limiter paces notifications at a Rate. Its state is stored with the
// rollout as JSON, so a restarted server goes on at the same pace. It is
// not safe for concurrent use.
type Limiter struct {
	Credit        float64   `json:"credit"`
	Last          time.Time `json:"last,omitzero"`
	Steps         int       `json:"steps"`          // increments applied
	Notified      int       `json:"notified"`       // devices notified so far
	Succeeded     int       `json:"succeeded"`      // devices succeeded so far
	NotifiedMark  int       `json:"notified_mark"`  // Notified at the last increment
	SucceededMark int       `json:"succeeded_mark"` // Succeeded at the last increment
}

// PerMinute is the rate in force: for an exponential rate,
// base * factor^steps, capped at the maximum.
func (l *Limiter) PerMinute(r Rate) float64 {
	if !r.exponential() {
		return r.MaxPerMinute
	}
	v := r.BasePerMinute * math.Pow(r.IncrementFactor, float64(l.Steps))
	if r.MaxPerMinute > 0 {
		v = min(v, r.MaxPerMinute)
	}
	return v
}

// Take returns how many of want devices may be notified at now, and counts
// them as notified. Credit accrues at the rate in force between calls and
// is kept only while there is demand, at most one call's worth beyond it,
// so an idle spell never turns into a burst.
func (l *Limiter) Take(r Rate, now time.Time, want int) int {
	if r == (Rate{}) {
		l.Notified += want
		return want
	}
	if l.Last.IsZero() {
		l.Last, l.Credit = now, 1 // the first device goes at once
	}
	dt := now.Sub(l.Last)
	// A gap in the calls (a restart, a stalled database) earns at most
	// maxEarnSpan of credit, so it never turns into a burst.
	dt = min(max(dt, 0), maxEarnSpan)
	l.Last = now
	earned := l.PerMinute(r) * dt.Minutes()
	l.Credit += earned
	n := min(want, int(math.Floor(l.Credit)))
	l.Credit -= float64(n)
	// Keep what carries the fractional pace, not a stock for later.
	l.Credit = min(l.Credit, max(1, earned))
	l.notified(r, n)
	return n
}

func (l *Limiter) notified(r Rate, n int) {
	l.Notified += n
	if r.exponential() && r.NotifiedThreshold > 0 {
		for l.Notified-l.NotifiedMark >= r.NotifiedThreshold {
			l.NotifiedMark += r.NotifiedThreshold
			l.Steps++
		}
	}
}

// SucceededTotal records the number of devices that succeeded so far.
func (l *Limiter) SucceededTotal(r Rate, n int) {
	l.Succeeded = n
	if r.exponential() && r.SucceededThreshold > 0 {
		for l.Succeeded-l.SucceededMark >= r.SucceededThreshold {
			l.SucceededMark += r.SucceededThreshold
			l.Steps++
		}
	}
}
