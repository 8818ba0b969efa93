// Package sbom reads the software bill of materials a release ships with:
// CycloneDX JSON (through cyclonedx-go) and SPDX 2.2/2.3 JSON (through
// spdx/tools-golang), into one list of components that the vulnerability
// matcher understands.
//
// An SBOM is untrusted bytes until it is parsed. Parse bounds its size, the
// nesting depth of its JSON and the number of components (Limits), checks
// every purl and CPE a component carries, and reports every problem at once,
// each naming the line or the field (components[12].purl, packages[3]...),
// so a release engineer can fix the generator's output.
//
// Backport evidence: a component may say that it carries the fix for a CVE
// although its version is in the vulnerable range (Yocto's CVE_STATUS,
// a distribution's patched package). Parse collects it into
// Component.Patched from
//   - CycloneDX: an embedded vulnerability whose analysis.state is
//     "resolved", "resolved_with_pedigree", "not_affected" or "false_positive"
//     and whose affects[].ref names the component (meta-cyclonedx writes these
//     from Yocto's CVE_STATUS), and component properties named
//     "aftercare:patched-cve" (a CVE ID or a comma-separated list);
//   - SPDX: a package sourceInfo "CVEs fixed: CVE-... CVE-..." (Yocto's
//     create-spdx) and annotations whose comment is "patched: CVE-...".
package sbom

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/knqyf263/go-cpe/naming"
	"github.com/package-url/packageurl-go"
)

// Formats of SBOM.
const (
	FormatCycloneDX = "CycloneDX"
	FormatSPDX      = "SPDX"
)

// Limits bound what Parse accepts. Zero fields take the defaults.
type Limits struct {
	MaxBytes      int64 // whole document; default 64 MiB
	MaxDepth      int   // JSON nesting; default 64
	MaxComponents int   // components or packages, nested ones included; default 50,000
}

// DefaultLimits are the limits used for zero fields.
var DefaultLimits = Limits{MaxBytes: 64 << 20, MaxDepth: 64, MaxComponents: 50_000}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultLimits.MaxBytes
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultLimits.MaxDepth
	}
	if l.MaxComponents <= 0 {
		l.MaxComponents = DefaultLimits.MaxComponents
	}
	return l
}

// ErrInvalid is wrapped by every error Parse returns for a bad document.
var ErrInvalid = errors.New("sbom: invalid document")

// An InvalidError lists every problem found in a document.
// errors.Is(err, ErrInvalid) holds for it.
type InvalidError struct {
	Problems []string
}

