package sbom

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"
)

func read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func find(doc *Document, name string) *Component {
	for i := range doc.Components {
		if doc.Components[i].Name == name {
			return &doc.Components[i]
		}
	}
	return nil
}

func TestParseReal(t *testing.T) {
	tests := []struct {
		file, format, spec string
		components         int
		check              string // a component that must be there
		purl, cpe          string
	}{
		{"real/guac-alpine-cyclonedx.json", FormatCycloneDX, "1.4", 15, "busybox", "pkg:alpine/busybox@1.35.0-r17?arch=x86_64&distro=alpine-3.16.2&upstream=busybox", "cpe:2.3:a:busybox:busybox:1.35.0-r17:*:*:*:*:*:*:*"},
		{"real/guac-busybox-cyclonedx.json", FormatCycloneDX, "1.4", 1, "busybox", "", ""},
		{"real/trivy-centos-7-cyclonedx.json", FormatCycloneDX, "1.5", 3, "openssl-libs", "pkg:rpm/centos/openssl-libs@1.0.2k-16.el7?arch=x86_64&distro=centos-7.6.1810&epoch=1", ""},
		{"real/guac-alpine-spdx.json", FormatSPDX, "SPDX-2.2", 14, "zlib", "pkg:alpine/zlib@1.2.12-r3?arch=x86_64&distro=alpine-3.16.2&upstream=zlib", "cpe:2.3:a:zlib:zlib:1.2.12-r3:*:*:*:*:*:*:*"},
		{"real/trivy-centos-7-spdx.json", FormatSPDX, "SPDX-2.2", 4, "openssl-libs", "", ""},
		{"real/bom-examples-juice-shop-v11.1.2.json", FormatCycloneDX, "1.2", 840, "express", "pkg:npm/express@4.17.1", ""},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			doc, err := Parse(read(t, tt.file), Limits{})
			if err != nil {
				t.Fatalf("Parse(%s) error = %v", tt.file, err)
			}
			if doc.Format != tt.format || doc.SpecVersion != tt.spec {
				t.Errorf("Parse(%s) format = %s %s, want %s %s", tt.file, doc.Format, doc.SpecVersion, tt.format, tt.spec)
			}
			if len(doc.Components) != tt.components {
				t.Errorf("Parse(%s) gave %d components, want %d", tt.file, len(doc.Components), tt.components)
			}
			c := find(doc, tt.check)
			if c == nil {
				t.Fatalf("Parse(%s): no component %q", tt.file, tt.check)
			}
			if tt.purl != "" && c.PURL != tt.purl {
				t.Errorf("%s purl = %q, want %q", tt.check, c.PURL, tt.purl)
			}
			if tt.cpe != "" && !slices.Contains(c.CPEs, tt.cpe) {
				t.Errorf("%s cpes = %q, want %q among them", tt.check, c.CPEs, tt.cpe)
			}
		})
	}
}

