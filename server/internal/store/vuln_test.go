package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

func TestReleaseSBOMAndComponents(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustRelease(t, s, "r1", "1.0.0")
		mustRelease(t, s, "r2", "1.1.0")
		if rels, _ := s.ReleasesWithoutSBOMRecord(ctx); len(rels) != 2 {
			t.Fatalf("ReleasesWithoutSBOMRecord() = %d releases, want 2", len(rels))
		}
		comps := make([]store.SBOMComponent, 1000) // more than one insert batch
		for i := range comps {
			comps[i] = store.SBOMComponent{Ref: fmt.Sprint("c", i), Name: fmt.Sprint("lib", i), Version: "1.0", CPEs: []string{"cpe:2.3:a:x:y:1.0:*:*:*:*:*:*:*"}}
		}
		comps[7].Patched = []string{"CVE-2022-48174"}
		rec := store.ReleaseSBOM{ReleaseID: "r1", Format: "CycloneDX", SpecVersion: "1.6", SHA256: "ab", IngestedAt: t0}
		if err := s.PutReleaseSBOM(ctx, rec, []string{"pump-x1"}, comps); err != nil {
			t.Fatal(err)
		}
		if err := s.PutReleaseSBOM(ctx, store.ReleaseSBOM{ReleaseID: "r2", Error: "invalid SBOM: line 3", IngestedAt: t0}, []string{"pump-x1"}, nil); err != nil {
			t.Fatal(err)
		}
		got, err := s.ReleaseSBOM(ctx, "r1")
		if err != nil || got.Components != 1000 || got.Format != "CycloneDX" {
			t.Fatalf("ReleaseSBOM(r1) = %+v, %v", got, err)
		}
		var n int
		var seven store.SBOMComponent
		err = s.SBOMComponents(ctx, nil, func(c store.SBOMComponent) error {
			n++
			if c.Index == 7 {
				seven = c
			}
			return nil
		})
		if err != nil || n != 1000 || !slices.Equal(seven.Patched, []string{"CVE-2022-48174"}) || seven.Name != "lib7" {
			t.Fatalf("SBOMComponents() = %d components, #7 %+v, %v", n, seven, err)
		}
		if ids, _ := s.ReleaseIDsWithSBOM(ctx); !slices.Equal(ids, []string{"r1"}) {
			t.Errorf("ReleaseIDsWithSBOM() = %v, want [r1] (r2's SBOM failed)", ids)
		}
		if rels, _ := s.ReleasesWithoutSBOMRecord(ctx); len(rels) != 0 {
			t.Errorf("ReleasesWithoutSBOMRecord() = %d, want 0", len(rels))
		}
	})
}

func TestFeedImportIsAllOrNothing(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		adv := func(id string) store.StoredAdvisory {
			return store.StoredAdvisory{Source: "osv", ID: id, Modified: t0, Data: []byte(`{"id":"` + id + `"}`), Keys: []string{"osv:Go:x"}, CVEs: []string{"CVE-2026-0001"}}
		}
		f := store.Feed{Name: "osv", Kind: "osv", Source: "a.zip", Records: 2, ImportedAt: t0}
		if err := s.ImportAdvisories(ctx, f, []store.StoredAdvisory{adv("GO-1"), adv("GO-2")}); err != nil {
			t.Fatal(err)
		}
		// A key listed twice breaks the primary key in the middle of the
		// import: nothing of it may remain.
		bad := adv("GO-3")
		bad.Keys = []string{"osv:Go:y", "osv:Go:y"}
		f2 := f
		f2.Source, f2.Records = "b.zip", 1
		if err := s.ImportAdvisories(ctx, f2, []store.StoredAdvisory{adv("GO-1"), bad}); err == nil {
			t.Fatal("ImportAdvisories(duplicate key) succeeded")
		}
		got, err := s.AdvisoriesByKeys(ctx, []string{"osv:Go:x", "osv:Go:y"})
		if err != nil || len(got) != 2 {
			t.Fatalf("AdvisoriesByKeys() after a failed import = %d, %v; want the 2 of the first import", len(got), err)
		}
		feeds, _ := s.Feeds(ctx)
		if len(feeds) != 1 || feeds[0].Source != "a.zip" {
			t.Fatalf("Feeds() = %+v, want the first import", feeds)
		}
		if err := s.RecordFeedAttempt(ctx, "osv", "osv", "GET https://mirror: 503", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		feeds, _ = s.Feeds(ctx)
		if feeds[0].Source != "a.zip" || feeds[0].LastError == "" || !feeds[0].ImportedAt.Equal(t0) {
			t.Errorf("after a failed attempt Feeds() = %+v, want the last good import kept and the error shown", feeds[0])
		}
		byCVE, _ := s.AdvisoriesByCVE(ctx, "CVE-2026-0001")
		if len(byCVE) != 2 {
			t.Errorf("AdvisoriesByCVE() = %d, want 2", len(byCVE))
		}

		if err := s.ImportKEV(ctx, store.Feed{Name: "kev", Kind: "kev", ImportedAt: t0}, []store.KEVEntry{{CVE: "CVE-2023-0286", DateAdded: "2023-01-01"}, {CVE: "CVE-2023-0286", DateAdded: "2023-01-02"}}); err != nil {
			t.Fatal(err)
		}
		if err := s.ImportEPSS(ctx, store.Feed{Name: "epss", Kind: "epss", ImportedAt: t0}, []store.EPSSScore{{CVE: "CVE-2023-0286", Score: 0.9, Percentile: 0.99}}); err != nil {
			t.Fatal(err)
		}
		kev, _ := s.KEVFor(ctx, []string{"CVE-2023-0286", "CVE-2000-0001"})
		epss, _ := s.EPSSFor(ctx, []string{"CVE-2023-0286"})
		if len(kev) != 1 || kev["CVE-2023-0286"].DateAdded != "2023-01-02" || epss["CVE-2023-0286"].Score != 0.9 {
			t.Errorf("KEVFor = %v, EPSSFor = %v", kev, epss)
		}
	})
}

