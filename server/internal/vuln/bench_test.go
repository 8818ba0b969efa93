package vuln_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/sbom"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/vuln"
)

// benchSBOM builds a CycloneDX SBOM of n components from the real samples:
// the juice-shop npm packages, Go modules and AlmaLinux packages that the
// sample OSV records name, and C components with the CPEs of the sample NVD
// records, at many versions. variant shifts a few versions, so releases
// differ the way consecutive firmware releases do.
func benchSBOM(b testing.TB, n, variant int) []byte {
	b.Helper()
	doc, err := sbom.Parse(readFile(b, "../sbom/testdata/real/bom-examples-juice-shop-v11.1.2.json"), sbom.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	var comps []cdx.Component
	add := func(name, version, purl, cpe string) {
		comps = append(comps, cdx.Component{BOMRef: fmt.Sprint("c", len(comps)), Type: cdx.ComponentTypeLibrary, Name: name, Version: version, PackageURL: purl, CPE: cpe})
	}
	for _, c := range doc.Components {
		add(c.Name, c.Version, c.PURL, "")
	}
	for i := 0; len(comps) < n; i++ {
		v := i + variant
		switch i % 4 {
		case 0:
			mod := []string{"golang.org/x/net", "golang.org/x/crypto"}[v%2]
			ver := fmt.Sprintf("v0.%d.0", v%60)
			add(mod, ver, "pkg:golang/"+mod+"@"+ver, "")
		case 1:
			pkg := []string{"curl", "openssl", "zlib", "sqlite", "expat", "systemd"}[v%6]
			ver := fmt.Sprintf("1.%d.%d-%d.el8", v%3, v%20, v%30)
			add(pkg, ver, fmt.Sprintf("pkg:rpm/almalinux/%s@%s?arch=x86_64&distro=almalinux-8.6", pkg, ver), "")
		case 2:
			prod := [][2]string{{"openssl", "openssl"}, {"busybox", "busybox"}, {"sqlite", "sqlite"}, {"haxx", "libcurl"}, {"webmproject", "libwebp"}, {"tukaani", "xz"}}[v%6]
			ver := fmt.Sprintf("%d.%d.%d", 1+v%3, v%40, v%10)
			add(prod[1], ver, "", fmt.Sprintf("cpe:2.3:a:%s:%s:%s:*:*:*:*:*:*:*", prod[0], prod[1], ver))
		default:
			ver := fmt.Sprintf("4.%d.%d", v%18, v%5)
			add(fmt.Sprint("express-plugin-", v%97), ver, fmt.Sprintf("pkg:npm/express-plugin-%d@%s", v%97, ver), "")
		}
	}
	bom := cdx.NewBOM()
	bom.SpecVersion = cdx.SpecVersion1_5
	comps = comps[:n]
	bom.Components = &comps
	var buf bytes.Buffer
	if err := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON).Encode(bom); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// benchService is a service on SQLite with every sample feed imported.
func benchService(b *testing.B) (*vuln.Service, *store.Store, string) {
	b.Helper()
	url := storetest.SQLiteURL(b)
	s, err := store.Open(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	svc, err := vuln.New(vuln.Options{Store: s, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	f := &fixture{svc: svc, st: s}
	f.importAllB(b)
	return svc, s, url
}

func (f *fixture) importAllB(b *testing.B) {
	ctx := context.Background()
	imp := func(kind string, data []byte) {
		if _, err := f.svc.Import(ctx, vuln.AllSites, kind, data, vuln.Source{}); err != nil {
			b.Fatal(err)
		}
	}
	imp("osv", zipOf(b, "testdata/osv/almalinux/*/*.json"))
	imp("osv", zipOf(b, "testdata/osv/golang-vulndb/*/*.json"))
	nvd, _ := filepath.Glob("testdata/nvd/*.json")
	for _, p := range nvd {
		imp("nvd", readFile(b, p))
	}
	imp("kev", readFile(b, "testdata/kev/known_exploited_vulnerabilities.json"))
}

func benchRelease(b *testing.B, s *store.Store, i int) store.Release {
	m := firmware.Manifest{Format: 1, Product: "pump", Version: fmt.Sprintf("1.%d.0", i), Models: []string{"pump-x1"}}
	r := store.Release{ID: fmt.Sprintf("r%03d", i), Product: "pump", Version: m.Version, TargetPath: "pump/" + m.Version, Manifest: m, CreatedAt: time.Now()}
	if err := s.CreateRelease(context.Background(), r); err != nil {
		b.Fatal(err)
	}
	return r
}

// osvScanner times osv-scanner (offline, the same sample OSV records) on
// the same SBOM, when OSV_SCANNER names its binary (`make bench` builds it
// from tools/osv-scanner).
func osvScanner(b *testing.B, bomJSON []byte) (time.Duration, int, bool) {
	bin := os.Getenv("OSV_SCANNER")
	if bin == "" {
		return 0, 0, false
	}
	dir := b.TempDir()
	for eco, pattern := range map[string]string{"AlmaLinux": "testdata/osv/almalinux/*/*.json", "Go": "testdata/osv/golang-vulndb/*/*.json", "npm": "testdata/none/*"} {
		p := filepath.Join(dir, "osv-scalibr", eco, "all.zip")
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, zipOf(b, pattern), 0o644)
	}
	bomFile := filepath.Join(dir, "bench.cdx.json")
	os.WriteFile(bomFile, bomJSON, 0o644)
	found := 0
	run := func() (time.Duration, error) {
		cmd := exec.Command(bin, "scan", "source", "--offline-vulnerabilities", "--offline", "--format", "json", "-L", bomFile)
		cmd.Env = append(os.Environ(), "OSV_SCALIBR_LOCAL_DB_CACHE_DIRECTORY="+dir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		d := time.Since(start)
		// osv-scanner exits 1 when it finds vulnerabilities.
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 {
			err = nil
		}
		if err != nil {
			return 0, fmt.Errorf("%v: %s", err, out.String())
		}
		var res struct {
			Results []struct {
				Packages []struct {
					Vulnerabilities []json.RawMessage `json:"vulnerabilities"`
				} `json:"packages"`
			} `json:"results"`
		}
		brace := bytes.IndexByte(out.Bytes(), '{')
		if brace < 0 || json.Unmarshal(out.Bytes()[brace:], &res) != nil {
			return 0, fmt.Errorf("osv-scanner output is not JSON: %.300s", out.String())
		}
		found = 0
		for _, r := range res.Results {
			for _, p := range r.Packages {
				found += len(p.Vulnerabilities)
			}
		}
		return d, nil
	}
	if _, err := run(); err != nil { // warm the page cache
		b.Logf("osv-scanner did not run: %v", err)
		return 0, 0, false
	}
	best := time.Duration(1 << 62)
	for range 3 {
		d, err := run()
		if err != nil {
			b.Logf("osv-scanner: %v", err)
			return 0, 0, false
		}
		best = min(best, d)
	}
	return best, found, true
}

// BenchmarkMatch2000 analyses one release of 2,000 components against the
// full sample feeds, and compares with osv-scanner on the same SBOM.
func BenchmarkMatch2000(b *testing.B) {
	svc, s, _ := benchService(b)
	ctx := context.Background()
	bomJSON := benchSBOM(b, 2000, 0)
	rel := benchRelease(b, s, 0)
	if _, err := svc.IngestSBOM(ctx, rel, bomJSON); err != nil {
		b.Fatal(err)
	}
	var res vuln.AnalysisResult
	start := time.Now()
	n := 0
	for b.Loop() {
		var err error
		if res, err = svc.Analyse(ctx, []string{rel.ID}); err != nil {
			b.Fatal(err)
		}
		n++
	}
	per := time.Since(start) / time.Duration(n)
	b.ReportMetric(float64(res.Findings), "findings")
	views, err := svc.Findings(ctx, vuln.AllSites, vuln.FindingQuery{ReleaseID: rel.ID})
	if err != nil {
		b.Fatal(err)
	}
	byOSV := map[string]bool{}
	for _, v := range views {
		for _, r := range v.Rules {
			if r.Source == "osv" {
				byOSV[v.ComponentName+" "+v.ComponentVersion+" "+r.Advisory] = true
			}
		}
	}
	if osv, found, ok := osvScanner(b, bomJSON); ok {
		b.ReportMetric(float64(per)/float64(osv), "x-osv-scanner-time")
		b.Logf("2,000 components: Aftercare analysis %s (%d findings by purl and CPE rules; %d component-advisory pairs from OSV records), osv-scanner offline %s (whole process; %d package vulnerabilities): ratio %.3f",
			per, res.Findings, len(byOSV), osv, found, float64(per)/float64(osv))
	}
}

// BenchmarkReanalyse50 re-analyses 50 releases of 2,000 components after a
// feed update. Goal: under 5 s.
func BenchmarkReanalyse50(b *testing.B) {
	svc, s, _ := benchService(b)
	ctx := context.Background()
	for i := range 50 {
		rel := benchRelease(b, s, i)
		doc, err := sbom.Parse(benchSBOM(b, 2000, i/5), sbom.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		comps := make([]store.SBOMComponent, len(doc.Components))
		for j, c := range doc.Components {
			comps[j] = store.SBOMComponent{Ref: c.Ref, Name: c.Name, Version: c.Version, PURL: c.PURL, CPEs: c.CPEs}
		}
		if err := s.PutReleaseSBOM(ctx, store.ReleaseSBOM{ReleaseID: rel.ID, Format: doc.Format, IngestedAt: time.Now()}, rel.Manifest.Models, comps); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := svc.Analyse(ctx, nil); err != nil {
		b.Fatal(err)
	}
	update := readFile(b, "testdata/nvd/api-page-13-cves.json")
	var last vuln.AnalysisResult
	start := time.Now()
	n := 0
	for b.Loop() {
		res, err := svc.Import(ctx, vuln.AllSites, "nvd", update, vuln.Source{Origin: "update.json"})
		if err != nil {
			b.Fatal(err)
		}
		last = res.Analysis
		n++
	}
	per := time.Since(start) / time.Duration(n)
	goal := 5 * time.Second
	b.ReportMetric(float64(per)/float64(goal), "x-goal-5s")
	b.Logf("feed update + re-analysis of %d releases, %d components, %d findings: %s (%.3f of the 5 s goal)", last.Releases, last.Components, last.Findings, per, float64(per)/float64(goal))
}

// BenchmarkExposure100k answers "exposed to CVE-2023-0286?" across 100,000
// devices in 200 sites running 50 releases. Goal: under 100 ms. Baseline:
// counting the devices table in the same run.
func BenchmarkExposure100k(b *testing.B) {
	svc, s, url := benchService(b)
	ctx := context.Background()
	image := readFile(b, "../sbom/testdata/yocto/infusion-pump-image.cdx.json")
	var rels []store.Release
	for i := range 50 {
		rel := benchRelease(b, s, i)
		if _, err := svc.IngestSBOM(ctx, rel, image); err != nil {
			b.Fatal(err)
		}
		rels = append(rels, rel)
	}
	fix := firmware.Manifest{Format: 1, Product: "pump", Version: "2.0.0", Models: []string{"pump-x1"}}
	if err := s.CreateRelease(ctx, store.Release{ID: "fix", Product: "pump", Version: "2.0.0", TargetPath: "pump/2.0.0", Manifest: fix, CreatedAt: time.Now()}); err != nil {
		b.Fatal(err)
	}
	// 100,000 devices written straight into the table: enrolling them one by
	// one would measure enrollment, not exposure.
	db, err := sql.Open("sqlite3", "file:"+url[len("sqlite://"):]+"?_journal_mode=WAL&_busy_timeout=10000")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tx, _ := db.Begin()
	for i := range 200 {
		if _, err := tx.Exec(`INSERT INTO sites (id, name, organisation, created_at) VALUES (?, ?, ?, ?)`, fmt.Sprint("s", i), fmt.Sprint("Site ", i), fmt.Sprint("Hospital ", i/4), "2026-01-01T00:00:00.000000Z"); err != nil {
			b.Fatal(err)
		}
	}
	stmt, _ := tx.Prepare(`INSERT INTO devices (id, site_id, serial, model, hardware_revision, installed_version, token_hash, state, state_reason, last_seq, enrolled_at)
		VALUES (?, ?, ?, 'pump-x1', '', ?, ?, 'idle', '', 0, '2026-01-01T00:00:00.000000Z')`)
	for i := range 100_000 {
		if _, err := stmt.Exec(fmt.Sprint("d", i), fmt.Sprint("s", i%200), fmt.Sprint("SN", i), rels[i%50].Version, fmt.Sprint("h", i)); err != nil {
			b.Fatal(err)
		}
	}
	stmt.Close()
	// A rollout of a fixed release is under way: one device in ten is
	// assigned it, half of those downloading.
	if _, err := tx.Exec(`INSERT INTO rollouts (id, release_id, selector, created_at) VALUES ('ro', 'fix', '{}', '2026-01-01T00:00:00.000000Z')`); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 100_000; i += 10 {
		if _, err := tx.Exec(`INSERT INTO assignments (device_id, rollout_id, release_id, assigned_at) VALUES (?, 'ro', 'fix', '2026-01-01T00:00:00.000000Z')`, fmt.Sprint("d", i)); err != nil {
			b.Fatal(err)
		}
		if i%20 == 0 {
			tx.Exec(`UPDATE devices SET state = 'downloading', state_release_id = 'fix' WHERE id = ?`, fmt.Sprint("d", i))
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	baseStart := time.Now()
	for range 10 {
		var n int
		db.QueryRow(`SELECT COUNT(*) FROM devices`).Scan(&n)
	}
	base := time.Since(baseStart) / 10
	var e *vuln.Exposure
	start := time.Now()
	n := 0
	for b.Loop() {
		if e, err = svc.Exposure(ctx, vuln.AllSites, "CVE-2023-0286", vuln.ExposureOptions{}); err != nil {
			b.Fatal(err)
		}
		n++
	}
	per := time.Since(start) / time.Duration(n)
	if e.Totals.Total != 100_000 || len(e.Organisations) != 50 || e.Totals.Pending != 5_000 || e.Totals.Installing != 5_000 {
		b.Fatalf("exposure counted %+v in %d organisations, want 100000 (5000 pending, 5000 installing) in 50", e.Totals, len(e.Organisations))
	}
	b.ReportMetric(float64(per)/float64(100*time.Millisecond), "x-goal-100ms")
	b.ReportMetric(float64(per)/float64(base), "x-count-devices")
	b.Logf("exposed to CVE-2023-0286 across %d devices (10%% assigned a fix), %d sites: %s (%.3f of the 100 ms goal; %.1f x a COUNT(*) of the devices table, %s)",
		e.Totals.Total, 200, per, float64(per)/float64(100*time.Millisecond), float64(per)/float64(base), base)
}
