package match

import (
	"fmt"
	"strings"

	msemver "github.com/Masterminds/semver/v3"
	apk "github.com/knqyf263/go-apk-version"
	deb "github.com/knqyf263/go-deb-version"
	rpm "github.com/knqyf263/go-rpm-version"
	"golang.org/x/mod/semver"
)

// An ordering compares two versions of one ecosystem. Compare returns
// -1, 0 or +1, or an error when either version does not parse under the
// ordering's rules.
type ordering struct {
	name    string // for rules: "Alpine (apk)", "Debian (dpkg)", ...
	compare func(a, b string) (int, error)
}

var (
	orderAlpine = ordering{"apk version ordering", func(a, b string) (int, error) {
		va, err := apk.NewVersion(a)
		if err != nil {
			return 0, fmt.Errorf("apk version %q: %v", a, err)
		}
		vb, err := apk.NewVersion(b)
		if err != nil {
			return 0, fmt.Errorf("apk version %q: %v", b, err)
		}
		return va.Compare(vb), nil
	}}
	orderDebian = ordering{"dpkg version ordering", func(a, b string) (int, error) {
		va, err := deb.NewVersion(a)
		if err != nil {
			return 0, fmt.Errorf("Debian version %q: %v", a, err)
		}
		vb, err := deb.NewVersion(b)
		if err != nil {
			return 0, fmt.Errorf("Debian version %q: %v", b, err)
		}
		return va.Compare(vb), nil
	}}
	orderRPM = ordering{"rpm version ordering", func(a, b string) (int, error) {
		va, vb := rpm.NewVersion(a), rpm.NewVersion(b)
		return va.Compare(vb), nil
	}}
	orderGo = ordering{"Go module semver", func(a, b string) (int, error) {
		a, b = goVersion(a), goVersion(b)
		if !semver.IsValid(a) {
			return 0, fmt.Errorf("Go version %q is not semver", a)
		}
		if !semver.IsValid(b) {
			return 0, fmt.Errorf("Go version %q is not semver", b)
		}
		return semver.Compare(a, b), nil
	}}
	orderSemver = ordering{"SemVer 2.0", func(a, b string) (int, error) {
		va, err := msemver.NewVersion(a)
		if err != nil {
			return 0, fmt.Errorf("version %q is not SemVer: %v", a, err)
		}
		vb, err := msemver.NewVersion(b)
		if err != nil {
			return 0, fmt.Errorf("version %q is not SemVer: %v", b, err)
		}
		return va.Compare(vb), nil
	}}
	// orderGeneric compares upstream versions of C components (CPE
	// matching): dpkg's alternating digit/non-digit comparison, which gets
	// OpenSSL's 1.1.1t > 1.1.1 and 7.83.1 > 7.9.1 right.
	orderGeneric = ordering{"upstream version ordering (dpkg rules)", func(a, b string) (int, error) {
		return orderDebian.compare(upstreamForm(a), upstreamForm(b))
	}}
)

// goVersion puts the "v" Go modules use in front of a version.
func goVersion(v string) string {
	if !strings.HasPrefix(v, "v") {
		return "v" + v
	}
	return v
}

// upstreamForm makes an upstream version acceptable to dpkg ordering: no
// leading "v", and a digit first.
func upstreamForm(v string) string {
	v = strings.TrimPrefix(strings.TrimPrefix(v, "v"), "V")
	if v == "" || v[0] < '0' || v[0] > '9' {
		return "0~" + v
	}
	// dpkg reads the last '-' as the start of a Debian revision, which
	// upstream versions do not have.
	return strings.ReplaceAll(v, "-", "~")
}

// ecosystemOrdering returns the version ordering of an OSV ecosystem
// (without its ":release" suffix). ok is false for ecosystems whose
// ordering Aftercare does not implement; their records match only by
// their explicit versions list.
func ecosystemOrdering(eco string) (ordering, bool) {
	switch eco {
	case "Alpine", "Wolfi", "Chainguard", "Alpaquita", "MinimOS":
		return orderAlpine, true
	case "Debian", "Ubuntu":
		return orderDebian, true
	case "AlmaLinux", "Rocky Linux", "Red Hat", "SUSE", "openSUSE", "Mageia", "openEuler":
		return orderRPM, true
	case "Go":
		return orderGo, true
	case "npm", "crates.io", "NuGet", "Hex", "Pub", "Bitnami", "SwiftURL", "ConanCenter":
		return orderSemver, true
	}
	return ordering{}, false
}
