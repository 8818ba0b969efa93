package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// recorder records what the engine publishes and audits.
type recorder struct {
	mu        sync.Mutex
	published []string
	decisions []rollout.Decision
}

func (r *recorder) AssignmentsChanged(_ context.Context, ids []string) error {
	r.mu.Lock()
	r.published = append(r.published, ids...)
	r.mu.Unlock()
	return nil
}

func (r *recorder) audit(_ context.Context, d rollout.Decision) error {
	r.mu.Lock()
	r.decisions = append(r.decisions, d)
	r.mu.Unlock()
	return nil
}

func (r *recorder) actions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, d := range r.decisions {
		out = append(out, d.Action+" "+strings.SplitN(d.Outcome, ":", 2)[0])
	}
	return out
}

// allowRollback answers allow_rollback from a set of target paths.
type allowRollback map[string]bool

func (a allowRollback) AllowsRollback(path string) (bool, error) { return a[path], nil }

type fixture struct {
	t     *testing.T
	s     *store.Store
	clk   *fakeClock
	rec   *recorder
	e     *rollout.Engine
	sites []string
	seq   map[string]uint64
}

func newFixture(t *testing.T, s *store.Store, flags allowRollback) *fixture {
	t.Helper()
	return newFixtureWith(t, s, flags, func(*rollout.Options) {})
}

// newFixtureWith is newFixture with the engine's options changed by set.
func newFixtureWith(t *testing.T, s *store.Store, flags allowRollback, set func(*rollout.Options)) *fixture {
	t.Helper()
	f := &fixture{t: t, s: s, clk: &fakeClock{now: t0}, rec: &recorder{}, seq: map[string]uint64{}}
	opts := rollout.Options{Store: s, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Publisher: f.rec,
		Audit: f.rec.audit, Now: f.clk.Now, Releases: flags, DeferralReminder: 12 * time.Hour}
	set(&opts)
	e, err := rollout.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.e = e
	return f
}

func (f *fixture) site(name string) string {
	f.t.Helper()
	id := "site-" + name
	if err := f.s.CreateSite(context.Background(), store.Site{ID: id, Name: name, Organisation: "org-" + name, CreatedAt: t0}); err != nil {
		f.t.Fatal(err)
	}
	f.sites = append(f.sites, id)
	return id
}

func (f *fixture) device(siteID, id, version string) {
	f.t.Helper()
	ctx := context.Background()
	tok := "tok-" + id
	if err := f.s.CreateEnrollmentToken(ctx, siteID, tok, t0, t0.Add(24*time.Hour)); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.s.Enroll(ctx, tok, "cred-"+id, t0, store.Device{ID: id, Model: "pump-x1", InstalledVersion: version}); err != nil {
		f.t.Fatalf("Enroll(%s): %v", id, err)
	}
}

func (f *fixture) release(version string) store.Release {
	f.t.Helper()
	m := firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: []string{"pump-x1"}, Notes: "fixes CVE-2026-0001"}
	r := store.Release{ID: "rel-" + version, Product: "pump", Version: version, TargetPath: "pump/" + version + "/image.zst", Manifest: m, CreatedAt: t0}
	if err := f.s.CreateRelease(context.Background(), r); err != nil {
		f.t.Fatal(err)
	}
	return r
}

// report makes a device report a state for a release, as over MQTT.
func (f *fixture) report(id string, state protocol.State, running string, rel store.Release, reason string) {
	f.t.Helper()
	f.seq[id]++
	r := &protocol.StateReport{Format: 1, Seq: f.seq[id], Time: f.clk.Now(), State: state, Running: running, Target: rel.TargetPath, Version: rel.Version, Reason: reason}
	if _, err := f.s.RecordReport(context.Background(), id, r, f.clk.Now()); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) tick() {
	f.t.Helper()
	if err := f.e.Tick(context.Background()); err != nil {
		f.t.Fatalf("Tick: %v", err)
	}
}

