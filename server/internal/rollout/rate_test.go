package rollout

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// achieved runs a limiter with unbounded demand on a fake clock, stepping
// every tick for the given time, and returns devices per minute.
func achieved(r Rate, tick, span time.Duration) float64 {
	var l Limiter
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	total := l.Take(r, now, math.MaxInt32)
	for end := now.Add(span); now.Before(end); {
		now = now.Add(tick)
		total += l.Take(r, now, math.MaxInt32)
	}
	return float64(total) / span.Minutes()
}

func TestStaticRateWithinTenPercent(t *testing.T) {
	for _, perMin := range []float64{10, 100, 1000, 10000} {
		for _, tick := range []time.Duration{time.Second, 7 * time.Second, 10 * time.Second} {
			t.Run(fmt.Sprintf("%g-per-minute-tick-%s", perMin, tick), func(t *testing.T) {
				got := achieved(Rate{MaxPerMinute: perMin}, tick, 30*time.Minute)
				if math.Abs(got-perMin)/perMin > 0.10 {
					t.Fatalf("achieved %.1f/min, configured %g/min: off by more than 10%%", got, perMin)
				}
			})
		}
	}
}

func TestIdleDoesNotBurst(t *testing.T) {
	var l Limiter
	r := Rate{MaxPerMinute: 60}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Take(r, now, 0)
	now = now.Add(time.Hour) // an hour with nothing to do
	if n := l.Take(r, now, 1000); n > 61 {
		t.Fatalf("Take after an idle hour = %d; want at most about one step's worth, not a burst", n)
	}
	if n := l.Take(r, now.Add(time.Second), 1000); n > 2 {
		t.Fatalf("Take one second later = %d, want about 1", n)
	}
}

func TestExponentialRate(t *testing.T) {
	tests := []struct {
		name string
		r    Rate
		ok   bool
	}{
		{"notified", Rate{BasePerMinute: 10, IncrementFactor: 2, NotifiedThreshold: 20, MaxPerMinute: 1000}, true},
		{"succeeded", Rate{BasePerMinute: 10, IncrementFactor: 1.5, SucceededThreshold: 5}, true},
		{"factor-not-above-one", Rate{BasePerMinute: 10, IncrementFactor: 1, NotifiedThreshold: 5}, false},
		{"both-thresholds", Rate{BasePerMinute: 10, IncrementFactor: 2, NotifiedThreshold: 5, SucceededThreshold: 5}, false},
		{"no-threshold", Rate{BasePerMinute: 10, IncrementFactor: 2}, false},
		{"max-below-base", Rate{BasePerMinute: 100, IncrementFactor: 2, NotifiedThreshold: 5, MaxPerMinute: 10}, false},
		{"factor-without-base", Rate{MaxPerMinute: 100, IncrementFactor: 2}, false},
		{"negative", Rate{MaxPerMinute: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.r.validate(); (err == nil) != tt.ok {
				t.Fatalf("validate(%+v) = %v, want ok %t", tt.r, err, tt.ok)
			}
		})
	}
	r := tests[0].r
	var l Limiter
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Take(r, now, math.MaxInt32)
	var rates []float64
	for range 60 * 20 {
		now = now.Add(time.Second)
		l.Take(r, now, math.MaxInt32)
		if len(rates) == 0 || rates[len(rates)-1] != l.PerMinute(r) {
			rates = append(rates, l.PerMinute(r))
		}
	}
	want := []float64{10, 20, 40, 80, 160, 320, 640, 1000}
	if fmt.Sprint(rates) != fmt.Sprint(want) {
		t.Fatalf("rates over time = %v, want %v (doubling every 20 notified, capped at 1000)", rates, want)
	}
	l = Limiter{}
	sr := tests[1].r
	l.SucceededTotal(sr, 4)
	if l.PerMinute(sr) != 10 {
		t.Fatalf("rate after 4 succeeded = %g, want the base 10", l.PerMinute(sr))
	}
	l.SucceededTotal(sr, 11)
	if l.PerMinute(sr) != 22.5 {
		t.Fatalf("rate after 11 succeeded = %g, want 10*1.5^2", l.PerMinute(sr))
	}
}

// BenchmarkRateAchieved reports the achieved rate over the configured one
// (goal: 0.9 to 1.1) for 10 to 10,000 devices per minute, stepping every
// 5 seconds on a fake clock.
func BenchmarkRateAchieved(b *testing.B) {
	for _, perMin := range []float64{10, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("%g-per-minute", perMin), func(b *testing.B) {
			var got float64
			for b.Loop() {
				got = achieved(Rate{MaxPerMinute: perMin}, 5*time.Second, time.Hour)
			}
			b.ReportMetric(got/perMin, "achieved/configured")
		})
	}
}