func TestParseBackportEvidence(t *testing.T) {
	doc, err := Parse(read(t, "yocto/infusion-pump-image.cdx.json"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if doc.Name != "infusion-pump-image 1.1.0" {
		t.Errorf("Name = %q", doc.Name)
	}
	want := map[string][]string{
		"busybox": {"CVE-2022-48174"}, // component property
		"sqlite3": {"CVE-2022-35737"}, // embedded analysis "resolved"
		"openssl": nil,                // "in_triage" is not evidence
	}
	for name, patched := range want {
		if c := find(doc, name); c == nil || !slices.Equal(c.Patched, patched) {
			t.Errorf("component %s patched = %v, want %v", name, c, patched)
		}
	}
	if !slices.ContainsFunc(doc.Warnings, func(w string) bool { return strings.Contains(w, `"generic"`) }) {
		t.Errorf("Warnings = %q, want one about the generic purl type", doc.Warnings)
	}
}

func TestParseSPDXYoctoSourceInfo(t *testing.T) {
	in := `{"spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": "core-image", "documentNamespace": "http://spdx.org/spdxdocs/x",
	  "creationInfo": {"created": "2024-01-01T00:00:00Z", "creators": ["Tool: test"]},
	  "packages": [{"name": "busybox", "SPDXID": "SPDXRef-busybox", "versionInfo": "1.36.1", "downloadLocation": "NOASSERTION",
	    "sourceInfo": "CVEs fixed: CVE-2022-48174 CVE-2022-28391",
	    "externalRefs": [{"referenceCategory": "SECURITY", "referenceType": "cpe23Type", "referenceLocator": "cpe:2.3:*:*:busybox:1.36.1:*:*:*:*:*:*:*"}]}]}`
	doc, err := Parse([]byte(in), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	c := doc.Components[0]
	if !slices.Equal(c.Patched, []string{"CVE-2022-28391", "CVE-2022-48174"}) || len(c.CPEs) != 1 {
		t.Errorf("component = %+v", c)
	}
}

func TestParseBad(t *testing.T) {
	tests := []struct {
		file string
		want string // in the error
		lim  Limits
	}{
		{"bad/syntax-error-line-3.json", "line 3 column", Limits{}},
		{"bad/truncated.json", "line 2", Limits{}},
		{"bad/bad-purl.json", `components[0].purl "openssl@3.0.7"`, Limits{}},
		{"bad/bad-cpe.json", `components[0].cpe "cpe:2.3:a:openssl"`, Limits{}},
		{"bad/unknown-purl-type.json", `purl type "firmwarez" is not a known purl type`, Limits{}},
		{"bad/version-is-number.json", "field components.version", Limits{}},
		{"bad/unknown-spec-version.json", "specVersion", Limits{}},
		{"bad/too-deep.json", "nested deeper than 64 levels", Limits{}},
		{"bad/spdx-2.1.json", `spdxVersion "SPDX-2.1"`, Limits{}},
		{"bad/xml.json", "line 1 column 1", Limits{}},
		{"bad/not-an-sbom.json", "neither a CycloneDX", Limits{}},
		{"real/guac-alpine-cyclonedx.json", "more than 5 components", Limits{MaxComponents: 5}},
		{"real/guac-alpine-cyclonedx.json", "at most 1000 are allowed", Limits{MaxBytes: 1000}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file)+"/"+tt.want, func(t *testing.T) {
			doc, err := Parse(read(t, tt.file), tt.lim)
			if !errors.Is(err, ErrInvalid) || doc != nil {
				t.Fatalf("Parse(%s) = %v, %v; want ErrInvalid", tt.file, doc, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%s) error = %q, want it to contain %q", tt.file, err, tt.want)
			}
		})
	}
	if _, err := Parse(nil, Limits{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Parse(empty) error = %v, want ErrInvalid", err)
	}
}

func TestWriteGoBinaryRoundTrip(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/aftercare/aftercare", Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "golang.org/x/net", Version: "v0.50.0", Sum: "h1:abc="},
			{Path: "github.com/old/mod", Version: "v1.0.0", Replace: &debug.Module{Path: "github.com/new/mod", Version: "v1.2.0"}},
		},
		Settings: []debug.BuildSetting{{Key: "GOARCH", Value: "arm64"}, {Key: "-ldflags", Value: "-X secret=1"}},
	}
	var buf bytes.Buffer
	if err := WriteGoBinary(&buf, bi, "aftercare-agent", "1.1.0", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "ldflags") {
		t.Errorf("the SBOM carries build flags, which may hold secrets")
	}
	doc, err := Parse(buf.Bytes(), Limits{})
	if err != nil {
		t.Fatalf("Parse(WriteGoBinary output) error = %v", err)
	}
	if doc.SpecVersion != "1.6" || doc.Name != "aftercare-agent 1.1.0" {
		t.Errorf("doc = %s %q", doc.SpecVersion, doc.Name)
	}
	wantPURLs := []string{"pkg:golang/stdlib@v1.26.8", "pkg:golang/golang.org/x/net@v0.50.0", "pkg:golang/github.com/new/mod@v1.2.0"}
	var got []string
	for _, c := range doc.Components {
		got = append(got, c.PURL)
	}
	if !slices.Equal(got, wantPURLs) {
		t.Errorf("purls = %q, want %q", got, wantPURLs)
	}
}

func TestWriteGoBinaryOfThisTest(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Skip("test binary has no build info")
	}
	var buf bytes.Buffer
	if err := WriteGoBinary(&buf, bi, "sbom.test", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	doc, err := Parse(buf.Bytes(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if c := find(doc, "stdlib"); c == nil || c.Version != "v"+strings.TrimPrefix(bi.GoVersion, "go") {
		t.Errorf("SBOM of this test binary: stdlib = %+v, want the Go version %s", c, bi.GoVersion)
	}
}