func (f *fixture) view(id string) rollout.View {
	f.t.Helper()
	v, err := f.e.View(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

func (f *fixture) assigned(id string) []string {
	var out []string
	for _, d := range f.view(id).Cohort {
		if d.State == string(rollout.DeviceAssigned) {
			out = append(out, d.DeviceID)
		}
	}
	return out
}

// succeed makes every assigned device of a rollout commit the release.
func (f *fixture) succeed(id string, rel store.Release) {
	f.t.Helper()
	for _, d := range f.assigned(id) {
		f.report(d, protocol.StateCommitted, rel.Version, rel, "")
	}
}

func TestOneWaveAssignsEveryDeviceAtOnce(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		f := newFixture(t, s, nil)
		a := f.site("a")
		for i := range 5 {
			f.device(a, fmt.Sprint("d", i), "1.0.0")
		}
		f.device(a, "newer", "3.0.0")
		rel := f.release("2.0.0")
		v, err := f.e.Create(context.Background(), rollout.Request{ReleaseID: rel.ID, Actor: "eng"})
		if err != nil {
			t.Fatal(err)
		}
		if len(v.Devices) != 5 || v.Status != rollout.StatusRunning {
			t.Fatalf("Create() = %d devices, status %s; want 5 assigned at once, running", len(v.Devices), v.Status)
		}
		if slices.Contains(v.Devices, "newer") {
			t.Fatal("a device running a newer version was assigned an older release")
		}
		if _, ok, _ := assignment(t, s, "d0"); !ok {
			t.Fatal("no assignment row for d0")
		}
		f.succeed(v.ID, rel)
		f.tick()
		if got := f.view(v.ID); got.Status != rollout.StatusCompleted || got.Counts["succeeded"] != 5 {
			t.Fatalf("after every device committed: status %s, counts %v; want completed, 5 succeeded", got.Status, got.Counts)
		}
	})
}

func assignment(t *testing.T, s *store.Store, deviceID string) (string, bool, error) {
	t.Helper()
	rid, _, ok, err := s.Assignment(context.Background(), deviceID)
	return rid, ok, err
}

func TestWavesSoakHaltResume(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		f := newFixture(t, s, nil)
		a, b := f.site("a"), f.site("b")
		for i := range 10 {
			f.device(a, fmt.Sprint("a", i), "1.0.0")
			f.device(b, fmt.Sprint("b", i), "1.0.0")
		}
		rel := f.release("2.0.0")
		ctx := context.Background()
		v, err := f.e.Create(ctx, rollout.Request{ReleaseID: rel.ID, Actor: "eng", Reason: "CVE fix", Plan: rollout.Plan{
			Canary: 2, Waves: []float64{50, 100}, Soak: rollout.Duration(time.Hour), MaxFailurePercent: 10}})
		if err != nil {
			t.Fatal(err)
		}
		canary := f.assigned(v.ID)
		if len(canary) != 2 {
			t.Fatalf("canary = %v, want 2 devices", canary)
		}
		// Spread across sites: one device of each.
		if canary[0][0] == canary[1][0] {
			t.Fatalf("canary %v is not spread across the two sites", canary)
		}
		f.succeed(v.ID, rel)
		f.tick()
		f.clk.Advance(30 * time.Minute)
		f.tick()
		if got := f.assigned(v.ID); len(got) != 0 {
			t.Fatalf("wave 1 opened before the soak time ended: %v", got)
		}
		f.clk.Advance(31 * time.Minute)
		f.tick()
		wave1 := f.assigned(v.ID)
		if len(wave1) != 8 { // 50 % of 20 = 10, minus the canary
			t.Fatalf("wave 1 assigned %d devices, want 8", len(wave1))
		}
		f.report(wave1[0], protocol.StateFailed, "1.0.0", rel, "hash mismatch")
		f.tick()
		got := f.view(v.ID)
		if got.Status != rollout.StatusHalted || !strings.Contains(got.StatusReason, wave1[0]) || !strings.Contains(got.StatusReason, "hash mismatch") {
			t.Fatalf("after a failure over the threshold: status %s, reason %q; want halted naming %s", got.Status, got.StatusReason, wave1[0])
		}
		// Halted: nothing more is assigned even after the wave settles.
		for _, d := range wave1[1:] {
			f.report(d, protocol.StateCommitted, rel.Version, rel, "")
		}
		f.clk.Advance(2 * time.Hour)
		f.tick()
		if got := f.assigned(v.ID); len(got) != 0 {
			t.Fatalf("a halted rollout assigned %v", got)
		}
		if _, err := f.e.Resume(ctx, v.ID, "eng", ""); !isInvalid(err) {
			t.Fatalf("Resume without a reason: err = %v, want invalid input", err)
		}
		if got := f.view(v.ID); got.Status != rollout.StatusHalted {
			t.Fatalf("a refused resume changed the status to %s", got.Status)
		}
		if _, err := f.e.Resume(ctx, v.ID, "eng", "bad flash on one unit, replaced"); err != nil {
			t.Fatal(err)
		}
		// The soak counts from when the engine saw the wave settled.
		f.tick()
		if got := f.assigned(v.ID); len(got) != 0 {
			t.Fatalf("the last wave opened before its soak: %v", got)
		}
		f.clk.Advance(61 * time.Minute)
		f.tick()
		if got := f.assigned(v.ID); len(got) != 10 {
			t.Fatalf("last wave assigned %d devices, want 10", len(got))
		}
		f.succeed(v.ID, rel)
		f.clk.Advance(time.Minute)
		f.tick()
		if got := f.view(v.ID); got.Status != rollout.StatusCompleted || got.Counts["succeeded"] != 19 || got.Counts["failed"] != 1 {
			t.Fatalf("end: status %s counts %v; want completed with 19 succeeded, 1 failed", got.Status, got.Counts)
		}
		want := []string{"rollout.create done", "rollout.resume refused", "rollout.resume done"}
		if got := f.rec.actions(); !slices.Equal(got, want) {
			t.Fatalf("audited %v, want %v", got, want)
		}
	})
}

