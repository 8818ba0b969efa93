package firmware

import "golang.org/x/mod/semver"

// CompareVersions compares two semantic versions as validated by
// Manifest.Validate ("2.1.0", "2.1.0-rc.1"). The result is -1 when a < b,
// 0 when they are equal in precedence, and +1 when a > b.
// An invalid version sorts before every valid one.
func CompareVersions(a, b string) int {
	return semver.Compare("v"+a, "v"+b)
}

// ValidVersion reports whether v is a semantic version such as "2.1.0".
func ValidVersion(v string) bool {
	return versionPattern.MatchString(v)
}
