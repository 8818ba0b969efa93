package match

import (
	"regexp"
	"strings"

	"github.com/package-url/packageurl-go"
)

// A pkg is a component as an OSV ecosystem names it.
type pkg struct {
	ecosystem string   // OSV ecosystem without release, e.g. "Alpine"
	release   string   // e.g. "v3.16", "8", "11"; "" when unknown
	names     []string // package name, and the source package when the purl names one
	version   string   // version in the ecosystem's form (epoch included)
	distro    bool     // a distribution package: its version carries a packaging revision
}

var (
	pypiNormal   = regexp.MustCompile(`[-_.]+`)
	alpineDistro = regexp.MustCompile(`^alpine-(\d+\.\d+)`)
	debianDistro = regexp.MustCompile(`^debian-(\d+)`)
	rpmDistro    = regexp.MustCompile(`^[a-z-]+-(\d+)`)
)

// purlPackage maps a purl to an OSV ecosystem and package name.
func purlPackage(p packageurl.PackageURL) (pkg, bool) {
	q := p.Qualifiers.Map()
	k := pkg{version: p.Version, names: []string{p.Name}}
	withNS := func(sep string) {
		if p.Namespace != "" {
			k.names = []string{p.Namespace + sep + p.Name}
		}
	}
	switch p.Type {
	case "alpine", "apk":
		switch strings.ToLower(p.Namespace) {
		case "", "alpine":
			k.ecosystem = "Alpine"
		case "wolfi":
			k.ecosystem = "Wolfi"
		case "chainguard":
			k.ecosystem = "Chainguard"
		default:
			return k, false
		}
		if m := alpineDistro.FindStringSubmatch(q["distro"]); m != nil {
			k.release = "v" + m[1]
		}
		k.distro = true
		k.names = appendSource(k.names, q["upstream"])
	case "deb":
		switch strings.ToLower(p.Namespace) {
		case "debian":
			k.ecosystem = "Debian"
			if m := debianDistro.FindStringSubmatch(q["distro"]); m != nil {
				k.release = m[1]
			}
		case "ubuntu":
			k.ecosystem = "Ubuntu"
		default:
			return k, false
		}
		k.distro = true
		k.names = appendSource(k.names, q["upstream"])
		if e := q["epoch"]; e != "" && !strings.Contains(k.version, ":") {
			k.version = e + ":" + k.version
		}
	case "rpm":
		switch strings.ToLower(p.Namespace) {
		case "almalinux":
			k.ecosystem = "AlmaLinux"
		case "rocky", "rocky-linux":
			k.ecosystem = "Rocky Linux"
		case "redhat", "rhel":
			k.ecosystem = "Red Hat"
		case "opensuse":
			k.ecosystem = "openSUSE"
		case "suse", "sles":
			k.ecosystem = "SUSE"
		default:
			return k, false
		}
		if m := rpmDistro.FindStringSubmatch(q["distro"]); m != nil && k.ecosystem != "Red Hat" {
			k.release = m[1]
		}
		k.distro = true
		if e := q["epoch"]; e != "" && e != "0" && !strings.Contains(k.version, ":") {
			k.version = e + ":" + k.version
		}
	case "golang":
		k.ecosystem = "Go"
		withNS("/")
	case "npm":
		k.ecosystem = "npm"
		withNS("/")
	case "pypi":
		k.ecosystem = "PyPI"
		k.names = []string{pypiNormal.ReplaceAllString(strings.ToLower(p.Name), "-")}
	case "maven":
		k.ecosystem = "Maven"
		withNS(":")
	case "cargo":
		k.ecosystem = "crates.io"
	case "nuget":
		k.ecosystem = "NuGet"
	case "gem":
		k.ecosystem = "RubyGems"
	case "composer":
		k.ecosystem = "Packagist"
		withNS("/")
	case "hex":
		k.ecosystem = "Hex"
	case "pub":
		k.ecosystem = "Pub"
	case "swift":
		k.ecosystem = "SwiftURL"
		withNS("/")
	case "cran":
		k.ecosystem = "CRAN"
	case "hackage":
		k.ecosystem = "Hackage"
	case "bitnami":
		k.ecosystem = "Bitnami"
	case "conan":
		k.ecosystem = "ConanCenter"
	default:
		return k, false
	}
	return k, true
}

// appendSource adds the source package named by a purl's "upstream"
// qualifier ("openssl" or "openssl@1.1.1q-r0"), which distribution
// advisories name.
func appendSource(names []string, upstream string) []string {
	src, _, _ := strings.Cut(upstream, "@")
	if src != "" && src != names[0] {
		names = append(names, src)
	}
	return names
}

// splitEcosystem splits "Alpine:v3.16" into "Alpine" and "v3.16".
func splitEcosystem(eco string) (base, release string) {
	base, release, _ = strings.Cut(eco, ":")
	return base, release
}

// osvKey is the index key of an ecosystem's package.
func osvKey(ecosystem, name string) string {
	if ecosystem == "PyPI" {
		name = pypiNormal.ReplaceAllString(strings.ToLower(name), "-")
	}
	return "osv:" + ecosystem + ":" + name
}

// cpeKey is the index key of a CPE product.
func cpeKey(product string) string { return "cpe:" + strings.ToLower(product) }

// distroUpstream strips a distribution's packaging from a version, for
// comparing it with upstream (NVD) versions: epoch ("1:"), Alpine's
// "-r17", Debian's "-1ubuntu2", RPM's "-16.el7".
func distroUpstream(v string) string {
	if _, rest, ok := strings.Cut(v, ":"); ok {
		v = rest
	}
	if i := strings.LastIndex(v, "-"); i > 0 {
		v = v[:i]
	}
	return v
}