func isInvalid(err error) bool {
	var inv *problem.InvalidError
	return errors.As(err, &inv)
}

func TestSelectionIsDeterministicAndSpread(t *testing.T) {
	f := newFixture(t, storetest.SQLite(t), nil)
	for _, name := range []string{"a", "b", "c"} {
		id := f.site(name)
		for i := range 4 {
			f.device(id, fmt.Sprint(name, i), "1.0.0")
		}
	}
	rel := f.release("2.0.0")
	v, err := f.e.Create(context.Background(), rollout.Request{ReleaseID: rel.ID, Actor: "eng", Plan: rollout.Plan{Canary: 3, Waves: []float64{100}}})
	if err != nil {
		t.Fatal(err)
	}
	sites := map[string]bool{}
	for _, d := range f.view(v.ID).Cohort {
		if d.Rank < 3 {
			sites[d.SiteID] = true
		}
	}
	if len(sites) != 3 {
		t.Fatalf("the first 3 ranks cover sites %v, want all 3", sites)
	}
	// The same rollout ID and devices rank the same way.
	first := f.view(v.ID).Cohort
	again := f.view(v.ID).Cohort
	if !slices.EqualFunc(first, again, func(x, y store.RolloutDevice) bool { return x.DeviceID == y.DeviceID && x.Rank == y.Rank }) {
		t.Fatal("ranks changed between reads")
	}
}

func TestOverlapAndBadInputChangeNothing(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		f := newFixture(t, s, nil)
		a := f.site("a")
		f.device(a, "d1", "1.0.0")
		rel2, rel3 := f.release("2.0.0"), f.release("3.0.0")
		ctx := context.Background()
		first, err := f.e.Create(ctx, rollout.Request{ReleaseID: rel2.ID, Actor: "eng"})
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name string
			req  rollout.Request
			want func(error) bool
		}{
			{"overlapping-rollout", rollout.Request{ReleaseID: rel3.ID, Actor: "eng"}, func(err error) bool { return errors.Is(err, problem.ErrConflict) }},
			{"unknown-release", rollout.Request{ReleaseID: "nope", Actor: "eng"}, isInvalid},
			{"waves-not-ending-at-100", rollout.Request{ReleaseID: rel3.ID, Actor: "eng", Plan: rollout.Plan{Waves: []float64{10, 50}}}, isInvalid},
			{"waves-falling", rollout.Request{ReleaseID: rel3.ID, Actor: "eng", Plan: rollout.Plan{Waves: []float64{50, 10, 100}}}, isInvalid},
			{"bad-severity", rollout.Request{ReleaseID: rel3.ID, Actor: "eng", Plan: rollout.Plan{Severity: "urgent"}}, isInvalid},
			{"bad-rate", rollout.Request{ReleaseID: rel3.ID, Actor: "eng", Plan: rollout.Plan{Rate: rollout.Rate{BasePerMinute: 10, IncrementFactor: 0.5}}}, isInvalid},
			{"no-actor", rollout.Request{ReleaseID: rel3.ID}, isInvalid},
			{"unknown-site", rollout.Request{ReleaseID: rel3.ID, Actor: "eng", Plan: rollout.Plan{Cohort: rollout.Cohort{SiteIDs: []string{"x"}}}}, isInvalid},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before, _ := f.e.List(ctx)
				_, err := f.e.Create(ctx, tt.req)
				if !tt.want(err) {
					t.Fatalf("Create(%s) err = %v", tt.name, err)
				}
				if after, _ := f.e.List(ctx); len(after) != len(before) {
					t.Fatalf("a refused Create added a rollout: %d -> %d", len(before), len(after))
				}
				if rid, _, _ := assignment(t, s, "d1"); rid != first.ID {
					t.Fatalf("a refused Create changed the assignment to %s", rid)
				}
			})
		}
		if _, err := f.e.Abort(ctx, first.ID, "eng", "wrong release"); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := assignment(t, s, "d1"); ok {
			t.Fatal("Abort left the assignment of a device that had not installed")
		}
		if _, err := f.e.Create(ctx, rollout.Request{ReleaseID: rel3.ID, Actor: "eng"}); err != nil {
			t.Fatalf("Create after the overlapping rollout was aborted: %v", err)
		}
	})
}

