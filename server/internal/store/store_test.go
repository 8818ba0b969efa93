package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func mustSite(t *testing.T, s *store.Store, id, name string) store.Site {
	t.Helper()
	site := store.Site{ID: id, Name: name, Organisation: "org", CreatedAt: t0}
	if err := s.CreateSite(context.Background(), site); err != nil {
		t.Fatalf("CreateSite(%s): %v", name, err)
	}
	return site
}

func mustDevice(t *testing.T, s *store.Store, siteID, id, version string) store.Device {
	t.Helper()
	ctx := context.Background()
	tok := "tok-" + id
	if err := s.CreateEnrollmentToken(ctx, siteID, tok, t0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	d, err := s.Enroll(ctx, tok, "cred-"+id, t0, store.Device{ID: id, Model: "pump-x1", InstalledVersion: version})
	if err != nil {
		t.Fatalf("Enroll(%s): %v", id, err)
	}
	return d
}

func mustRelease(t *testing.T, s *store.Store, id, version string) store.Release {
	t.Helper()
	m := firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: []string{"pump-x1"}}
	r := store.Release{ID: id, Product: "pump", Version: version, TargetPath: "pump/" + version + "/image.zst", Manifest: m, CreatedAt: t0}
	if err := s.CreateRelease(context.Background(), r); err != nil {
		t.Fatalf("CreateRelease(%s): %v", version, err)
	}
	return r
}

func TestMigrationsAreIdempotent(t *testing.T) {
	url := storetest.SQLiteURL(t)
	for i := 0; i < 2; i++ {
		s, err := store.Open(context.Background(), url)
		if err != nil {
			t.Fatalf("Open #%d: %v", i+1, err)
		}
		s.Close()
	}
}

func TestOpenRejectsUnknownURL(t *testing.T) {
	for _, u := range []string{"", "mysql://x", "sqlite:", "/tmp/x.db"} {
		if _, err := store.Open(context.Background(), u); err == nil {
			t.Errorf("Open(%q) succeeded, want an error", u)
		}
	}
}

func TestSites(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "St. Mary Radiology")
		err := s.CreateSite(ctx, store.Site{ID: "s2", Name: "St. Mary Radiology", CreatedAt: t0})
		if !errors.Is(err, problem.ErrConflict) {
			t.Fatalf("CreateSite(duplicate name) = %v, want ErrConflict", err)
		}
		sites, err := s.Sites(ctx)
		if err != nil || len(sites) != 1 {
			t.Fatalf("Sites() = %v, %v; want the one site", sites, err)
		}
		if _, err := s.Site(ctx, "nope"); !errors.Is(err, problem.ErrNotFound) {
			t.Fatalf("Site(unknown) = %v, want ErrNotFound", err)
		}
	})
}

func TestEnrollment(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "Site One")
		if err := s.CreateEnrollmentToken(ctx, "s1", "good", t0, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateEnrollmentToken(ctx, "s1", "old", t0.Add(-2*time.Hour), t0.Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		dev := store.Device{ID: "d1", Model: "pump-x1", InstalledVersion: "1.0.0"}
		d, err := s.Enroll(ctx, "good", "cred1", t0, dev)
		if err != nil {
			t.Fatalf("Enroll(good) = %v", err)
		}
		if d.SiteID != "s1" || d.State != protocol.StateIdle {
			t.Fatalf("Enroll(good) device = %+v, want site s1 and state idle", d)
		}
		tests := []struct {
			name, token string
			want        error
		}{
			{"reused-token", "good", problem.ErrConflict},
			{"expired-token", "old", problem.ErrUnauthorized},
			{"unknown-token", "never-issued", problem.ErrUnauthorized},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := s.Enroll(ctx, tt.token, fmt.Sprintf("cred-x%d", i), t0, store.Device{ID: fmt.Sprintf("x%d", i), Model: "pump-x1", InstalledVersion: "1.0.0"})
				if !errors.Is(err, tt.want) {
					t.Fatalf("Enroll(%s) = %v, want %v", tt.token, err, tt.want)
				}
				devices, _ := s.Devices(ctx, store.DeviceFilter{})
				if len(devices) != 1 {
					t.Fatalf("after a refused enrollment there are %d devices, want 1", len(devices))
				}
			})
		}
		got, err := s.DeviceByTokenHash(ctx, "cred1")
		if err != nil || got.ID != "d1" {
			t.Fatalf("DeviceByTokenHash(cred1) = %v, %v", got.ID, err)
		}
	})
}

