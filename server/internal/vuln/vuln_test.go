package vuln_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/openvex/go-vex/pkg/vex"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/vuln"
	"github.com/aftercare/aftercare/server/internal/vuln/match"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// zipOf packs files as an OSV all.zip.
func zipOf(t testing.TB, pattern string) []byte {
	t.Helper()
	files, _ := filepath.Glob(pattern)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range files {
		w, _ := zw.Create(filepath.Base(f))
		w.Write(readFile(t, f))
	}
	zw.Close()
	return buf.Bytes()
}

type fixture struct {
	svc   *vuln.Service
	st    *store.Store
	clk   *clock
	r1    store.Release // pump 1.0.0: the embedded image SBOM
	r2    store.Release // pump 1.1.0: the same without the vulnerable openssl
	other store.Release // monitor 2.0.0: the Alpine image SBOM
}

// newFixture builds two organisations with three sites: St. Mary
// (Radiology: 3 devices on 1.0.0, one of them assigned 1.1.0; ICU: 1 on
// 1.1.0) and Lakeside (Cardiology: 2 on 1.0.0, 1 monitor).
func newFixture(t *testing.T, s *store.Store) *fixture {
	t.Helper()
	ctx := context.Background()
	clk := &clock{now: t0}
	svc, err := vuln.New(vuln.Options{Store: s, Log: slog.New(slog.DiscardHandler), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{svc: svc, st: s, clk: clk}
	for _, site := range []store.Site{
		{ID: "rad", Name: "Radiology", Organisation: "St. Mary Hospital"},
		{ID: "icu", Name: "ICU", Organisation: "St. Mary Hospital"},
		{ID: "card", Name: "Cardiology", Organisation: "Lakeside Clinic"},
	} {
		site.CreatedAt = t0
		if err := s.CreateSite(ctx, site); err != nil {
			t.Fatal(err)
		}
	}
	release := func(id, product, version, model string) store.Release {
		m := firmware.Manifest{Format: 1, Product: product, Version: version, Models: []string{model}}
		r := store.Release{ID: id, Product: product, Version: version, TargetPath: product + "/" + version, Manifest: m, CreatedAt: t0}
		if err := s.CreateRelease(ctx, r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	f.r1 = release("r1", "pump", "1.0.0", "pump-x1")
	f.r2 = release("r2", "pump", "1.1.0", "pump-x1")
	f.other = release("m1", "monitor", "2.0.0", "mon-1")
	n := 0
	device := func(site, model, version string) string {
		n++
		id := fmt.Sprintf("dev%d", n)
		tok := "tok-" + id
		if err := s.CreateEnrollmentToken(ctx, site, tok, t0, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Enroll(ctx, tok, "cred-"+id, t0, store.Device{ID: id, Model: model, InstalledVersion: version}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	device("rad", "pump-x1", "1.0.0")
	assigned := device("rad", "pump-x1", "1.0.0")
	device("rad", "pump-x1", "1.0.0")
	device("icu", "pump-x1", "1.1.0")
	device("card", "pump-x1", "1.0.0")
	device("card", "pump-x1", "1.0.0")
	device("card", "mon-1", "2.0.0")
	if err := s.CreateRollout(ctx, store.Rollout{ID: "ro1", ReleaseID: "r2", CreatedAt: t0, Devices: []string{assigned}}); err != nil {
		t.Fatal(err)
	}
	image := readFile(t, "../sbom/testdata/yocto/infusion-pump-image.cdx.json")
	if _, err := svc.IngestSBOM(ctx, f.r1, image); err != nil {
		t.Fatal(err)
	}
	// 1.1.0 ships openssl 3.0.8 and libwebp 1.3.2.
	fixed := strings.NewReplacer("3.0.7", "3.0.8", "libwebp:1.3.1", "libwebp:1.3.2", `"version": "1.3.1"`, `"version": "1.3.2"`).Replace(string(image))
	if _, err := svc.IngestSBOM(ctx, f.r2, []byte(fixed)); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.IngestSBOM(ctx, f.other, readFile(t, "../sbom/testdata/real/guac-alpine-cyclonedx.json")); err != nil {
		t.Fatal(err)
	}
	return f
}

// importAll imports every sample feed.
func (f *fixture) importAll(t *testing.T) vuln.AnalysisResult {
	t.Helper()
	ctx := context.Background()
	var last vuln.AnalysisResult
	imp := func(kind, name string, b []byte) {
		res, err := f.svc.Import(ctx, vuln.AllSites, kind, b, vuln.Source{Origin: name})
		if err != nil {
			t.Fatalf("Import(%s %s): %v", kind, name, err)
		}
		last = res.Analysis
	}
	imp("osv", "almalinux.zip", zipOf(t, "testdata/osv/almalinux/*/*.json"))
	imp("osv", "go.zip", zipOf(t, "testdata/osv/golang-vulndb/*/*.json"))
	nvd, _ := filepath.Glob("testdata/nvd/*.json")
	for _, p := range nvd {
		imp("nvd", filepath.Base(p), readFile(t, p))
	}
	imp("kev", "kev.json", readFile(t, "testdata/kev/known_exploited_vulnerabilities.json"))
	// No real EPSS snapshot covers the sample CVEs (see testdata/PROVENANCE.md):
	// this one-row file gives CVE-2022-37434 a score above the threshold.
	imp("epss", "epss.csv", []byte("#model_version:v2025.03.14,score_date:2026-11-23T00:00:00+0000\ncve,epss,percentile\nCVE-2022-37434,0.61,0.98\n"))
	return last
}

func findingsByKey(t *testing.T, views []vuln.FindingView) map[string]vuln.FindingView {
	t.Helper()
	out := map[string]vuln.FindingView{}
	for _, v := range views {
		out[v.ReleaseVersion+" "+v.ComponentName+" "+v.VulnID] = v
	}
	return out
}

func TestAnalysisFindingsAndTriage(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		f := newFixture(t, s)
		res := f.importAll(t)
		if res.Releases != 3 || res.Findings == 0 {
			t.Fatalf("last analysis = %+v", res)
		}
		views, err := f.svc.Findings(ctx, vuln.AllSites, vuln.FindingQuery{})
		if err != nil {
			t.Fatal(err)
		}
		got := findingsByKey(t, views)
		tests := []struct {
			key, state, rule string
			kev              bool
		}{
			{"1.0.0 openssl CVE-2023-0286", "open", "version 3.0.7 is >= 3.0.0 and < 3.0.8", false},
			{"1.0.0 libwebp CVE-2023-4863", "open", "webmproject:libwebp", true},
			{"1.0.0 busybox CVE-2022-48174", "patched", "busybox", false},
			{"1.0.0 sqlite3 CVE-2022-35737", "patched", "sqlite", false},
			{"1.0.0 zlib CVE-2022-37434", "open", "ALSA-2022:7106", false},
			{"1.0.0 golang.org/x/net CVE-2026-42506", "open", "GO-2026-5025", false},
			{"2.0.0 busybox CVE-2022-48174", "open", "busybox", false},
		}
		for _, tt := range tests {
			v, ok := got[tt.key]
			if !ok {
				t.Errorf("no finding %q among %d", tt.key, len(got))
				continue
			}
			text := v.Rules[0].Advisory + " " + v.Rules[0].Text
			if v.State != tt.state || (v.KEV != nil) != tt.kev || !strings.Contains(text, tt.rule) {
				t.Errorf("finding %q: state %s, kev %v, rule %q; want %s, %v, rule containing %q", tt.key, v.State, v.KEV != nil, text, tt.state, tt.kev, tt.rule)
			}
		}
		for _, gone := range []string{"1.1.0 openssl CVE-2023-0286", "1.1.0 libwebp CVE-2023-4863"} {
			if _, ok := got[gone]; ok {
				t.Errorf("finding %q: 1.1.0 ships the fixed version", gone)
			}
		}
		items, err := f.svc.TriageItems(ctx, vuln.AllSites, true)
		if err != nil {
			t.Fatal(err)
		}
		triage := map[string]store.TriageItem{}
		for _, it := range items {
			triage[it.Product+" "+it.VulnID] = it
		}
		for key, due := range map[string]time.Duration{
			"pump CVE-2023-4863":  48 * time.Hour,     // KEV
			"pump CVE-2023-0286":  7 * 24 * time.Hour, // high
			"pump CVE-2022-37434": 7 * 24 * time.Hour, // EPSS 0.61 >= 0.5
		} {
			it, ok := triage[key]
			if !ok {
				t.Errorf("no triage item %q; have %v", key, slices.Collect(mapsKeys(triage)))
				continue
			}
			if it.DueAt.Sub(it.OpenedAt) != due {
				t.Errorf("triage %q due after %s, want %s (reasons %v)", key, it.DueAt.Sub(it.OpenedAt), due, it.Reasons)
			}
		}
		if _, ok := triage["pump CVE-2022-48174"]; ok {
			t.Errorf("a triage item was opened for a finding patched by backport")
		}
		// Re-analysis is idempotent: nothing new, no second item.
		again, err := f.svc.Analyse(ctx, nil)
		if err != nil || again.New != 0 || again.TriageOpened != 0 || again.Findings != res.Findings {
			t.Errorf("second analysis = %+v, %v; want no change from %+v", again, err, res)
		}
	})
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestBadFeedChangesNothing(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		f := newFixture(t, s)
		f.importAll(t)
		before, _ := f.svc.Findings(ctx, vuln.AllSites, vuln.FindingQuery{})
		feedsBefore, _ := f.svc.Feeds(ctx)
		z := zipOf(t, "testdata/osv/almalinux/*/*.json")
		kev := readFile(t, "testdata/kev/known_exploited_vulnerabilities.json")
		bad := []struct {
			kind, name, want string
			b                []byte
		}{
			{"osv", "truncated.zip", "truncated", z[:len(z)-100]},
			{"kev", "kev-truncated.json", "line ", kev[:len(kev)/2]},
			{"nvd", "kev-as-nvd.json", `vulnerabilities[0] has no "cve" object`, kev},
			{"epss", "bad-score.csv", "must be a number from 0 to 1", readFile(t, "testdata/bad/epss-bad-score.csv")},
			{"cvss", "x", `feed kind "cvss"`, []byte("{}")},
		}
		for _, tt := range bad {
			_, err := f.svc.Import(ctx, vuln.AllSites, tt.kind, tt.b, vuln.Source{Origin: tt.name})
			var inv *problem.InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Import(%s %s) error = %v, want an invalid-input error containing %q", tt.kind, tt.name, err, tt.want)
			}
		}
		after, _ := f.svc.Findings(ctx, vuln.AllSites, vuln.FindingQuery{})
		feedsAfter, _ := f.svc.Feeds(ctx)
		if len(after) != len(before) || fmt.Sprint(feedsAfter) != fmt.Sprint(feedsBefore) {
			t.Errorf("refused imports changed the findings (%d -> %d) or the feeds", len(before), len(after))
		}
		_, err := f.svc.Import(ctx, vuln.Scope{SiteIDs: []string{"rad"}}, "kev", kev, vuln.Source{})
		if !errors.Is(err, problem.ErrForbidden) {
			t.Errorf("Import by hospital IT = %v, want ErrForbidden", err)
		}
	})
}

func TestExposure(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		f := newFixture(t, s)
		f.importAll(t)
		e, err := f.svc.Exposure(ctx, vuln.AllSites, "cve-2023-0286", vuln.ExposureOptions{DeviceLimit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if !e.Known || !e.Exposed || e.VulnID != "CVE-2023-0286" || e.Totals.Total != 5 || len(e.Devices) != 5 {
			t.Fatalf("Exposure(CVE-2023-0286) = known %v exposed %v totals %+v devices %d", e.Known, e.Exposed, e.Totals, len(e.Devices))
		}
		if len(e.Releases) != 1 || e.Releases[0].Version != "1.0.0" || e.Releases[0].Devices != 5 || !e.Releases[0].Affected {
			t.Errorf("releases = %+v", e.Releases)
		}
		orgs := map[string]vuln.OrgExposure{}
		for _, o := range e.Organisations {
			orgs[o.Organisation] = o
		}
		stMary := orgs["St. Mary Hospital"]
		if stMary.Devices != 3 || len(stMary.Sites) != 1 || stMary.Sites[0].SiteName != "Radiology" || stMary.Sites[0].FixAssigned != 1 || stMary.Sites[0].Counts.Pending != 1 {
			t.Errorf("St. Mary = %+v; want Radiology with 3 devices, 1 assigned the fix (pending)", stMary)
		}
		if orgs["Lakeside Clinic"].Devices != 2 {
			t.Errorf("Lakeside = %+v", orgs["Lakeside Clinic"])
		}

		// Hospital IT of Lakeside sees its own devices only.
		lake := vuln.Scope{SiteIDs: []string{"card"}}
		e, err = f.svc.Exposure(ctx, lake, "CVE-2023-0286", vuln.ExposureOptions{DeviceLimit: 100})
		if err != nil || e.Totals.Total != 2 || len(e.Organisations) != 1 || e.Organisations[0].Organisation != "Lakeside Clinic" {
			t.Fatalf("Exposure as Lakeside = %+v, %v", e, err)
		}
		for _, d := range e.Devices {
			if d.SiteID != "card" {
				t.Errorf("Lakeside sees device %s of site %s", d.ID, d.SiteID)
			}
		}
		// ICU runs only 1.1.0: not exposed, and it does not see 1.0.0's findings.
		icu := vuln.Scope{SiteIDs: []string{"icu"}}
		e, _ = f.svc.Exposure(ctx, icu, "CVE-2023-0286", vuln.ExposureOptions{})
		if e.Exposed || len(e.Releases) != 0 {
			t.Errorf("Exposure as ICU = %+v, want not exposed and no releases", e)
		}
		if vs, _ := f.svc.Findings(ctx, icu, vuln.FindingQuery{}); slices.ContainsFunc(vs, func(v vuln.FindingView) bool { return v.ReleaseID != "r2" }) {
			t.Errorf("ICU sees findings of releases it does not run")
		}
		if _, err := f.svc.Findings(ctx, icu, vuln.FindingQuery{ReleaseID: "r1"}); !errors.Is(err, problem.ErrNotFound) {
			t.Errorf("ICU asking for r1's findings = %v, want ErrNotFound", err)
		}

		// A vulnerability not in the feeds, asked by component and range.
		q := match.Query{VulnID: "CVE-2099-1234", Name: "busybox", Introduced: "1.30.0", Fixed: "1.36.0"}
		e, err = f.svc.ExposureQuery(ctx, vuln.AllSites, q, vuln.ExposureOptions{})
		if err != nil || e.Known || !e.Exposed || len(e.Releases) != 1 || e.Releases[0].Product != "monitor" || e.Totals.Total != 1 {
			t.Fatalf("ExposureQuery(busybox <1.36.0) = %+v, %v; want the monitor's busybox 1.35.0-r17", e, err)
		}
		if !strings.Contains(e.Releases[0].Rules[0].Text, "apk version ordering") {
			t.Errorf("rule = %q", e.Releases[0].Rules[0].Text)
		}
		_, err = f.svc.ExposureQuery(ctx, vuln.AllSites, match.Query{VulnID: "CVE-2099-1"}, vuln.ExposureOptions{})
		if !strings.Contains(fmt.Sprint(err), "name or purl is required") {
			t.Errorf("ExposureQuery(no component) = %v", err)
		}
	})
}

func TestDispositionsAndVEX(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		f := newFixture(t, s)
		f.importAll(t)
		psirt := vuln.AllSites
		// Bad requests name every problem and change nothing.
		_, err := f.svc.SetDisposition(ctx, psirt, "alice", vuln.DispositionRequest{Product: "pump", VulnID: "x", Status: "wontfix", Justification: "because"})
		for _, want := range []string{`vuln_id "x"`, `status "wontfix"`, "justification is only for not_affected", "reason is required"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("SetDisposition(bad) = %v, want it to contain %q", err, want)
			}
		}
		_, err = f.svc.SetDisposition(ctx, psirt, "alice", vuln.DispositionRequest{Product: "pump", VulnID: "CVE-2023-0286", Status: "fixed", FixedRelease: "9.9.9", Reason: "x"})
		if err == nil || !strings.Contains(err.Error(), `fixed_release "9.9.9" must be a published version of "pump"`) {
			t.Errorf("SetDisposition(unknown fixed release) = %v", err)
		}
		if h, _ := f.svc.History(ctx, psirt, vuln.DispositionQuery{}); len(h) != 0 {
			t.Fatalf("refused dispositions left history %+v", h)
		}
		_, err = f.svc.SetDisposition(ctx, vuln.Scope{SiteIDs: []string{"rad"}}, "it", vuln.DispositionRequest{Product: "pump", VulnID: "CVE-2023-0286", Status: "affected", Reason: "x"})
		if !errors.Is(err, problem.ErrForbidden) {
			t.Errorf("SetDisposition by hospital IT = %v, want ErrForbidden", err)
		}

		// Product-wide: fixed in 1.1.0. Per-release override for 1.0.0: mitigated.
		steps := []vuln.DispositionRequest{
			{Product: "pump", VulnID: "CVE-2023-0286", Status: "affected", Reason: "X.400 GENERAL NAME type confusion reachable via TLS client auth"},
			{Product: "pump", VulnID: "CVE-2023-0286", Status: "fixed", FixedRelease: "1.1.0", Reason: "1.1.0 ships openssl 3.0.8"},
			{ReleaseID: "r1", VulnID: "CVE-2023-4863", Status: "not_affected", Justification: "vulnerable_code_not_in_execute_path", Detail: "no WebP decoding of external input", Reason: "image viewer disabled in 1.0.0"},
		}
		for i, req := range steps {
			f.clk.now = t0.Add(time.Duration(i+1) * time.Minute)
			if _, err := f.svc.SetDisposition(ctx, psirt, "alice", req); err != nil {
				t.Fatalf("SetDisposition #%d: %v", i+1, err)
			}
		}
		views, _ := f.svc.Findings(ctx, psirt, vuln.FindingQuery{ReleaseID: "r1"})
		got := findingsByKey(t, views)
		if v := got["1.0.0 openssl CVE-2023-0286"]; v.State != "fixed" || v.Disposition.FixedRelease != "1.1.0" {
			t.Errorf("openssl finding state = %s (%+v)", v.State, v.Disposition)
		}
		if v := got["1.0.0 libwebp CVE-2023-4863"]; v.State != "not_affected" || v.Disposition.ReleaseID != "r1" {
			t.Errorf("libwebp finding state = %s (%+v)", v.State, v.Disposition)
		}
		hist, _ := f.svc.History(ctx, psirt, vuln.DispositionQuery{VulnID: "CVE-2023-0286"})
		if len(hist) != 2 || hist[1].PreviousStatus != "affected" || hist[1].Actor != "alice" || hist[1].Reason != "1.1.0 ships openssl 3.0.8" {
			t.Errorf("history = %+v", hist)
		}
		open, _ := f.svc.TriageItems(ctx, psirt, true)
		for _, it := range open {
			if it.VulnID == "CVE-2023-0286" || it.VulnID == "CVE-2023-4863" {
				t.Errorf("triage item %s still open after a decision", it.VulnID)
			}
		}
		// Hospital IT of the ICU (1.1.0 only) sees the product-wide decision
		// but not 1.0.0's override.
		icuDs, _ := f.svc.Dispositions(ctx, vuln.Scope{SiteIDs: []string{"icu"}}, vuln.DispositionQuery{})
		if len(icuDs) != 1 || icuDs[0].VulnID != "CVE-2023-0286" {
			t.Errorf("ICU dispositions = %+v", icuDs)
		}

		// OpenVEX of 1.0.0.
		b, err := f.svc.ExportVEX(ctx, psirt, "r1", vuln.VEXOpenVEX)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := vex.Parse(b)
		if err != nil {
			t.Fatalf("exported OpenVEX does not parse: %v", err)
		}
		status := map[string]vex.Statement{}
		for _, st := range doc.Statements {
			status[string(st.Vulnerability.Name)] = st
		}
		for id, want := range map[string]vex.Status{
			"CVE-2023-0286":  vex.StatusAffected, // fixed in 1.1.0: 1.0.0 must update
			"CVE-2023-4863":  vex.StatusNotAffected,
			"CVE-2022-48174": vex.StatusFixed, // backport
			"CVE-2022-37434": vex.StatusUnderInvestigation,
		} {
			if st := status[id]; st.Status != want {
				t.Errorf("OpenVEX %s status = %q, want %q", id, st.Status, want)
			}
		}
		if a := status["CVE-2023-0286"].ActionStatement; !strings.Contains(a, "Update to pump 1.1.0") {
			t.Errorf("action statement = %q", a)
		}
		if p := status["CVE-2023-0286"].Products[0]; p.ID != "pkg:generic/pump@1.0.0" || p.Subcomponents[0].ID != "pkg:generic/openssl@3.0.7" {
			t.Errorf("product = %+v", p)
		}
		// CycloneDX VEX of 1.0.0.
		b, err = f.svc.ExportVEX(ctx, psirt, "r1", vuln.VEXCycloneDX)
		if err != nil {
			t.Fatal(err)
		}
		var bom cdx.BOM
		if err := cdx.NewBOMDecoder(bytes.NewReader(b), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
			t.Fatal(err)
		}
		states := map[string]cdx.VulnerabilityAnalysis{}
		for _, v := range *bom.Vulnerabilities {
			states[v.ID] = *v.Analysis
		}
		if a := states["CVE-2023-4863"]; a.State != cdx.IASNotAffected || a.Justification != cdx.IAJCodeNotReachable {
			t.Errorf("CycloneDX CVE-2023-4863 = %+v", a)
		}
		if a := states["CVE-2022-48174"]; a.State != cdx.IASResolved {
			t.Errorf("CycloneDX CVE-2022-48174 = %+v", a)
		}
		if _, err := f.svc.ExportVEX(ctx, vuln.Scope{SiteIDs: []string{"icu"}}, "r1", vuln.VEXOpenVEX); !errors.Is(err, problem.ErrNotFound) {
			t.Errorf("ICU exporting 1.0.0's VEX = %v, want ErrNotFound", err)
		}
		if _, err := f.svc.ExportVEX(ctx, psirt, "r1", "csaf"); err == nil {
			t.Errorf("ExportVEX(csaf) succeeded")
		}
	})
}