func TestBudgets(t *testing.T) {
	f := newFixture(t, storetest.SQLite(t), nil)
	a := f.site("a")
	ctx := context.Background()
	for i := range 10 {
		id := fmt.Sprint("d", i)
		f.device(a, id, "1.0.0")
		role := "infusion pump"
		if i < 4 {
			role = "CT scanner"
		}
		if err := f.s.SetDeviceLabels(ctx, id, map[string]string{rollout.RoleLabel: role}); err != nil {
			t.Fatal(err)
		}
	}
	rel := f.release("2.0.0")
	v, err := f.e.Create(ctx, rollout.Request{ReleaseID: rel.ID, Actor: "eng", Plan: rollout.Plan{
		Dynamic: true, SiteBudget: rollout.Budget{Max: 3}, RoleBudget: rollout.Budget{Percent: 34}}})
	if err != nil {
		t.Fatal(err)
	}
	got := f.view(v.ID)
	scanners := 0
	for _, d := range got.Cohort {
		if d.State == "assigned" && d.Role == "CT scanner" {
			scanners++
		}
	}
	if n := len(f.assigned(v.ID)); n != 3 || scanners != 1 {
		t.Fatalf("assigned %d devices with %d CT scanners; want 3 (site budget) with 1 scanner (34%% of 4)", n, scanners)
	}
	f.succeed(v.ID, rel)
	f.tick()
	if n := len(f.assigned(v.ID)); n != 3 {
		t.Fatalf("after the first three finished, %d assigned; want the next 3", n)
	}
	// A device enrolled later joins the dynamic rollout.
	f.device(a, "late", "1.0.0")
	for range 10 {
		f.succeed(v.ID, rel)
		f.tick()
	}
	got = f.view(v.ID)
	if got.Counts["succeeded"] != 11 || got.Status != rollout.StatusCompleted {
		t.Fatalf("end: %v, %s; want 11 succeeded (the late device too), completed", got.Counts, got.Status)
	}
}

func TestRollbackNeedsAllowRollback(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		flags := allowRollback{}
		f := newFixture(t, s, flags)
		a := f.site("a")
		f.device(a, "d1", "1.0.0")
		f.device(a, "d2", "1.0.0")
		old := f.release("1.0.0")
		rel := f.release("2.0.0")
		ctx := context.Background()
		v, err := f.e.Create(ctx, rollout.Request{ReleaseID: rel.ID, Actor: "eng"})
		if err != nil {
			t.Fatal(err)
		}
		f.succeed(v.ID, rel)
		f.tick()
		_, err = f.e.Rollback(ctx, v.ID, "eng", "field reports of alarms")
		if !errors.Is(err, problem.ErrConflict) || !strings.Contains(err.Error(), "allow_rollback") {
			t.Fatalf("Rollback to a release without allow_rollback: err = %v, want a conflict naming allow_rollback", err)
		}
		if got := f.view(v.ID); got.Status != rollout.StatusCompleted {
			t.Fatalf("a refused rollback changed the status to %s", got.Status)
		}
		flags[old.TargetPath] = true
		back, err := f.e.Rollback(ctx, v.ID, "eng", "field reports of alarms")
		if err != nil {
			t.Fatal(err)
		}
		if len(back) != 1 || len(back[0].Devices) != 2 || back[0].ReleaseID != old.ID {
			t.Fatalf("Rollback() = %+v; want one rollout of 1.0.0 to both devices", back)
		}
		if got := f.view(v.ID); got.Status != rollout.StatusAborted {
			t.Fatalf("the rolled back rollout is %s, want aborted", got.Status)
		}
	})
}