func TestReportsAreDeduplicatedAndOrdered(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "Site One")
		mustDevice(t, s, "s1", "d1", "1.0.0")
		rel := mustRelease(t, s, "r1", "1.1.0")
		report := func(seq uint64, state protocol.State, running string) bool {
			t.Helper()
			ok, err := s.RecordReport(ctx, "d1", &protocol.StateReport{Format: 1, Seq: seq, Time: t0, State: state, Running: running, Target: rel.TargetPath}, t0)
			if err != nil {
				t.Fatalf("RecordReport(seq %d): %v", seq, err)
			}
			return ok
		}
		if !report(1, protocol.StateDownloading, "1.0.0") {
			t.Fatal("first report not inserted")
		}
		if report(1, protocol.StateDownloading, "1.0.0") {
			t.Fatal("redelivered report (same seq) inserted twice")
		}
		report(3, protocol.StateCommitted, "1.1.0")
		report(2, protocol.StateInstalled, "1.0.0") // arrives late
		d, _ := s.Device(ctx, "d1")
		if d.State != protocol.StateCommitted || d.InstalledVersion != "1.1.0" || d.LastSeq != 3 {
			t.Fatalf("device after out-of-order reports = state %s version %s seq %d; want committed 1.1.0 3", d.State, d.InstalledVersion, d.LastSeq)
		}
		if d.StateReleaseID != rel.ID {
			t.Fatalf("device state release = %q, want %q", d.StateReleaseID, rel.ID)
		}
		// A late report changes no state but counts as the device being seen.
		t1 := t0.Add(time.Minute)
		if _, err := s.RecordReport(ctx, "d1", &protocol.StateReport{Format: 1, Seq: 0, Time: t0, State: protocol.StateIdle, Running: "1.0.0"}, t1); err != nil {
			t.Fatal(err)
		}
		d, _ = s.Device(ctx, "d1")
		if !d.LastSeen.Equal(t1) || d.State != protocol.StateCommitted || d.LastSeq != 3 {
			t.Fatalf("device after a late report = last seen %v state %s seq %d; want %v committed 3", d.LastSeen, d.State, d.LastSeq, t1)
		}
		if !report(4, protocol.StateIdle, "1.1.0") {
			t.Fatal("report 4 not inserted")
		}
		if _, err := s.RecordReport(ctx, "d1", &protocol.StateReport{Format: 1, Seq: 5, Time: t0, State: protocol.StateIdle, Running: "1.1.0"}, t0); err != nil {
			t.Fatal(err)
		}
		if d, _ = s.Device(ctx, "d1"); d.StateReleaseID != "" || d.LastSeq != 5 {
			t.Fatalf("device after a report without target = state release %q seq %d; want none, 5", d.StateReleaseID, d.LastSeq)
		}
		reports, _ := s.Reports(ctx, "d1")
		if len(reports) != 6 {
			t.Fatalf("Reports() has %d entries, want 6", len(reports))
		}
		_, err := s.RecordReport(ctx, "ghost", &protocol.StateReport{Format: 1, Seq: 1, Time: t0, State: protocol.StateIdle}, t0)
		if !errors.Is(err, problem.ErrNotFound) {
			t.Fatalf("RecordReport(unknown device) = %v, want ErrNotFound", err)
		}
	})
}

// TestRecordReportsInOneTransaction checks the group commit: a report
// from a device that is not enrolled gets its own error, the others in
// the batch are stored, and a redelivery in the same batch is not stored
// twice.
func TestRecordReportsInOneTransaction(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "Site One")
		mustDevice(t, s, "s1", "d1", "1.0.0")
		mustDevice(t, s, "s1", "d2", "1.0.0")
		rel := mustRelease(t, s, "r1", "1.1.0")
		rep := func(seq uint64, state protocol.State, running string) *protocol.StateReport {
			return &protocol.StateReport{Format: 1, Seq: seq, Time: t0, State: state, Running: running, Target: rel.TargetPath}
		}
		res, err := s.RecordReports(ctx, []store.ReportIn{
			{DeviceID: "d1", Report: rep(1, protocol.StateDownloading, "1.0.0"), Received: t0},
			{DeviceID: "ghost", Report: rep(1, protocol.StateDownloading, "1.0.0"), Received: t0},
			{DeviceID: "d2", Report: rep(1, protocol.StateCommitted, "1.1.0"), Received: t0},
			{DeviceID: "d1", Report: rep(1, protocol.StateDownloading, "1.0.0"), Received: t0},
		})
		if err != nil {
			t.Fatal(err)
		}
		if !res[0].Inserted || res[0].Err != nil || !res[2].Inserted || res[2].Err != nil {
			t.Fatalf("enrolled devices' reports: %+v, %+v; want inserted", res[0], res[2])
		}
		if !errors.Is(res[1].Err, problem.ErrNotFound) {
			t.Fatalf("unknown device's report: %v, want ErrNotFound", res[1].Err)
		}
		if res[3].Inserted || res[3].Err != nil {
			t.Fatalf("redelivery in the same batch: %+v, want not inserted, no error", res[3])
		}
		d2, _ := s.Device(ctx, "d2")
		if d2.State != protocol.StateCommitted || d2.InstalledVersion != "1.1.0" {
			t.Fatalf("d2 after the batch: state %s version %s", d2.State, d2.InstalledVersion)
		}
		if reports, _ := s.Reports(ctx, "d1"); len(reports) != 1 {
			t.Fatalf("d1 has %d reports, want 1", len(reports))
		}
	})
}