func TestFindingsDispositionsTriage(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustRelease(t, s, "r1", "1.0.0")
		f := func(idx int, vuln string) store.Finding {
			return store.Finding{ComponentIndex: idx, VulnID: vuln, ComponentName: "openssl", ComponentVersion: "3.0.7",
				Rules: []store.FindingRule{{Source: "nvd", Advisory: vuln, Text: "range"}}, Severity: "high", CVSS: 7.4}
		}
		added, err := s.ReplaceFindings(ctx, "r1", []store.Finding{f(0, "CVE-1"), f(0, "CVE-2")}, t0)
		if err != nil || len(added) != 2 {
			t.Fatalf("ReplaceFindings #1 added %d, %v", len(added), err)
		}
		added, err = s.ReplaceFindings(ctx, "r1", []store.Finding{f(0, "CVE-2"), f(1, "CVE-3")}, t0.Add(time.Hour))
		if err != nil || len(added) != 1 || added[0].VulnID != "CVE-3" {
			t.Fatalf("ReplaceFindings #2 added %+v, %v; want CVE-3 only", added, err)
		}
		all, _ := s.Findings(ctx, store.FindingFilter{})
		if len(all) != 2 || all[0].VulnID != "CVE-2" || !all[0].FirstSeen.Equal(t0) || all[0].Rules[0].Text != "range" {
			t.Fatalf("Findings() = %+v", all)
		}

		d := store.Disposition{Product: "pump", VulnID: "CVE-2", Status: "affected", Source: "psirt", UpdatedBy: "admin", UpdatedAt: t0}
		if _, err := s.SetDisposition(ctx, d, "first look"); err != nil {
			t.Fatal(err)
		}
		d.Status, d.Justification, d.UpdatedAt = "not_affected", "vulnerable_code_not_in_execute_path", t0.Add(time.Minute)
		ch, err := s.SetDisposition(ctx, d, "the API is never called")
		if err != nil || ch.PreviousStatus != "affected" {
			t.Fatalf("SetDisposition #2 = %+v, %v", ch, err)
		}
		ds, _ := s.Dispositions(ctx, store.DispositionFilter{Products: []string{"pump"}})
		hist, _ := s.DispositionHistory(ctx, store.DispositionFilter{VulnID: "CVE-2"})
		if len(ds) != 1 || ds[0].Status != "not_affected" || len(hist) != 2 || hist[1].Reason != "the API is never called" || hist[0].Actor != "admin" {
			t.Fatalf("Dispositions() = %+v, history = %+v", ds, hist)
		}

		item := store.TriageItem{ID: "t1", Product: "pump", VulnID: "CVE-3", KEV: true, Reasons: []string{"kev"}, Releases: []string{"r1"}, OpenedAt: t0, DueAt: t0.Add(48 * time.Hour)}
		note := store.Notification{ID: "n1", Channel: "webhook", Subject: "s", Body: "{}", CreatedAt: t0}
		for i, step := range []struct {
			due  time.Duration
			want string
		}{{7 * 24 * time.Hour, store.TriageOpened}, {7 * 24 * time.Hour, ""}, {48 * time.Hour, store.TriageEscalated}, {72 * time.Hour, ""}} {
			item.ID, note.ID = fmt.Sprint("t", i), fmt.Sprint("n", i)
			item.DueAt = t0.Add(step.due)
			got, err := s.OpenTriage(ctx, item, []store.Notification{note})
			if err != nil || got != step.want {
				t.Fatalf("OpenTriage #%d (due in %s) = %q, %v; want %q", i+1, step.due, got, err, step.want)
			}
		}
		pending, _ := s.PendingNotifications(ctx, 10)
		if len(pending) != 2 {
			t.Fatalf("PendingNotifications() = %d, want 2 (opened, escalated)", len(pending))
		}
		for _, p := range pending {
			s.MarkNotification(ctx, p.ID, true, "", t0)
		}
		if pending, _ := s.PendingNotifications(ctx, 10); len(pending) != 0 {
			t.Errorf("PendingNotifications() after sending = %d", len(pending))
		}
		if err := s.CloseTriage(ctx, "pump", "CVE-3", "admin", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		items, _ := s.TriageItems(ctx, nil, false)
		if len(items) != 1 || items[0].ClosedAt.IsZero() || !items[0].KEV || items[0].Releases[0] != "r1" || !items[0].DueAt.Equal(t0.Add(48*time.Hour)) {
			t.Errorf("TriageItems() = %+v", items)
		}
		if open, _ := s.TriageItems(ctx, nil, true); len(open) != 0 {
			t.Errorf("open TriageItems() = %+v", open)
		}
	})
}