func (e *InvalidError) Error() string {
	return "invalid SBOM: " + strings.Join(e.Problems, "; ")
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(problems ...string) error { return &InvalidError{Problems: problems} }

// A Document is a parsed SBOM.
type Document struct {
	Format      string      `json:"format"`       // FormatCycloneDX or FormatSPDX
	SpecVersion string      `json:"spec_version"` // "1.5", "SPDX-2.3", ...
	Name        string      `json:"name"`         // the described product, when the SBOM names it
	Components  []Component `json:"components"`
	// Warnings are facts a human should know that do not make the
	// document invalid, e.g. a purl type no vulnerability feed covers.
	Warnings []string `json:"warnings,omitempty"`
}

// A Component is one package, library or file of the release.
type Component struct {
	Ref      string   `json:"ref"`     // bom-ref or SPDXID
	Field    string   `json:"field"`   // where it is in the document, e.g. "components[3]"
	Name     string   `json:"name"`    // e.g. "openssl"
	Version  string   `json:"version"` // as the SBOM gives it
	Supplier string   `json:"supplier,omitempty"`
	PURL     string   `json:"purl,omitempty"`    // canonical form
	CPEs     []string `json:"cpes,omitempty"`    // CPE 2.3 formatted strings
	Patched  []string `json:"patched,omitempty"` // CVE IDs fixed by backport, sorted
}

// Parse reads a CycloneDX or SPDX JSON document within lim.
func Parse(b []byte, lim Limits) (*Document, error) {
	lim = lim.withDefaults()
	if int64(len(b)) > lim.MaxBytes {
		return nil, invalid(fmt.Sprintf("document is %d bytes; at most %d are allowed (sbom max_bytes)", len(b), lim.MaxBytes))
	}
	if err := checkJSON(b, lim.MaxDepth); err != nil {
		return nil, err
	}
	var probe struct {
		BOMFormat   string `json:"bomFormat"`
		SPDXVersion string `json:"spdxVersion"`
	}
	if err := jsonUnmarshal(b, &probe); err != nil {
		return nil, err
	}
	switch {
	case probe.BOMFormat == "CycloneDX":
		return parseCycloneDX(b, lim)
	case strings.HasPrefix(probe.SPDXVersion, "SPDX-"):
		return parseSPDX(b, lim, probe.SPDXVersion)
	case probe.BOMFormat != "":
		return nil, invalid(fmt.Sprintf("bomFormat %q: only \"CycloneDX\" is a CycloneDX document", probe.BOMFormat))
	}
	return nil, invalid("neither a CycloneDX JSON document (bomFormat \"CycloneDX\") nor an SPDX JSON document (spdxVersion \"SPDX-2.3\"); XML, tag-value and RDF forms are not accepted")
}

// builder collects components and their problems.
type builder struct {
	doc      Document
	problems []string
	lim      Limits
	count    int
}

func (b *builder) problem(format string, args ...any) {
	// Bound the list, so a document with a million bad purls makes a
	// readable error, not a megabyte of one.
	const maxProblems = 50
	if len(b.problems) == maxProblems {
		b.problems = append(b.problems, "further problems not listed")
	}
	if len(b.problems) > maxProblems {
		return
	}
	b.problems = append(b.problems, fmt.Sprintf(format, args...))
}

// counted reports false, once, when the document has too many components.
func (b *builder) counted() bool {
	b.count++
	if b.count == b.lim.MaxComponents+1 {
		b.problem("more than %d components; raise sbom max_components if the release really has that many", b.lim.MaxComponents)
	}
	return b.count <= b.lim.MaxComponents
}

func (b *builder) add(c Component, purl string, cpes []string) {
	if c.Name == "" {
		b.problem("%s: name is empty", c.Field)
	}
	if purl != "" {
		p, err := packageurl.FromString(purl)
		switch {
		case err != nil:
			b.problem("%s.purl %q is not a package URL: %v", c.Field, purl, err)
		case !registeredPURLType(p.Type):
			b.problem("%s.purl %q: purl type %q is not a known purl type (purl-spec PURL-TYPES); name a component without a package ecosystem pkg:generic/<name>@<version> and give its CPE", c.Field, purl, p.Type)
		default:
			c.PURL = p.ToString()
			if !KnownPURLType(p.Type) {
				b.doc.Warnings = append(b.doc.Warnings, fmt.Sprintf("%s.purl %q: purl type %q has no vulnerability ecosystem; the component is matched by CPE only", c.Field, purl, p.Type))
			}
		}
	}
	for _, cpe := range cpes {
		if err := ValidCPE(cpe); err != nil {
			b.problem("%s.cpe %q: %v", c.Field, cpe, err)
			continue
		}
		if !containsString(c.CPEs, cpe) {
			c.CPEs = append(c.CPEs, cpe)
		}
	}
	sort.Strings(c.Patched)
	c.Patched = compactStrings(c.Patched)
	b.doc.Components = append(b.doc.Components, c)
}

func (b *builder) finish() (*Document, error) {
	if len(b.problems) > 0 {
		return nil, invalid(b.problems...)
	}
	if b.doc.Components == nil {
		b.doc.Components = []Component{}
	}
	return &b.doc, nil
}

// ValidCPE checks a CPE 2.3 formatted string ("cpe:2.3:part:vendor:product:version:...",
// 13 fields).
func ValidCPE(s string) error {
	if !strings.HasPrefix(s, "cpe:2.3:") {
		return errors.New(`not a CPE 2.3 formatted string (must start with "cpe:2.3:")`)
	}
	// Yocto writes the part as "*" (any); the reference implementation
	// refuses a logical value there, so check the rest with part "a".
	if rest, ok := strings.CutPrefix(s, "cpe:2.3:*:"); ok {
		s = "cpe:2.3:a:" + rest
	}
	w, err := naming.UnbindFS(s)
	if err != nil {
		return fmt.Errorf("not a CPE 2.3 formatted string: %v", err)
	}
	if part := w.GetString("part"); part != "a" && part != "o" && part != "h" && part != "ANY" {
		return fmt.Errorf("part %q must be a, o or h", part)
	}
	return nil
}

// purlEcosystems are the purl types a vulnerability feed covers.
var purlEcosystems = map[string]bool{
	"apk": true, "alpine": true, "deb": true, "rpm": true, "golang": true, "npm": true, "pypi": true,
	"maven": true, "cargo": true, "nuget": true, "gem": true, "composer": true, "hex": true, "pub": true,
	"swift": true, "cran": true, "hackage": true, "bitnami": true, "conan": true,
}

// registeredPURLType reports whether t is a purl type of the spec, or
// "alpine", which syft writes for Alpine packages (the spec's is "apk").
func registeredPURLType(t string) bool {
	_, ok := packageurl.KnownTypes[t]
	return ok || t == "alpine"
}

// KnownPURLType reports whether a vulnerability ecosystem covers purl type t.
// "generic" and unknown types are matched by CPE only.
func KnownPURLType(t string) bool { return purlEcosystems[t] }

var cveRE = regexp.MustCompile(`(?i)\bCVE-\d{4}-\d{4,}\b`)

// cveIDs returns the CVE IDs in s, upper-cased.
func cveIDs(s string) []string {
	ids := cveRE.FindAllString(s, -1)
	for i := range ids {
		ids[i] = strings.ToUpper(ids[i])
	}
	return ids
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