func TestApprovalSite(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		f := newFixture(t, s, nil)
		auto, held := f.site("auto"), f.site("held")
		f.device(auto, "a1", "1.0.0")
		f.device(held, "h1", "1.0.0")
		f.device(held, "h2", "1.0.0")
		ctx := context.Background()
		if err := f.e.SetSitePolicy(ctx, rollout.SitePolicy{SiteID: held, Approval: rollout.ApprovalRequired}, "it-held", "change board"); err != nil {
			t.Fatal(err)
		}
		rel := f.release("2.0.0")
		v, err := f.e.Create(ctx, rollout.Request{ReleaseID: rel.ID, Actor: "eng", Plan: rollout.Plan{Severity: "critical"}})
		if err != nil {
			t.Fatal(err)
		}
		if got := f.assigned(v.ID); !slices.Equal(got, []string{"a1"}) {
			t.Fatalf("assigned %v, want only the auto site's a1", got)
		}
		pending, err := f.e.Pending(ctx, held)
		if err != nil || len(pending) != 1 || pending[0].Devices != 2 || pending[0].Notes == "" || pending[0].Severity != "critical" {
			t.Fatalf("Pending(held) = %+v, %v; want one patch holding 2 devices with notes and severity", pending, err)
		}
		tests := []struct {
			name string
			do   func() error
			want func(error) bool
		}{
			{"defer-past-maximum", func() error {
				return f.e.Defer(ctx, held, v.ID, t0.Add(8*24*time.Hour), "it-held", "surgery week")
			}, isInvalid},
			{"defer-in-the-past", func() error { return f.e.Defer(ctx, held, v.ID, t0.Add(-time.Hour), "it-held", "x") }, isInvalid},
			{"defer-without-reason", func() error { return f.e.Defer(ctx, held, v.ID, t0.Add(time.Hour), "it-held", "") }, isInvalid},
			{"other-site", func() error { return f.e.Approve(ctx, "site-nope", v.ID, "it-held", "") },
				func(err error) bool { return errors.Is(err, problem.ErrNotFound) }},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := tt.do(); !tt.want(err) {
					t.Fatalf("%s: err = %v", tt.name, err)
				}
				if got := f.assigned(v.ID); len(got) != 1 {
					t.Fatalf("a refused decision assigned %v", got)
				}
			})
		}
		if err := f.e.Defer(ctx, held, v.ID, t0.Add(48*time.Hour), "it-held", "surgery week"); err != nil {
			t.Fatal(err)
		}
		f.tick()
		if got := f.view(v.ID).Counts["deferred"]; got != 2 {
			t.Fatalf("deferred = %d, want 2", got)
		}
		// 11 hours before the end: one reminder, however many steps run.
		f.clk.Advance(37 * time.Hour)
		f.tick()
		f.tick()
		if got := eventKinds(f.view(v.ID).Events); !slices.Equal(got, []string{"wave.opened", "deferral.reminder"}) {
			t.Fatalf("events %v, want the wave and one reminder", got)
		}
		f.clk.Advance(12 * time.Hour)
		f.tick()
		f.tick()
		if got := f.view(v.ID).Counts["held"]; got != 2 {
			t.Fatalf("after the deferral ended held = %d, want 2 (back to awaiting approval)", got)
		}
		want := []string{"wave.opened", "deferral.reminder", "deferral.ended"}
		if got := eventKinds(f.view(v.ID).Events); !slices.Equal(got, want) {
			t.Fatalf("events %v, want %v", got, want)
		}
		// The site's IT sees its reminder and the end with the patch.
		pending, err = f.e.Pending(ctx, held)
		if err != nil || len(pending) != 1 || !pending[0].Overdue || !slices.Equal(eventKinds(pending[0].Events), want[1:]) {
			t.Fatalf("Pending(held) = %+v, %v; want the overdue patch with its reminder and end", pending, err)
		}
		if err := f.e.Approve(ctx, held, v.ID, "it-held", "window booked"); err != nil {
			t.Fatal(err)
		}
		if got := f.assigned(v.ID); len(got) != 3 {
			t.Fatalf("after approval assigned %v, want all 3", got)
		}
		var refused int
		for _, a := range f.rec.actions() {
			if strings.HasSuffix(a, "refused") {
				refused++
			}
		}
		if refused != 4 {
			t.Fatalf("audited %v; want the 4 refused attempts too", f.rec.actions())
		}
	})
}

