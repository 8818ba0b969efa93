package vuln

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/openvex/go-vex/pkg/vex"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/jsonpos"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/vuln/match"
)

// VEX formats.
const (
	VEXOpenVEX   = "openvex"
	VEXCycloneDX = "cyclonedx"
)

// MaxVEXBytes bounds an imported VEX document.
const MaxVEXBytes = 16 << 20 // 16 MiB

// vexStatement is one vulnerability of a release as VEX states it.
type vexStatement struct {
	vulnID        string
	status        vex.Status
	justification vex.Justification
	impact        string // not_affected: why
	action        string // affected: what to do
	notes         string // fixed: how
	components    []store.Finding
	severity      string
	cvss          float64
}

// releaseStatements derives one statement per vulnerability of a release
// from its findings, the decisions and the backport evidence.
func (s *Service) releaseStatements(ctx context.Context, rel store.Release) ([]vexStatement, error) {
	fs, err := s.opts.Store.Findings(ctx, store.FindingFilter{ReleaseIDs: []string{rel.ID}})
	if err != nil {
		return nil, err
	}
	views, err := s.views(ctx, fs, nil)
	if err != nil {
		return nil, err
	}
	byVuln := map[string][]FindingView{}
	var ids []string
	for _, v := range views {
		if _, ok := byVuln[v.VulnID]; !ok {
			ids = append(ids, v.VulnID)
		}
		byVuln[v.VulnID] = append(byVuln[v.VulnID], v)
	}
	sort.Strings(ids)
	out := make([]vexStatement, 0, len(ids))
	for _, id := range ids {
		vs := byVuln[id]
		st := vexStatement{vulnID: id}
		allPatched := true
		var evidence []string
		for _, v := range vs {
			st.components = append(st.components, v.Finding)
			allPatched = allPatched && v.Patched
			for _, e := range v.Evidence {
				evidence = append(evidence, e.Text)
			}
			if match.SeverityRank(v.Severity) > match.SeverityRank(st.severity) {
				st.severity = v.Severity
			}
			st.cvss = max(st.cvss, v.CVSS)
		}
		d := vs[0].Disposition
		switch {
		case d != nil:
			st.fromDisposition(d, rel)
		case allPatched:
			st.status = vex.StatusFixed
			st.notes = strings.Join(evidence, "; ")
		default:
			st.status = vex.StatusUnderInvestigation
		}
		out = append(out, st)
	}
	return out, nil
}

func (st *vexStatement) fromDisposition(d *store.Disposition, rel store.Release) {
	switch d.Status {
	case StatusNotAffected:
		st.status, st.justification, st.impact = vex.StatusNotAffected, vex.Justification(d.Justification), d.Detail
	case StatusMitigated:
		st.status, st.justification, st.impact = vex.StatusNotAffected, vex.InlineMitigationsAlreadyExist, d.Detail
	case StatusAffected:
		st.status, st.action = vex.StatusAffected, orText(d.Detail, "No fix is available yet; follow the manufacturer's advisory.")
	case StatusPatchPlanned:
		st.status, st.action = vex.StatusAffected, strings.TrimSpace(fmt.Sprintf("Update to %s %s when it is released. %s", rel.Product, d.TargetRelease, d.Detail))
	case StatusFixed:
		if firmware.CompareVersions(rel.Version, d.FixedRelease) >= 0 {
			st.status, st.notes = vex.StatusFixed, d.Detail
		} else {
			st.status, st.action = vex.StatusAffected, strings.TrimSpace(fmt.Sprintf("Update to %s %s. %s", rel.Product, d.FixedRelease, d.Detail))
		}
	}
}

func orText(s, def string) string {
	if strings.TrimSpace(s) == "" {
		return def
	}
	return s
}

// ExportVEX writes the VEX document of a release in format (openvex or
// cyclonedx): one statement per vulnerability found in it.
func (s *Service) ExportVEX(ctx context.Context, scope Scope, releaseID, format string) ([]byte, error) {
	if format != VEXOpenVEX && format != VEXCycloneDX {
		return nil, problem.Invalid(fmt.Sprintf("format %q must be %s or %s", format, VEXOpenVEX, VEXCycloneDX))
	}
	if err := s.canSeeRelease(ctx, scope, releaseID); err != nil {
		return nil, err
	}
	rel, err := s.opts.Store.Release(ctx, releaseID)
	if err != nil {
		return nil, err
	}
	sts, err := s.releaseStatements(ctx, rel)
	if err != nil {
		return nil, err
	}
	now := s.now()
	productID := fmt.Sprintf(s.opts.ProductPURL, rel.Product, rel.Version)
	if format == VEXOpenVEX {
		return s.openVEX(rel, productID, sts, now)
	}
	return s.cycloneDXVEX(rel, productID, sts, now)
}

