package sbom

import (
	"bytes"
	"fmt"
	"strings"

	spdxjson "github.com/spdx/tools-golang/json"
)

// SPDX versions Parse reads.
var spdxVersions = map[string]bool{"SPDX-2.2": true, "SPDX-2.3": true}

func parseSPDX(b []byte, lim Limits, version string) (*Document, error) {
	if !spdxVersions[version] {
		return nil, invalid(fmt.Sprintf("spdxVersion %q: only SPDX-2.2 and SPDX-2.3 JSON are read", version))
	}
	doc, err := spdxjson.Read(bytes.NewReader(b))
	if err != nil {
		if e := jsonError(err, b); e != nil && strings.Contains(e.Error(), "line ") {
			return nil, e
		}
		return nil, invalid(fmt.Sprintf("SPDX document: %v", err))
	}
	bd := &builder{lim: lim, doc: Document{Format: FormatSPDX, SpecVersion: version, Name: doc.DocumentName}}
	for i, p := range doc.Packages {
		if !bd.counted() {
			break
		}
		if p == nil {
			continue
		}
		c := Component{Ref: string(p.PackageSPDXIdentifier), Field: fmt.Sprintf("packages[%d]", i), Name: p.PackageName, Version: p.PackageVersion}
		if p.PackageSupplier != nil {
			c.Supplier = p.PackageSupplier.Supplier
		}
		// Yocto's create-spdx writes "CVEs fixed: CVE-... CVE-..." here.
		if strings.Contains(strings.ToLower(p.PackageSourceInfo), "cves fixed") {
			c.Patched = append(c.Patched, cveIDs(p.PackageSourceInfo)...)
		}
		for _, a := range p.Annotations {
			if rest, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(a.AnnotationComment)), "patched:"); ok {
				c.Patched = append(c.Patched, cveIDs(rest)...)
			}
		}
		var purl string
		var cpes []string
		for j, ref := range p.PackageExternalReferences {
			if ref == nil {
				continue
			}
			switch ref.RefType {
			case "purl":
				if purl != "" && purl != ref.Locator {
					bd.problem("%s.externalRefs[%d]: a second purl %q (the first is %q); one package has one purl", c.Field, j, ref.Locator, purl)
					continue
				}
				purl = ref.Locator
			case "cpe23Type":
				cpes = append(cpes, ref.Locator)
			}
		}
		bd.add(c, purl, cpes)
	}
	return bd.finish()
}