func eventKinds(events []store.RolloutEvent) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.Kind)
	}
	return out
}

// A failure that a later report replaced (the agent reports idle after a
// roll-back) still counts: the engine reads the report history.
func TestFailureHiddenByALaterReportCounts(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		f := newFixture(t, s, nil)
		a := f.site("a")
		f.device(a, "d1", "1.0.0")
		f.device(a, "d2", "1.0.0")
		rel := f.release("2.0.0")
		v, err := f.e.Create(context.Background(), rollout.Request{ReleaseID: rel.ID, Actor: "eng", Plan: rollout.Plan{MaxFailurePercent: 10}})
		if err != nil {
			t.Fatal(err)
		}
		f.report("d1", protocol.StateRolledBack, "1.0.0", rel, "health check failed")
		f.report("d1", protocol.StateIdle, "1.0.0", store.Release{}, "")
		f.tick()
		got := f.view(v.ID)
		if got.Status != rollout.StatusHalted || !strings.Contains(got.StatusReason, "health check failed") {
			t.Fatalf("status %s (%q); want halted naming the hidden roll-back", got.Status, got.StatusReason)
		}
	})
}

// With reports fed to the engine, a scheduled step reads the outcome of the
// devices that reported through this process, and of every assigned device
// once per FullObserve (a report stored by another replica).
func TestStepReadsReportedDevices(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		f := newFixtureWith(t, s, nil, func(o *rollout.Options) {
			o.ReportsFeed, o.FullObserve = true, 10*time.Minute
		})
		a := f.site("a")
		for _, id := range []string{"d0", "d1", "d2"} {
			f.device(a, id, "1.0.0")
		}
		rel := f.release("2.0.0")
		v, err := f.e.Create(context.Background(), rollout.Request{ReleaseID: rel.ID, Actor: "eng"})
		if err != nil {
			t.Fatal(err)
		}
		step := func() map[string]int {
			t.Helper()
			if err := f.e.TickReported(context.Background()); err != nil {
				t.Fatal(err)
			}
			return f.view(v.ID).Counts
		}
		step() // the first step reads every device: none has reported
		f.report("d0", protocol.StateCommitted, rel.Version, rel, "")
		f.e.Reported("d0")
		f.report("d1", protocol.StateCommitted, rel.Version, rel, "") // through another replica
		if got := step(); got["succeeded"] != 1 || got["assigned"] != 2 {
			t.Fatalf("after d0 reported here and d1 elsewhere: counts %v; want d0 succeeded, d1 and d2 assigned", got)
		}
		f.clk.Advance(10 * time.Minute)
		if got := step(); got["succeeded"] != 2 || got["assigned"] != 1 {
			t.Fatalf("after FullObserve: counts %v; want d0 and d1 succeeded", got)
		}
		f.report("d2", protocol.StateCommitted, rel.Version, rel, "")
		f.e.Reported("d2")
		if got := step(); got["succeeded"] != 3 {
			t.Fatalf("after d2 reported: counts %v; want all 3 succeeded", got)
		}
		if st := f.view(v.ID).Status; st != rollout.StatusCompleted {
			t.Fatalf("status %s after every device succeeded, want completed", st)
		}
	})
}

