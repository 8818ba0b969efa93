package match

import (
	"fmt"
	"strings"

	"github.com/aftercare/aftercare/server/internal/vuln/feed"
)

// Field positions in a split CPE 2.3 formatted string.
const (
	cpePart = iota
	cpeVendor
	cpeProduct
	cpeVersion
	cpeUpdate
	cpeEdition
	cpeLanguage
	cpeSWEdition
	cpeTargetSW
	cpeTargetHW
	cpeOther
	cpeFields
)

// splitCPE splits "cpe:2.3:a:openssl:openssl:3.0.7:*:..." into its 11
// attributes, unescaped and lower-cased, or returns nil when it is not a
// CPE 2.3 formatted string. (The SBOM and feed readers have already
// checked every CPE with the NIST reference implementation.)
func splitCPE(s string) []string {
	rest, ok := strings.CutPrefix(s, "cpe:2.3:")
	if !ok {
		return nil
	}
	var fields []string
	var cur strings.Builder
	escaped := false
	for _, r := range rest {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case r == ':':
			fields = append(fields, strings.ToLower(cur.String()))
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	fields = append(fields, strings.ToLower(cur.String()))
	if len(fields) != cpeFields {
		return nil
	}
	return fields
}

func anyValue(v string) bool { return v == "*" || v == "" }

// matchConfig returns the rules by which an NVD configuration's vulnerable
// criteria match one of p's CPEs.
func matchConfig(p prepared, a *feed.Advisory, cfg feed.Config) []Rule {
	var rules []Rule
	for _, n := range cfg.Nodes {
		if n.Negate {
			continue
		}
		for _, m := range n.Matches {
			if !m.Vulnerable {
				continue
			}
			crit := splitCPE(m.Criteria)
			if crit == nil {
				continue
			}
			for _, k := range p.cpes {
				if text, ok := cpeMatches(p, crit, k, m); ok {
					if strings.EqualFold(cfg.Operator, "AND") || len(cfg.Nodes) > 1 {
						text += "; the configuration also names a platform, which is not checked"
					}
					rules = append(rules, Rule{Source: a.Source, Advisory: a.ID, Text: text})
					break
				}
			}
		}
	}
	return rules
}

// cpeMatches checks one component CPE against one criterion.
func cpeMatches(p prepared, crit, k []string, m feed.CPEMatch) (string, bool) {
	if crit[cpeProduct] != k[cpeProduct] {
		return "", false
	}
	for _, i := range []int{cpePart, cpeVendor, cpeUpdate, cpeEdition, cpeLanguage, cpeSWEdition, cpeTargetSW, cpeTargetHW, cpeOther} {
		if !anyValue(crit[i]) && !anyValue(k[i]) && crit[i] != k[i] {
			return "", false
		}
	}
	version := k[cpeVersion]
	if anyValue(version) || version == "-" {
		version = p.c.Version
	}
	if p.hasPkg && p.pkg.distro {
		version = distroUpstream(version)
	}
	if version == "" {
		return "", false
	}
	head := fmt.Sprintf("NVD %s matches CPE %s:%s", m.Criteria, k[cpeVendor], k[cpeProduct])
	switch cv := crit[cpeVersion]; {
	case cv == "-":
		return "", false
	case !anyValue(cv):
		c, err := orderGeneric.compare(version, cv)
		if err != nil || c != 0 {
			return "", false
		}
		return fmt.Sprintf("%s: version %s equals %s", head, version, cv), true
	}
	bounds := []struct {
		v    string
		ok   func(int) bool
		desc string
	}{
		{m.VersionStartIncluding, func(c int) bool { return c >= 0 }, ">= "},
		{m.VersionStartExcluding, func(c int) bool { return c > 0 }, "> "},
		{m.VersionEndIncluding, func(c int) bool { return c <= 0 }, "<= "},
		{m.VersionEndExcluding, func(c int) bool { return c < 0 }, "< "},
	}
	var descs []string
	for _, b := range bounds {
		if b.v == "" {
			continue
		}
		c, err := orderGeneric.compare(version, b.v)
		if err != nil || !b.ok(c) {
			return "", false
		}
		descs = append(descs, b.desc+b.v)
	}
	if len(descs) == 0 {
		return fmt.Sprintf("%s: all versions", head), true
	}
	return fmt.Sprintf("%s: version %s is %s (%s)", head, version, strings.Join(descs, " and "), orderGeneric.name), true
}
