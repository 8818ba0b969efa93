package feed

import (
	"archive/zip"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func glob(t testing.TB, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "testdata", pattern))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files %s: %v", pattern, err)
	}
	return files
}

func TestReadOSVReal(t *testing.T) {
	for _, f := range append(glob(t, "osv/almalinux/*/*.json"), glob(t, "osv/golang-vulndb/*/*.json")...) {
		b, _ := os.ReadFile(f)
		advs, err := ReadOSV(filepath.Base(f), b, Limits{})
		if err != nil || len(advs) != 1 {
			t.Fatalf("ReadOSV(%s) = %d, %v", f, len(advs), err)
		}
	}
	advs, _ := ReadOSV("ALSA-2022_7106.json", read(t, "osv/almalinux/zlib/ALSA-2022_7106.json"), Limits{})
	a := advs[0]
	if a.ID != "ALSA-2022:7106" || !slices.Equal(a.CVEs, []string{"CVE-2022-37434"}) || a.Severity != "medium" {
		t.Errorf("ALSA-2022:7106 = %+v", a)
	}
	if len(a.Affected) != 3 || a.Affected[0].Ecosystem != "AlmaLinux:8" || a.Affected[0].Ranges[0].Events[1].Fixed != "1.2.11-19.el8_6" {
		t.Errorf("ALSA-2022:7106 affected = %+v", a.Affected)
	}
	advs, _ = ReadOSV("GO-2026-5025.json", read(t, "osv/golang-vulndb/golang.org_x_net/GO-2026-5025.json"), Limits{})
	if a := advs[0]; !slices.Equal(a.CVEs, []string{"CVE-2026-42506"}) || a.Affected[0].Ranges[0].Type != "SEMVER" {
		t.Errorf("GO-2026-5025 = %+v", a)
	}
}

// osvZip packs the sample OSV records as an ecosystem's all.zip.
func osvZip(t testing.TB, pattern string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range glob(t, pattern) {
		b, _ := os.ReadFile(f)
		w, _ := zw.Create(filepath.Base(f))
		w.Write(b)
	}
	zw.Close()
	return buf.Bytes()
}

func TestReadOSVZip(t *testing.T) {
	z := osvZip(t, "osv/almalinux/*/*.json")
	advs, err := ReadOSV("all.zip", z, Limits{})
	if err != nil || len(advs) != 23 {
		t.Fatalf("ReadOSV(all.zip) = %d, %v; want 23 records", len(advs), err)
	}
	_, err = ReadOSV("all.zip", z[:len(z)/2], Limits{})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("ReadOSV(half a zip) error = %v, want it to say truncated", err)
	}
	_, err = ReadOSV("all.zip", z, Limits{MaxRecordBytes: 1000})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than 1000 bytes") {
		t.Errorf("ReadOSV(zip, small record limit) error = %v", err)
	}
}

func TestReadNVDReal(t *testing.T) {
	total := 0
	for _, f := range glob(t, "nvd/*.json") {
		b, _ := os.ReadFile(f)
		advs, err := ReadNVD(filepath.Base(f), b, Limits{})
		if err != nil || len(advs) == 0 {
			t.Fatalf("ReadNVD(%s) = %d, %v", f, len(advs), err)
		}
		total += len(advs)
	}
	if total != 27+13 {
		t.Errorf("read %d CVEs from the NVD samples, want 40", total)
	}
	advs, _ := ReadNVD("CVE-2023-0286.json", read(t, "nvd/CVE-2023-0286.json"), Limits{})
	a := advs[0]
	if a.ID != "CVE-2023-0286" || a.Severity != "high" || a.CVSS != 7.4 || a.Modified.IsZero() {
		t.Errorf("CVE-2023-0286 = %+v", a)
	}
	m := a.Configs[0].Nodes[0].Matches[2]
	if m.Criteria != "cpe:2.3:a:openssl:openssl:*:*:*:*:*:*:*:*" || m.VersionStartIncluding != "3.0.0" || m.VersionEndExcluding != "3.0.8" {
		t.Errorf("CVE-2023-0286 third cpeMatch = %+v", m)
	}
	// gzip, as NVD serves its feed files.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(read(t, "nvd/api-page-13-cves.json"))
	zw.Close()
	if advs, err := ReadNVD("page.json.gz", gz.Bytes(), Limits{}); err != nil || len(advs) != 13 {
		t.Errorf("ReadNVD(gzip page) = %d, %v", len(advs), err)
	}
}

func TestReadKEVAndEPSSReal(t *testing.T) {
	cat, err := ReadKEV("kev.json", read(t, "kev/known_exploited_vulnerabilities.json"), Limits{})
	if err != nil || cat.Version != "2025.08.25" || len(cat.Entries) != 1404 {
		t.Fatalf("ReadKEV = %v, %v", cat, err)
	}
	snap, err := ReadEPSS("epss.csv", read(t, "epss/vunnel-example-1.csv"), Limits{})
	if err != nil || snap.ScoreDate != "2025-02-20T00:00:00+0000" || len(snap.Scores) != 5 || snap.Scores[4].Score != 0.91963 {
		t.Fatalf("ReadEPSS = %+v, %v", snap, err)
	}
}

func TestReadBad(t *testing.T) {
	read := func(kind string) func(string, []byte) error {
		return func(name string, b []byte) error {
			var err error
			switch kind {
			case KindOSV:
				_, err = ReadOSV(name, b, Limits{})
			case KindNVD:
				_, err = ReadNVD(name, b, Limits{})
			case KindKEV:
				_, err = ReadKEV(name, b, Limits{})
			case KindEPSS:
				_, err = ReadEPSS(name, b, Limits{})
			}
			return err
		}
	}
	tests := []struct {
		kind, file, want string
	}{
		{KindKEV, "bad/kev-truncated.json", "line "},
		{KindNVD, "bad/nvd-truncated.json", "unexpected end of JSON input"},
		{KindEPSS, "bad/epss-bad-score.csv", `line 4: epss "1.7" must be a number from 0 to 1`},
		{KindEPSS, "bad/epss-wrong-header.csv", "wrong number of fields"},
		{KindOSV, "bad/osv-bad-range-type.json", `ranges[0].type "SEMVERISH"`},
		{KindKEV, "bad/osv-as-kev.json", "not the KEV catalog"},
		{KindNVD, "bad/osv-as-kev.json", `id "GO-2026-5025" is not a CVE ID`},
		{KindNVD, "epss/vunnel-example-1.csv", "line 1 column 1"},
		{KindEPSS, "kev/known_exploited_vulnerabilities.json", "header"},
		{KindOSV, "kev/known_exploited_vulnerabilities.json", "id is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.kind+"/"+filepath.Base(tt.file), func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("..", "testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			err = read(tt.kind)(filepath.Base(tt.file), b)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("read %s as %s: error = %v, want ErrInvalid containing %q", tt.file, tt.kind, err, tt.want)
			}
		})
	}
}
