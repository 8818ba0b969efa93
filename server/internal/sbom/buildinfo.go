package sbom

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/package-url/packageurl-go"
)

// WriteGoBinary writes a CycloneDX 1.6 JSON SBOM of a Go binary from its
// embedded build information (debug/buildinfo): the main module, every
// dependency module (replacements applied) and the Go standard library of
// the toolchain that built it. name and version describe the product, e.g.
// "aftercare-agent" and "1.1.0"; now stamps the document.
func WriteGoBinary(w io.Writer, bi *debug.BuildInfo, name, version string, now time.Time) error {
	if bi == nil {
		return fmt.Errorf("no Go build information")
	}
	bom := cdx.NewBOM()
	bom.SpecVersion = cdx.SpecVersion1_6
	main := goModule(bi.Main)
	if version == "" {
		version = main.Version
	}
	bom.Metadata = &cdx.Metadata{
		Timestamp: now.UTC().Format(time.RFC3339),
		Component: &cdx.Component{
			BOMRef: "main", Type: cdx.ComponentTypeApplication, Name: name, Version: version,
			Properties: &[]cdx.Property{{Name: "aftercare:go-main-module", Value: bi.Main.Path}},
		},
	}
	var comps []cdx.Component
	stdlib := strings.TrimPrefix(bi.GoVersion, "go")
	comps = append(comps, cdx.Component{
		BOMRef: "stdlib", Type: cdx.ComponentTypeLibrary, Name: "stdlib", Version: "v" + stdlib,
		PackageURL: packageurl.NewPackageURL(packageurl.TypeGolang, "", "stdlib", "v"+stdlib, nil, "").ToString(),
	})
	for _, d := range bi.Deps {
		m := goModule(*d)
		comps = append(comps, m)
	}
	var props []cdx.Property
	for _, s := range bi.Settings {
		switch s.Key {
		case "GOOS", "GOARCH", "GOARM", "CGO_ENABLED", "vcs.revision", "vcs.time", "vcs.modified", "-tags":
			props = append(props, cdx.Property{Name: "aftercare:go-build:" + s.Key, Value: s.Value})
		}
	}
	if len(props) > 0 {
		*bom.Metadata.Component.Properties = append(*bom.Metadata.Component.Properties, props...)
	}
	bom.Components = &comps
	deps := make([]string, 0, len(comps))
	for _, c := range comps {
		deps = append(deps, c.BOMRef)
	}
	bom.Dependencies = &[]cdx.Dependency{{Ref: "main", Dependencies: &deps}}
	enc := cdx.NewBOMEncoder(w, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	return enc.EncodeVersion(bom, cdx.SpecVersion1_6)
}

func goModule(m debug.Module) cdx.Component {
	if m.Replace != nil {
		m = *m.Replace
	}
	version := m.Version
	if version == "" || version == "(devel)" {
		version = "(devel)"
	}
	ns, name := "", m.Path
	if i := strings.LastIndex(m.Path, "/"); i >= 0 {
		ns, name = m.Path[:i], m.Path[i+1:]
	}
	c := cdx.Component{
		BOMRef: "pkg:golang/" + m.Path + "@" + version, Type: cdx.ComponentTypeLibrary, Name: m.Path, Version: version,
	}
	if version != "(devel)" {
		c.PackageURL = packageurl.NewPackageURL(packageurl.TypeGolang, ns, name, version, nil, "").ToString()
	}
	if m.Sum != "" {
		// go.sum's h1: hash is not a plain file digest, so it is a
		// property, not a CycloneDX hash.
		c.Properties = &[]cdx.Property{{Name: "aftercare:go-sum", Value: m.Sum}}
	}
	return c
}