func TestSupplierVEX(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		f := newFixture(t, s)
		f.importAll(t)
		// The real samples parse; they name no component of these releases.
		for _, name := range []string{"guac-open-vex-not-affected.json", "trivy-openvex.json", "trivy-openvex-nested.json", "bom-examples-vex.json", "cisa-case-1-vex-not_affected.json"} {
			imp, err := f.svc.ImportVEX(ctx, vuln.AllSites, readFile(t, "testdata/vex/"+name))
			if err != nil || imp.Statements == 0 {
				t.Errorf("ImportVEX(%s) = %+v, %v", name, imp, err)
			}
		}
		// A supplier's statement about a component these releases have
		// (written for this test: no real one exists for it).
		doc := vex.VEX{Metadata: vex.Metadata{Context: vex.ContextLocator(), ID: "https://supplier.example/vex/1", Author: "Network Stack Supplier", Timestamp: &t0, Version: 1},
			Statements: []vex.Statement{{Vulnerability: vex.Vulnerability{Name: "CVE-2026-42506"}, Status: vex.StatusNotAffected,
				Justification: vex.VulnerableCodeNotPresent, Products: []vex.Product{{Component: vex.Component{ID: "pkg:golang/golang.org/x/net@v0.50.0"}}}}}}
		b, _ := json.Marshal(doc)
		imp, err := f.svc.ImportVEX(ctx, vuln.AllSites, b)
		if err != nil || imp.Statements != 1 || imp.Author != "Network Stack Supplier" {
			t.Fatalf("ImportVEX(supplier) = %+v, %v", imp, err)
		}
		views, _ := f.svc.Findings(ctx, vuln.AllSites, vuln.FindingQuery{VulnID: "CVE-2026-42506"})
		if len(views) != 2 || views[0].State != "patched" || !strings.Contains(views[0].Evidence[0].Text, "supplier VEX by Network Stack Supplier says not_affected") {
			t.Errorf("findings after supplier VEX = %+v", views)
		}
		_, err = f.svc.ImportVEX(ctx, vuln.AllSites, []byte(`{"@context": "https://openvex.dev/ns/v0.2.0", "statements": [{"vulnerability": {"name": "CVE-1"}, "status": "maybe"}]}`))
		if err == nil || !strings.Contains(err.Error(), `statements[0]`) {
			t.Errorf("ImportVEX(bad status) = %v", err)
		}
		if _, err := f.svc.ImportVEX(ctx, vuln.AllSites, []byte(`{"name": "x"}`)); err == nil || !strings.Contains(err.Error(), "not a VEX document") {
			t.Errorf("ImportVEX(not VEX) = %v", err)
		}
	})
}
