package rollout

import (
	"testing"
	"time"
	_ "time/tzdata" // the DST tests run on hosts without zoneinfo too
)

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("time.LoadLocation(%s): %v", name, err)
	}
	return loc
}

// TestWindowsAcrossDST checks a nightly 01:00-05:00 window on the nights
// the clocks change: it stays 01:00-05:00 on the wall clock, so it lasts 3
// hours in spring and 5 in autumn.
func TestWindowsAcrossDST(t *testing.T) {
	tests := []struct {
		zone      string
		day       time.Time // the night of the change, local date
		weekday   string
		wantStart string // UTC
		wantHours float64
	}{
		{"Europe/Berlin", time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC), "sun", "2026-03-29T00:00:00Z", 3},
		{"Europe/Berlin", time.Date(2026, 10, 25, 0, 0, 0, 0, time.UTC), "sun", "2026-10-24T23:00:00Z", 5},
		{"America/New_York", time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC), "sun", "2026-03-08T06:00:00Z", 3},
		{"America/New_York", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), "sun", "2026-11-01T05:00:00Z", 5},
	}
	for _, tt := range tests {
		t.Run(tt.zone+"-"+tt.day.Format("2006-01-02"), func(t *testing.T) {
			loc := mustLoad(t, tt.zone)
			from := time.Date(tt.day.Year(), tt.day.Month(), tt.day.Day()-3, 12, 0, 0, 0, loc)
			got := Expand([]WeeklyWindow{{Day: tt.weekday, Start: "01:00", End: "05:00"}}, loc, from, 1)
			var found bool
			for _, w := range got {
				if w.Start.Format(time.RFC3339) == tt.wantStart {
					found = true
					if h := w.End.Sub(w.Start).Hours(); h != tt.wantHours {
						t.Fatalf("window %s-%s lasts %gh, want %gh", w.Start, w.End, h, tt.wantHours)
					}
					if l := w.Start.In(loc); l.Hour() != 1 {
						t.Fatalf("window starts at %s local, want 01:00", l)
					}
					if l := w.End.In(loc); l.Hour() != 5 {
						t.Fatalf("window ends at %s local, want 05:00", l)
					}
				}
			}
			if !found {
				t.Fatalf("Expand() = %v, no window starting at %s", got, tt.wantStart)
			}
		})
	}
}

func TestWindowOverMidnightAndWeeks(t *testing.T) {
	loc := mustLoad(t, "Europe/Berlin")
	from := time.Date(2026, 6, 1, 0, 0, 0, 0, loc) // a Monday
	got := Expand([]WeeklyWindow{{Day: "fri", Start: "22:00", End: "02:00"}}, loc, from, 3)
	if len(got) != 3 {
		t.Fatalf("Expand over 3 weeks = %d windows, want 3: %v", len(got), got)
	}
	if got[0].Start.Format(time.RFC3339) != "2026-06-05T20:00:00Z" || got[0].End.Format(time.RFC3339) != "2026-06-06T00:00:00Z" {
		t.Fatalf("first window = %v-%v, want Friday 22:00 to Saturday 02:00 Berlin (CEST)", got[0].Start, got[0].End)
	}
}

func TestSitePolicyValidation(t *testing.T) {
	tests := []struct {
		name string
		p    SitePolicy
		ok   bool
	}{
		{"auto-any-time", SitePolicy{Approval: ApprovalAuto}, true},
		{"approval-with-window", SitePolicy{Approval: ApprovalRequired, TimeZone: "America/New_York", Windows: []WeeklyWindow{{Day: "sat", Start: "02:00", End: "04:00"}}}, true},
		{"invalid-time-zone", SitePolicy{Approval: ApprovalAuto, TimeZone: "Mars/Olympus", Windows: []WeeklyWindow{{Day: "sat", Start: "02:00", End: "04:00"}}}, false},
		{"local-time-zone", SitePolicy{Approval: ApprovalAuto, TimeZone: "Local"}, false},
		{"windows-without-zone", SitePolicy{Approval: ApprovalAuto, Windows: []WeeklyWindow{{Day: "sat", Start: "02:00", End: "04:00"}}}, false},
		{"bad-day", SitePolicy{Approval: ApprovalAuto, TimeZone: "UTC", Windows: []WeeklyWindow{{Day: "someday", Start: "02:00", End: "04:00"}}}, false},
		{"bad-clock", SitePolicy{Approval: ApprovalAuto, TimeZone: "UTC", Windows: []WeeklyWindow{{Day: "sat", Start: "25:00", End: "04:00"}}}, false},
		{"bad-approval", SitePolicy{Approval: "sometimes"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.p.validate(); (err == nil) != tt.ok {
				t.Fatalf("validate(%+v) = %v, want ok %t", tt.p, err, tt.ok)
			}
		})
	}
}
