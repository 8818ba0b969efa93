package match

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/server/internal/sbom"
	"github.com/aftercare/aftercare/server/internal/vuln/feed"
)

// realIndex indexes every sample OSV and NVD record.
func realIndex(t testing.TB) *Index {
	t.Helper()
	var advs []*feed.Advisory
	osv, _ := filepath.Glob("../testdata/osv/*/*/*.json")
	nvd, _ := filepath.Glob("../testdata/nvd/*.json")
	for _, f := range append(osv, nvd...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var got []feed.Advisory
		if strings.Contains(f, "/osv/") {
			got, err = feed.ReadOSV(f, b, feed.Limits{})
		} else {
			got, err = feed.ReadNVD(f, b, feed.Limits{})
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			advs = append(advs, &got[i])
		}
	}
	return NewIndex(advs)
}

func sbomComponents(t testing.TB, file string) map[string]Component {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../sbom/testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := sbom.Parse(b, sbom.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Component{}
	for _, c := range doc.Components {
		out[c.Name] = Component{Name: c.Name, Version: c.Version, PURL: c.PURL, CPEs: c.CPEs, Patched: c.Patched}
	}
	return out
}

func hitFor(hits []Hit, id string) *Hit {
	for i := range hits {
		if hits[i].VulnID == id {
			return &hits[i]
		}
	}
	return nil
}

func TestMatchEmbeddedImage(t *testing.T) {
	ix := realIndex(t)
	comps := sbomComponents(t, "yocto/infusion-pump-image.cdx.json")
	tests := []struct {
		component, vuln string
		patched         bool
		rule            string // in the first rule's text
	}{
		{"openssl", "CVE-2023-0286", false, "version 3.0.7 is >= 3.0.0 and < 3.0.8"},
		{"busybox", "CVE-2022-48174", true, "version 1.36.1 is <= 1.36.1"},
		{"sqlite3", "CVE-2022-35737", true, "< 3.39.2"},
		{"curl", "CVE-2023-38546", false, "haxx:libcurl"},
		{"golang.org/x/net", "CVE-2026-42506", false, "SEMVER range [introduced 0, fixed 0.55.0] contains v0.50.0"},
		{"zlib", "CVE-2022-37434", false, "AlmaLinux:8 zlib: ECOSYSTEM range [introduced 0, fixed 1.2.11-19.el8_6] contains 1.2.11-17.el8 (rpm version ordering)"},
	}
	for _, tt := range tests {
		t.Run(tt.component+"/"+tt.vuln, func(t *testing.T) {
			hits, notes := ix.Match(comps[tt.component])
			h := hitFor(hits, tt.vuln)
			if h == nil {
				t.Fatalf("Match(%s) = %+v (notes %q); want %s", tt.component, hits, notes, tt.vuln)
			}
			if h.Patched != tt.patched {
				t.Errorf("%s in %s patched = %v, want %v (evidence %+v)", tt.vuln, tt.component, h.Patched, tt.patched, h.Evidence)
			}
			if !strings.Contains(h.Rules[0].Text, tt.rule) {
				t.Errorf("%s in %s rule = %q, want it to contain %q", tt.vuln, tt.component, h.Rules[0].Text, tt.rule)
			}
		})
	}
	// The Go module at the fixed version is not affected.
	fixedNet := comps["golang.org/x/net"]
	fixedNet.Version, fixedNet.PURL = "v0.55.0", "pkg:golang/golang.org/x/net@v0.55.0"
	if hits, _ := ix.Match(fixedNet); hitFor(hits, "CVE-2026-42506") != nil {
		t.Errorf("x/net v0.55.0 matched CVE-2026-42506, which it fixes")
	}
}

func TestMatchOpenSSLVersions(t *testing.T) {
	ix := realIndex(t)
	tests := []struct {
		version string
		want    bool
	}{
		{"1.0.2zf", true}, {"1.0.2zg", false}, {"1.1.1", true}, {"1.1.1s", true}, {"1.1.1t", false},
		{"3.0.0", true}, {"3.0.8", false}, {"3.1.0", false}, {"0.9.8", false},
	}
	for _, tt := range tests {
		c := Component{Name: "openssl", Version: tt.version, CPEs: []string{"cpe:2.3:a:openssl:openssl:" + tt.version + ":*:*:*:*:*:*:*"}}
		hits, _ := ix.Match(c)
		if got := hitFor(hits, "CVE-2023-0286") != nil; got != tt.want {
			t.Errorf("openssl %s affected by CVE-2023-0286 = %v, want %v", tt.version, got, tt.want)
		}
	}
}

func TestMatchAlpineImage(t *testing.T) {
	ix := realIndex(t)
	comps := sbomComponents(t, "real/guac-alpine-cyclonedx.json")
	hits, _ := ix.Match(comps["busybox"])
	h := hitFor(hits, "CVE-2022-48174")
	if h == nil {
		t.Fatalf("alpine busybox 1.35.0-r17: hits %+v, want CVE-2022-48174", hits)
	}
	// The packaging revision is stripped before comparing with NVD.
	if !strings.Contains(h.Rules[0].Text, "version 1.35.0 is") {
		t.Errorf("rule = %q", h.Rules[0].Text)
	}
}

func TestMatchDistroBackport(t *testing.T) {
	ix := realIndex(t)
	// AlmaLinux fixed CVE-2022-37434 in zlib 1.2.11-19.el8_6 (ALSA-2022:7106,
	// real). No NVD record of CVE-2022-37434 is in the samples, so this
	// test adds the upstream range (zlib through 1.2.12) itself.
	nvd := &feed.Advisory{ID: "CVE-2022-37434", Source: feed.KindNVD, CVEs: []string{"CVE-2022-37434"}, Severity: "critical",
		Configs: []feed.Config{{Nodes: []feed.Node{{Operator: "OR", Matches: []feed.CPEMatch{{Vulnerable: true, Criteria: "cpe:2.3:a:zlib:zlib:*:*:*:*:*:*:*:*", VersionEndIncluding: "1.2.12"}}}}}}}
	alsa := ix.byKey[osvKey("AlmaLinux", "zlib")]
	ix2 := NewIndex(append(slices.Clone(alsa), nvd))
	c := Component{Name: "zlib", Version: "1.2.11-20.el8", PURL: "pkg:rpm/almalinux/zlib@1.2.11-20.el8?distro=almalinux-8.7",
		CPEs: []string{"cpe:2.3:a:zlib:zlib:1.2.11-20.el8:*:*:*:*:*:*:*"}}
	hits, _ := ix2.Match(c)
	h := hitFor(hits, "CVE-2022-37434")
	if h == nil || !h.Patched {
		t.Fatalf("zlib 1.2.11-20.el8: hit %+v, want CVE-2022-37434 matched by NVD and patched by the distribution", h)
	}
	if !strings.Contains(h.Evidence[0].Text, "fixed it in 1.2.11-19.el8_6") {
		t.Errorf("evidence = %+v", h.Evidence)
	}
	// Before the distribution's fix it stays open.
	c.Version, c.PURL = "1.2.11-17.el8", "pkg:rpm/almalinux/zlib@1.2.11-17.el8?distro=almalinux-8.6"
	hits, _ = ix2.Match(c)
	if h := hitFor(hits, "CVE-2022-37434"); h == nil || h.Patched {
		t.Errorf("zlib 1.2.11-17.el8: hit %+v, want open", h)
	}
}

func TestMatchQuery(t *testing.T) {
	comps := sbomComponents(t, "real/guac-alpine-cyclonedx.json")
	q := Query{VulnID: "CVE-2099-0001", Name: "zlib", Introduced: "1.2.0", Fixed: "1.2.12-r4"}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	h, ok, err := MatchQuery(q, comps["zlib"])
	if err != nil || !ok || !strings.Contains(h.Rules[0].Text, "apk version ordering") {
		t.Errorf("MatchQuery(zlib 1.2.12-r3) = %+v, %v, %v", h, ok, err)
	}
	q.Fixed = "1.2.12-r3"
	if _, ok, _ := MatchQuery(q, comps["zlib"]); ok {
		t.Errorf("MatchQuery: zlib 1.2.12-r3 matched a range fixed in 1.2.12-r3")
	}
	bad := Query{PURL: "zlib"}
	err = bad.Validate()
	for _, want := range []string{"vuln_id is required", `purl "zlib"`, "an affected range"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(bad) = %v, want it to contain %q", err, want)
		}
	}
}

func TestInRangeLastAffected(t *testing.T) {
	events := []feed.Event{{Introduced: "1.0.0"}, {LastAffected: "1.2.0"}}
	for v, want := range map[string]bool{"0.9.0": false, "1.0.0": true, "1.2.0": true, "1.2.1": false} {
		if got, _, err := inRange(orderSemver, v, events); err != nil || got != want {
			t.Errorf("inRange(%s) = %v, %v; want %v", v, got, err, want)
		}
	}
}