func TestPatchState(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "Site One")
		mustSite(t, s, "s2", "Site Two")
		for _, id := range []string{"a", "b", "c", "d"} {
			mustDevice(t, s, "s1", id, "1.0.0")
		}
		mustDevice(t, s, "s2", "e", "1.0.0")
		rel := mustRelease(t, s, "r1", "1.1.0")
		if err := s.CreateRollout(ctx, store.Rollout{ID: "ro1", ReleaseID: rel.ID, CreatedAt: t0, Devices: []string{"a", "b", "c", "d"}}); err != nil {
			t.Fatal(err)
		}
		send := func(dev string, seq uint64, state protocol.State, running string) {
			t.Helper()
			if _, err := s.RecordReport(ctx, dev, &protocol.StateReport{Format: 1, Seq: seq, Time: t0, State: state, Running: running, Target: rel.TargetPath}, t0); err != nil {
				t.Fatal(err)
			}
		}
		send("b", 1, protocol.StateDownloading, "1.0.0")
		send("c", 1, protocol.StateRolledBack, "1.0.0")
		send("d", 1, protocol.StateCommitted, "1.1.0")
		sp, err := s.SitePatchState(ctx, "s1")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]store.PatchStatus{"a": store.StatusPending, "b": store.StatusInstalling, "c": store.StatusFailed, "d": store.StatusCurrent}
		for _, d := range sp.Devices {
			if d.Status != want[d.ID] {
				t.Errorf("device %s status = %s, want %s", d.ID, d.Status, want[d.ID])
			}
		}
		c := sp.Counts
		if c.Total != 4 || c.Current != 1 || c.Pending != 1 || c.Installing != 1 || c.Failed != 1 || c.Versions["1.0.0"] != 3 || c.Versions["1.1.0"] != 1 {
			t.Fatalf("site counts = %+v", c)
		}
		sum, err := s.PatchSummary(ctx)
		if err != nil || len(sum) != 2 {
			t.Fatalf("PatchSummary() = %v, %v", sum, err)
		}
		if two := sum[1]; two.Site.ID != "s2" || two.Counts.Total != 1 || two.Counts.Current != 1 {
			t.Fatalf("summary of the site without a rollout = %+v", two)
		}
		if _, err := s.SitePatchState(ctx, "nope"); !errors.Is(err, problem.ErrNotFound) {
			t.Fatalf("SitePatchState(unknown) = %v, want ErrNotFound", err)
		}
	})
}

func TestRolloutReplacesAssignment(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "Site One")
		mustDevice(t, s, "s1", "a", "1.0.0")
		r1 := mustRelease(t, s, "r1", "1.1.0")
		r2 := mustRelease(t, s, "r2", "1.2.0")
		if _, _, ok, _ := s.Assignment(ctx, "a"); ok {
			t.Fatal("Assignment() before any rollout reports one")
		}
		for i, r := range []store.Release{r1, r2} {
			if err := s.CreateRollout(ctx, store.Rollout{ID: fmt.Sprint("ro", i), ReleaseID: r.ID, CreatedAt: t0, Devices: []string{"a"}}); err != nil {
				t.Fatal(err)
			}
		}
		ro, rel, ok, err := s.Assignment(ctx, "a")
		if err != nil || !ok || rel.ID != r2.ID || ro != "ro1" {
			t.Fatalf("Assignment() = %s %s %v %v; want ro1 r2", ro, rel.ID, ok, err)
		}
		if _, err := s.ReleaseByVersion(ctx, "pump", "1.2.0"); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateRelease(ctx, store.Release{ID: "r3", Product: "pump", Version: "1.2.0", TargetPath: "x", CreatedAt: t0}); !errors.Is(err, problem.ErrConflict) {
			t.Fatalf("CreateRelease(duplicate version) = %v, want ErrConflict", err)
		}
	})
}