func (s *Service) openVEX(rel store.Release, productID string, sts []vexStatement, now time.Time) ([]byte, error) {
	doc := vex.VEX{Metadata: vex.Metadata{
		Context: vex.ContextLocator(), ID: "urn:aftercare:vex:" + rel.ID + ":" + now.Format("20060102T150405Z"),
		Author: s.opts.Author, AuthorRole: "manufacturer", Timestamp: &now, Version: 1, Tooling: "Aftercare",
	}, Statements: []vex.Statement{}}
	for _, st := range sts {
		p := vex.Product{Component: vex.Component{ID: productID}}
		for _, c := range st.components {
			if id := componentID(c); id != "" && !slices.ContainsFunc(p.Subcomponents, func(sc vex.Subcomponent) bool { return sc.ID == id }) {
				p.Subcomponents = append(p.Subcomponents, vex.Subcomponent{Component: vex.Component{ID: id}})
			}
		}
		stmt := vex.Statement{
			Vulnerability: vex.Vulnerability{Name: vex.VulnerabilityID(st.vulnID)},
			Products:      []vex.Product{p}, Status: st.status, Justification: st.justification,
			ImpactStatement: st.impact, ActionStatement: st.action, StatusNotes: st.notes,
		}
		if stmt.Status == vex.StatusNotAffected && stmt.Justification == "" && stmt.ImpactStatement == "" {
			stmt.ImpactStatement = "not affected"
		}
		if err := stmt.Validate(); err != nil {
			return nil, fmt.Errorf("VEX statement for %s: %w", st.vulnID, err)
		}
		doc.Statements = append(doc.Statements, stmt)
	}
	var buf bytes.Buffer
	if err := doc.ToJSON(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// componentID is how OpenVEX names a component: its purl. (OpenVEX
// subcomponents are IRIs; a component without a purl is listed in the
// CycloneDX form only.)
func componentID(f store.Finding) string { return f.PURL }

// cdxJustification maps OpenVEX justifications to CycloneDX's.
var cdxJustification = map[vex.Justification]cdx.ImpactAnalysisJustification{
	vex.ComponentNotPresent:                         cdx.IAJCodeNotPresent,
	vex.VulnerableCodeNotPresent:                    cdx.IAJCodeNotPresent,
	vex.VulnerableCodeNotInExecutePath:              cdx.IAJCodeNotReachable,
	vex.VulnerableCodeCannotBeControlledByAdversary: cdx.IAJRequiresEnvironment,
	vex.InlineMitigationsAlreadyExist:               cdx.IAJProtectedByMitigatingControl,
}

func (s *Service) cycloneDXVEX(rel store.Release, productID string, sts []vexStatement, now time.Time) ([]byte, error) {
	bom := cdx.NewBOM()
	bom.SerialNumber = "urn:uuid:" + uuidFrom(rel.ID, now)
	bom.Metadata = &cdx.Metadata{
		Timestamp:    now.Format(time.RFC3339),
		Component:    &cdx.Component{BOMRef: productID, Type: cdx.ComponentTypeFirmware, Name: rel.Product, Version: rel.Version, PackageURL: productID},
		Manufacturer: &cdx.OrganizationalEntity{Name: s.opts.Author},
	}
	var comps []cdx.Component
	var vulns []cdx.Vulnerability
	refs := map[string]bool{}
	for _, st := range sts {
		v := cdx.Vulnerability{ID: st.vulnID, Analysis: &cdx.VulnerabilityAnalysis{Detail: strings.TrimSpace(strings.Join([]string{st.impact, st.action, st.notes}, " "))}}
		if strings.HasPrefix(st.vulnID, "CVE-") {
			v.Source = &cdx.Source{Name: "NVD", URL: "https://nvd.nist.gov/vuln/detail/" + st.vulnID}
		}
		if st.severity != "" {
			v.Ratings = &[]cdx.VulnerabilityRating{{Severity: cdx.Severity(st.severity), Score: scorePtr(st.cvss)}}
		}
		switch st.status {
		case vex.StatusNotAffected:
			v.Analysis.State, v.Analysis.Justification = cdx.IASNotAffected, cdxJustification[st.justification]
		case vex.StatusAffected:
			v.Analysis.State = cdx.IASExploitable
			v.Analysis.Response = &[]cdx.ImpactAnalysisResponse{cdx.IARUpdate}
		case vex.StatusFixed:
			v.Analysis.State = cdx.IASResolved
		default:
			v.Analysis.State = cdx.IASInTriage
		}
		var affects []cdx.Affects
		for _, c := range st.components {
			ref := fmt.Sprintf("component-%d", c.ComponentIndex)
			if !refs[ref] {
				refs[ref] = true
				comps = append(comps, cdx.Component{BOMRef: ref, Type: cdx.ComponentTypeLibrary, Name: c.ComponentName, Version: c.ComponentVersion, PackageURL: c.PURL})
			}
			affects = append(affects, cdx.Affects{Ref: ref})
		}
		v.Affects = &affects
		vulns = append(vulns, v)
	}
	bom.Components = &comps
	bom.Vulnerabilities = &vulns
	var buf bytes.Buffer
	enc := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	if err := enc.EncodeVersion(bom, cdx.SpecVersion1_6); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func scorePtr(f float64) *float64 {
	if f == 0 {
		return nil
	}
	return &f
}

// uuidFrom makes a name-based UUID (version 5 layout) from a release and
// a time, so the same export gets the same serial number.
func uuidFrom(releaseID string, t time.Time) string {
	h := sha256.Sum256([]byte(releaseID + "\x00" + t.Format(time.RFC3339Nano)))
	h[6] = (h[6] & 0x0f) | 0x50
	h[8] = (h[8] & 0x3f) | 0x80
	x := hex.EncodeToString(h[:16])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// A VEXImport says what a supplier VEX import stored.
type VEXImport struct {
	Document   string         `json:"document"`
	Format     string         `json:"format"`
	Author     string         `json:"author"`
	Statements int            `json:"statements"`
	Analysis   AnalysisResult `json:"analysis"`
}

// ImportVEX stores the statements of a supplier's VEX document (OpenVEX or
// CycloneDX), replacing an earlier import of the same document, and
// re-analyses: a finding whose component a not_affected or fixed statement
// names is no longer open, with the statement as its evidence.
func (s *Service) ImportVEX(ctx context.Context, scope Scope, b []byte) (VEXImport, error) {
	if err := scope.requireAll("importing VEX"); err != nil {
		return VEXImport{}, err
	}
	if len(b) > MaxVEXBytes {
		return VEXImport{}, problem.Invalid(fmt.Sprintf("VEX document is %d bytes; at most %d are allowed", len(b), MaxVEXBytes))
	}
	if err := jsonpos.CheckDepth(b, 64); err != nil {
		return VEXImport{}, problem.Invalid("VEX document: " + err.Error())
	}
	var probe struct {
		Context   string `json:"@context"`
		BOMFormat string `json:"bomFormat"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return VEXImport{}, problem.Invalid("VEX document: " + jsonpos.Describe(err, b))
	}
	var imp VEXImport
	var sts []store.VEXStatement
	var err error
	switch {
	case strings.Contains(probe.Context, "openvex"):
		imp.Format = VEXOpenVEX
		imp.Document, imp.Author, sts, err = parseOpenVEX(b)
	case probe.BOMFormat == "CycloneDX":
		imp.Format = VEXCycloneDX
		imp.Document, imp.Author, sts, err = parseCycloneDXVEX(b)
	default:
		err = problem.Invalid(`not a VEX document: neither OpenVEX ("@context": "https://openvex.dev/ns/...") nor CycloneDX ("bomFormat": "CycloneDX")`)
	}
	if err != nil {
		return VEXImport{}, err
	}
	now := s.now()
	for i := range sts {
		sts[i].Document, sts[i].Author, sts[i].ImportedAt = imp.Document, imp.Author, now
	}
	if err := s.opts.Store.PutVEXStatements(ctx, imp.Document, sts); err != nil {
		return VEXImport{}, err
	}
	imp.Statements = len(sts)
	s.opts.Log.Info("supplier vex imported", "document", imp.Document, "format", imp.Format, "statements", imp.Statements)
	imp.Analysis, err = s.Analyse(ctx, nil)
	return imp, err
}

func docID(id string, b []byte) string {
	if id != "" {
		return id
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func parseOpenVEX(b []byte) (string, string, []store.VEXStatement, error) {
	doc, err := vex.Parse(b)
	if err != nil {
		return "", "", nil, problem.Invalid("OpenVEX: " + jsonpos.Describe(err, b))
	}
	var problems []string
	var out []store.VEXStatement
	for i, st := range doc.Statements {
		where := fmt.Sprintf("statements[%d]", i)
		if st.Vulnerability.Name == "" {
			problems = append(problems, where+".vulnerability.name is required")
		}
		if err := st.Validate(); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", where, err))
			continue
		}
		ids := map[string]bool{}
		for _, p := range st.Products {
			for _, id := range componentIDs(p.Component) {
				ids[id] = true
			}
			for _, sc := range p.Subcomponents {
				for _, id := range componentIDs(sc.Component) {
					ids[id] = true
				}
			}
		}
		if len(ids) == 0 {
			problems = append(problems, where+": names no product by purl or CPE")
		}
		for _, id := range sortedKeys(ids) {
			out = append(out, store.VEXStatement{VulnID: string(st.Vulnerability.Name), Product: id, Status: string(st.Status),
				Justification: string(st.Justification), Detail: orText(st.ImpactStatement, st.ActionStatement)})
		}
	}
	if err := problem.Invalid(problems...); err != nil {
		return "", "", nil, err
	}
	return docID(doc.ID, b), doc.Author, out, nil
}

func componentIDs(c vex.Component) []string {
	var out []string
	if strings.HasPrefix(c.ID, "pkg:") || strings.HasPrefix(c.ID, "cpe:") {
		out = append(out, c.ID)
	}
	for t, v := range c.Identifiers {
		if t == vex.PURL || t == vex.CPE23 {
			out = append(out, v)
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// cdxStatus maps CycloneDX analysis states to OpenVEX statuses.
var cdxStatus = map[cdx.ImpactAnalysisState]vex.Status{
	cdx.IASNotAffected: vex.StatusNotAffected, cdx.IASFalsePositive: vex.StatusNotAffected,
	cdx.IASResolved: vex.StatusFixed, cdx.IASResolvedWithPedigree: vex.StatusFixed,
	cdx.IASExploitable: vex.StatusAffected, cdx.IASInTriage: vex.StatusUnderInvestigation,
}

func parseCycloneDXVEX(b []byte) (string, string, []store.VEXStatement, error) {
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(bytes.NewReader(b), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		return "", "", nil, problem.Invalid("CycloneDX VEX: " + jsonpos.Describe(err, b))
	}
	if bom.Vulnerabilities == nil || len(*bom.Vulnerabilities) == 0 {
		return "", "", nil, problem.Invalid("CycloneDX VEX: no vulnerabilities")
	}
	// bom-ref -> purl, from the components and the described product.
	purls := map[string]string{}
	var walk func([]cdx.Component)
	walk = func(cs []cdx.Component) {
		for _, c := range cs {
			if c.PackageURL != "" {
				purls[c.BOMRef] = c.PackageURL
			} else if c.CPE != "" {
				purls[c.BOMRef] = c.CPE
			}
			if c.Components != nil {
				walk(*c.Components)
			}
		}
	}
	author := ""
	if bom.Metadata != nil {
		if bom.Metadata.Component != nil {
			walk([]cdx.Component{*bom.Metadata.Component})
		}
		if bom.Metadata.Manufacturer != nil {
			author = bom.Metadata.Manufacturer.Name
		} else if bom.Metadata.Supplier != nil {
			author = bom.Metadata.Supplier.Name
		}
	}
	if bom.Components != nil {
		walk(*bom.Components)
	}
	var problems []string
	var out []store.VEXStatement
	for i, v := range *bom.Vulnerabilities {
		where := fmt.Sprintf("vulnerabilities[%d]", i)
		if v.ID == "" {
			problems = append(problems, where+".id is required")
		}
		if v.Analysis == nil {
			problems = append(problems, where+".analysis is required in a VEX")
			continue
		}
		status, ok := cdxStatus[v.Analysis.State]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s.analysis.state %q is not a CycloneDX impact analysis state", where, v.Analysis.State))
			continue
		}
		if v.Affects == nil {
			problems = append(problems, where+".affects is required")
			continue
		}
		for _, a := range *v.Affects {
			ref := a.Ref
			// A BOM-Link "urn:cdx:serial/version#ref" points into another BOM.
			if _, frag, ok := strings.Cut(ref, "#"); ok {
				ref = frag
			}
			product := purls[ref]
			if product == "" && (strings.HasPrefix(ref, "pkg:") || strings.HasPrefix(ref, "cpe:")) {
				product = ref
			}
			if product == "" {
				product = a.Ref
			}
			out = append(out, store.VEXStatement{VulnID: v.ID, Product: product, Status: string(status),
				Justification: string(v.Analysis.Justification), Detail: v.Analysis.Detail})
		}
	}
	if err := problem.Invalid(problems...); err != nil {
		return "", "", nil, err
	}
	return docID(bom.SerialNumber, b), author, out, nil
}
