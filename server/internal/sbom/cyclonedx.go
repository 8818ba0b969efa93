package sbom

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// PatchedProperty is the CycloneDX component property naming a CVE (or a
// comma-separated list) that the component carries a fix for.
const PatchedProperty = "aftercare:patched-cve"

// patchedStates are the CycloneDX analysis states that mean "this
// component does not have the vulnerability open".
var patchedStates = map[cdx.ImpactAnalysisState]bool{
	cdx.IASResolved: true, cdx.IASResolvedWithPedigree: true, cdx.IASNotAffected: true, cdx.IASFalsePositive: true,
}

func parseCycloneDX(b []byte, lim Limits) (*Document, error) {
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(bytes.NewReader(b), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		if errors.Is(err, cdx.ErrInvalidSpecVersion) {
			return nil, invalid("specVersion: not a CycloneDX version this reader knows (1.2 to 1.7)")
		}
		return nil, jsonError(err, b)
	}
	if bom.SpecVersion < cdx.SpecVersion1_2 {
		return nil, invalid(fmt.Sprintf("specVersion %s: CycloneDX JSON starts at 1.2; 1.4 to 1.6 are recommended", bom.SpecVersion))
	}
	bd := &builder{lim: lim, doc: Document{Format: FormatCycloneDX, SpecVersion: bom.SpecVersion.String()}}
	if bom.Metadata != nil && bom.Metadata.Component != nil {
		bd.doc.Name = strings.TrimSpace(bom.Metadata.Component.Name + " " + bom.Metadata.Component.Version)
	}
	patched := cdxPatched(&bom)
	if bom.Components != nil {
		walkCDX(bd, *bom.Components, "components", patched)
	}
	return bd.finish()
}

// cdxPatched maps a bom-ref to the CVEs the BOM's own vulnerability
// analysis says are not open in it.
func cdxPatched(bom *cdx.BOM) map[string][]string {
	out := map[string][]string{}
	if bom.Vulnerabilities == nil {
		return out
	}
	for _, v := range *bom.Vulnerabilities {
		if v.Analysis == nil || !patchedStates[v.Analysis.State] || v.Affects == nil {
			continue
		}
		ids := cveIDs(v.ID)
		if len(ids) == 0 {
			continue
		}
		for _, a := range *v.Affects {
			out[a.Ref] = append(out[a.Ref], ids...)
		}
	}
	return out
}

func walkCDX(bd *builder, comps []cdx.Component, field string, patched map[string][]string) {
	for i, c := range comps {
		f := fmt.Sprintf("%s[%d]", field, i)
		if !bd.counted() {
			return
		}
		// A container image, a data set or a hardware device has no
		// version a software vulnerability feed knows. An operating system
		// stays: busybox's image names busybox itself as its OS.
		switch c.Type {
		case cdx.ComponentTypeContainer, cdx.ComponentTypeData, cdx.ComponentTypeDevice:
		default:
			comp := Component{Ref: c.BOMRef, Field: f, Name: c.Name, Version: c.Version}
			if c.Group != "" {
				comp.Name = c.Group + "/" + c.Name
			}
			if c.Supplier != nil {
				comp.Supplier = c.Supplier.Name
			}
			comp.Patched = append(comp.Patched, patched[c.BOMRef]...)
			var cpes []string
			if c.CPE != "" {
				cpes = append(cpes, c.CPE)
			}
			if c.Properties != nil {
				for _, p := range *c.Properties {
					if strings.EqualFold(p.Name, PatchedProperty) {
						comp.Patched = append(comp.Patched, cveIDs(p.Value)...)
					}
				}
			}
			bd.add(comp, c.PackageURL, cpes)
		}
		if c.Components != nil {
			walkCDX(bd, *c.Components, f+".components", patched)
		}
	}
}