func TestExposure(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "Radiology")
		mustSite(t, s, "s2", "Cardiology")
		r1 := mustRelease(t, s, "r1", "1.0.0")
		mustRelease(t, s, "r2", "1.1.0")
		for _, r := range []string{"r1", "r2"} {
			if err := s.PutReleaseSBOM(ctx, store.ReleaseSBOM{ReleaseID: r, IngestedAt: t0}, []string{"pump-x1"}, nil); err != nil {
				t.Fatal(err)
			}
		}
		mustDevice(t, s, "s1", "a", "1.0.0")
		mustDevice(t, s, "s1", "b", "1.0.0")
		mustDevice(t, s, "s2", "c", "1.0.0")
		mustDevice(t, s, "s2", "d", "1.1.0")
		if err := s.CreateRollout(ctx, store.Rollout{ID: "ro", ReleaseID: "r2", CreatedAt: t0, Devices: []string{"b", "c"}}); err != nil {
			t.Fatal(err)
		}
		// c started installing r2.
		rep := &protocol.StateReport{Format: 1, Seq: 1, Time: t0, State: protocol.StateDownloading, Running: "1.0.0", Target: "pump/1.1.0/image.zst", Version: "1.1.0"}
		if _, err := s.RecordReport(ctx, "c", rep, t0); err != nil {
			t.Fatal(err)
		}
		groups, err := s.ExposureGroups(ctx, []string{r1.ID}, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{"s1/r1//current": 1, "s1/r1/r2/pending": 1, "s2/r1/r2/installing": 1}
		got := map[string]int{}
		for _, g := range groups {
			got[fmt.Sprintf("%s/%s/%s/%s", g.SiteID, g.ReleaseID, g.TargetReleaseID, g.Status)] = g.Devices
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ExposureGroups(r1) = %v, want %v", got, want)
		}
		scoped, _ := s.ExposureGroups(ctx, []string{r1.ID}, []string{"s2"})
		if len(scoped) != 1 || scoped[0].SiteID != "s2" {
			t.Errorf("ExposureGroups(r1, site s2) = %+v, want only s2", scoped)
		}
		if none, _ := s.ExposureGroups(ctx, []string{r1.ID}, []string{}); none != nil {
			t.Errorf("ExposureGroups(no visible sites) = %+v, want nothing", none)
		}
		devs, err := s.ExposedDevices(ctx, []string{r1.ID}, nil, 2)
		if err != nil || len(devs) != 2 || devs[0].ID != "a" || devs[1].Status != store.StatusPending {
			t.Errorf("ExposedDevices(limit 2) = %+v, %v", devs, err)
		}
		running, _ := s.ReleasesRunningAt(ctx, []string{"s2"})
		if !slices.Equal(running, []string{"r1", "r2"}) {
			t.Errorf("ReleasesRunningAt(s2) = %v", running)
		}
	})
}