// The engine paces assignments at the rollout's rate on its clock.
func TestEngineAssignsAtTheRate(t *testing.T) {
	f := newFixture(t, storetest.SQLite(t), nil)
	a := f.site("a")
	for i := range 60 {
		f.device(a, fmt.Sprint("d", i), "1.0.0")
	}
	rel := f.release("2.0.0")
	v, err := f.e.Create(context.Background(), rollout.Request{ReleaseID: rel.ID, Actor: "eng", Plan: rollout.Plan{Rate: rollout.Rate{MaxPerMinute: 20}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 12 { // one minute in 5 s steps
		f.clk.Advance(5 * time.Second)
		f.tick()
	}
	// 1 at once, then 20 per minute.
	if n := len(f.assigned(v.ID)); n < 19 || n > 23 {
		t.Fatalf("after one minute at 20/min, %d devices assigned; want about 21", n)
	}
}

// The per-site device list and the summary classify alike, on both
// databases, for every status.
func TestComplianceEveryStatus(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		f := newFixture(t, s, nil)
		ctx := context.Background()
		auto := f.site("auto")
		for i := range 5 {
			f.device(auto, fmt.Sprint("a", i), "1.0.0")
		}
		f.device(auto, "done", "2.0.0")
		var held []string
		for _, name := range []string{"h-held", "h-deferred", "h-declined"} {
			id := f.site(name)
			held = append(held, id)
			f.device(id, name+"-1", "1.0.0")
			if err := f.e.SetSitePolicy(ctx, rollout.SitePolicy{SiteID: id, Approval: rollout.ApprovalRequired}, "it", "board"); err != nil {
				t.Fatal(err)
			}
		}
		rel := f.release("2.0.0")
		v, err := f.e.Create(ctx, rollout.Request{ReleaseID: rel.ID, Actor: "eng", Plan: rollout.Plan{SiteBudget: rollout.Budget{Max: 3}}})
		if err != nil {
			t.Fatal(err)
		}
		assigned := f.assigned(v.ID) // 3 of the auto site; 2 wait for the budget
		f.report(assigned[0], protocol.StateCommitted, "2.0.0", rel, "")
		f.report(assigned[1], protocol.StateFailed, "1.0.0", rel, "disk full")
		f.report(assigned[2], protocol.StateDownloading, "1.0.0", rel, "")
		if err := f.e.Defer(ctx, held[1], v.ID, t0.Add(24*time.Hour), "it", "surgery"); err != nil {
			t.Fatal(err)
		}
		if err := f.e.Decline(ctx, held[2], v.ID, "it", "validation pending"); err != nil {
			t.Fatal(err)
		}
		summary, err := f.e.Compliance(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]store.ComplianceCounts{
			auto:    {Total: 6, Current: 2, Pending: 2, Installing: 1, Failed: 1},
			held[0]: {Total: 1, Pending: 1, AwaitingApproval: 1},
			held[1]: {Total: 1, Deferred: 1},
			held[2]: {Total: 1, Declined: 1},
		}
		for _, sc := range summary {
			if sc.Counts != want[sc.Site.ID] {
				t.Errorf("summary of %s = %+v, want %+v", sc.Site.Name, sc.Counts, want[sc.Site.ID])
			}
			one, err := f.e.SiteCompliance(ctx, sc.Site.ID)
			if err != nil {
				t.Fatal(err)
			}
			if one.Counts != sc.Counts {
				t.Errorf("site %s: device list counts %+v, summary %+v", sc.Site.Name, one.Counts, sc.Counts)
			}
			if sc.Site.ID == held[2] && (len(sc.Declined) != 1 || sc.Declined[0].Version != "2.0.0" || sc.Declined[0].Notes == "") {
				t.Errorf("declines of %s = %+v, want 2.0.0 with its notes", sc.Site.Name, sc.Declined)
			}
		}
		orgs := store.ByOrganisation(summary)
		if len(orgs) != 4 || orgs[0].Counts.Total != 6 {
			t.Errorf("ByOrganisation = %+v", orgs)
		}
	})
}

// A device that booted the new version and then failed its health check
// reports "failed" while it runs the new version: that is no success.
func TestFailedWhileRunningTheNewVersionIsNoSuccess(t *testing.T) {
	f := newFixture(t, storetest.SQLite(t), nil)
	a := f.site("a")
	f.device(a, "d1", "1.0.0")
	rel := f.release("2.0.0")
	v, err := f.e.Create(context.Background(), rollout.Request{ReleaseID: rel.ID, Actor: "eng", Plan: rollout.Plan{MaxFailurePercent: 10}})
	if err != nil {
		t.Fatal(err)
	}
	f.report("d1", protocol.StateBooted, "2.0.0", rel, "")
	f.tick()
	if got := f.view(v.ID).Counts; got["assigned"] != 1 {
		t.Fatalf("after booted: counts %v, want still assigned (not yet committed)", got)
	}
	f.report("d1", protocol.StateFailed, "2.0.0", rel, "health check failed")
	f.tick()
	if got := f.view(v.ID); got.Status != rollout.StatusHalted || got.Counts["failed"] != 1 {
		t.Fatalf("after failed on the new version: %s %v, want halted with 1 failed", got.Status, got.Counts)
	}
}
