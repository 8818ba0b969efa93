// Package match decides which vulnerabilities affect which SBOM
// components, and says why.
//
// Two kinds of rule:
//   - purl: a component whose purl maps to an OSV ecosystem (Alpine, Debian,
//     AlmaLinux, Go, npm, ...) is checked against OSV records of that
//     ecosystem and package, with the ecosystem's own version ordering for
//     ECOSYSTEM ranges (apk, dpkg, rpm, Go semver; go-apk-version,
//     go-deb-version, go-rpm-version, x/mod/semver) and SemVer 2.0 for
//     SEMVER ranges (Masterminds/semver), or by the record's explicit
//     versions list. GIT ranges need the repository and are not evaluated.
//   - CPE: every CPE 2.3 name a component carries (C components of an
//     embedded image usually have no purl ecosystem) is checked against NVD
//     configurations: part, vendor and product, then the criteria's version
//     or its versionStart/End Including/Excluding bounds, compared with dpkg
//     ordering of upstream versions (a distribution package's packaging
//     revision is stripped first).
//
// Backports: a vulnerability stays matched but is marked Patched when the
// SBOM says the component carries the fix (sbom.Component.Patched), or when a
// distribution advisory for the same package and CVE says it was fixed at a
// version the component has reached although upstream's range still covers
// it. Every hit and every piece of evidence carries a Rule a human can check.
//
// An Index is read-only after NewIndex and safe for concurrent use.
package match

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/package-url/packageurl-go"

	"github.com/aftercare/aftercare/server/internal/vuln/feed"
)

// A Component is what matching needs of an SBOM component.
type Component struct {
	Name    string
	Version string
	PURL    string
	CPEs    []string
	Patched []string // CVE IDs the SBOM says are fixed by backport
}

// A Rule says why a vulnerability was matched, or why it is not open.
type Rule struct {
	Source   string `json:"source"`             // "osv", "nvd", "sbom", "query"
	Advisory string `json:"advisory,omitempty"` // the record the rule comes from
	Text     string `json:"text"`
}

// A Hit is one vulnerability matched in one component.
type Hit struct {
	VulnID     string   `json:"vuln_id"` // a CVE ID, or the advisory's ID when it names no CVE
	Advisories []string `json:"advisories"`
	Summary    string   `json:"summary,omitempty"`
	Severity   string   `json:"severity,omitempty"`
	CVSS       float64  `json:"cvss,omitempty"`
	Rules      []Rule   `json:"rules"`
	Patched    bool     `json:"patched,omitempty"`
	Evidence   []Rule   `json:"evidence,omitempty"` // why Patched
}

// An Index holds advisories by the keys components look them up with.
type Index struct {
	byKey map[string][]*feed.Advisory
	count int
}

// NewIndex indexes advisories; withdrawn ones are left out.
func NewIndex(advs []*feed.Advisory) *Index {
	ix := &Index{byKey: map[string][]*feed.Advisory{}}
	for _, a := range advs {
		if a.Withdrawn {
			continue
		}
		ix.count++
		for _, k := range AdvisoryKeys(a) {
			ix.byKey[k] = append(ix.byKey[k], a)
		}
	}
	return ix
}

// Len is the number of advisories indexed.
func (ix *Index) Len() int { return ix.count }

// AdvisoryKeys are the keys an advisory is found under.
func AdvisoryKeys(a *feed.Advisory) []string {
	var keys []string
	add := func(k string) {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	for _, af := range a.Affected {
		if af.Ecosystem != "" && af.Name != "" {
			base, _ := splitEcosystem(af.Ecosystem)
			add(osvKey(base, af.Name))
		}
		if af.PURL != "" {
			if p, err := packageurl.FromString(af.PURL); err == nil {
				add("purl:" + p.Type + "/" + strings.ToLower(p.Namespace) + "/" + strings.ToLower(p.Name))
			}
		}
	}
	for _, cfg := range a.Configs {
		for _, n := range cfg.Nodes {
			for _, m := range n.Matches {
				if f := splitCPE(m.Criteria); f != nil && m.Vulnerable {
					add(cpeKey(f[cpeProduct]))
				}
			}
		}
	}
	return keys
}

// prepared is a component with its purl and CPEs parsed.
type prepared struct {
	c      Component
	purl   *packageurl.PackageURL
	pkg    pkg
	hasPkg bool
	cpes   [][]string
}

func prepare(c Component) prepared {
	p := prepared{c: c}
	if c.PURL != "" {
		if u, err := packageurl.FromString(c.PURL); err == nil {
			p.purl = &u
			p.pkg, p.hasPkg = purlPackage(u)
		}
	}
	for _, s := range c.CPEs {
		if f := splitCPE(s); f != nil {
			p.cpes = append(p.cpes, f)
		}
	}
	return p
}

// Keys are the index keys a component looks advisories up with.
func Keys(c Component) []string {
	p := prepare(c)
	var keys []string
	if p.hasPkg {
		for _, n := range p.pkg.names {
			keys = append(keys, osvKey(p.pkg.ecosystem, n))
		}
	}
	if p.purl != nil {
		keys = append(keys, "purl:"+p.purl.Type+"/"+strings.ToLower(p.purl.Namespace)+"/"+strings.ToLower(p.purl.Name))
	}
	for _, f := range p.cpes {
		if k := cpeKey(f[cpeProduct]); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// Match returns the vulnerabilities of c, by vulnerability ID, and notes
// on rules it could not evaluate (an ECOSYSTEM range of an ecosystem
// without a known ordering, a version that does not parse).
func (ix *Index) Match(c Component) (hits []Hit, notes []string) {
	p := prepare(c)
	seen := map[*feed.Advisory]bool{}
	byID := map[string]*Hit{}
	fixedBy := map[string][]Rule{} // CVE -> distribution advisories fixing it at the component's version
	for _, k := range Keys(c) {
		for _, a := range ix.byKey[k] {
			if seen[a] {
				continue
			}
			seen[a] = true
			rules, fixed, n := matchAdvisory(p, a)
			notes = append(notes, n...)
			for _, cve := range a.CVEs {
				fixedBy[cve] = append(fixedBy[cve], fixed...)
			}
			if len(rules) == 0 {
				continue
			}
			ids := a.CVEs
			if len(ids) == 0 {
				ids = []string{a.ID}
			}
			for _, id := range ids {
				h := byID[id]
				if h == nil {
					h = &Hit{VulnID: id}
					byID[id] = h
				}
				h.add(a, rules)
			}
		}
	}
	for id, h := range byID {
		if slices.Contains(c.Patched, id) {
			h.Evidence = append(h.Evidence, Rule{Source: "sbom", Text: fmt.Sprintf("the SBOM marks %s as patched in %s %s (backport, e.g. Yocto CVE_STATUS)", id, c.Name, c.Version)})
		}
		h.Evidence = append(h.Evidence, fixedBy[id]...)
		h.Patched = len(h.Evidence) > 0
		hits = append(hits, *h)
	}
	sort.Slice(hits, func(i, j int) bool { return hits[i].VulnID < hits[j].VulnID })
	return hits, notes
}

func (h *Hit) add(a *feed.Advisory, rules []Rule) {
	if !slices.Contains(h.Advisories, a.ID) {
		h.Advisories = append(h.Advisories, a.ID)
	}
	h.Rules = append(h.Rules, rules...)
	if SeverityRank(a.Severity) > SeverityRank(h.Severity) {
		h.Severity = a.Severity
	}
	h.CVSS = max(h.CVSS, a.CVSS)
	// NVD's description describes the CVE; a distribution's summary
	// describes its update.
	if h.Summary == "" || a.Source == feed.KindNVD {
		h.Summary = a.Summary
	}
}

// SeverityRank orders severities: critical 5, high 4, medium 3, low 2,
// none 1, unknown 0.
func SeverityRank(s string) int {
	switch s {
	case "critical":
		return 5
	case "high":
		return 4
	case "medium":
		return 3
	case "low":
		return 2
	case "none":
		return 1
	}
	return 0
}

// matchAdvisory returns the rules by which a affects p, the evidence that
// a distribution fixed it at p's version, and notes on what could not be
// evaluated.
func matchAdvisory(p prepared, a *feed.Advisory) (rules, fixed []Rule, notes []string) {
	for _, af := range a.Affected {
		r, f, n := matchAffected(p, a, af)
		rules = append(rules, r...)
		fixed = append(fixed, f...)
		notes = append(notes, n...)
	}
	for _, cfg := range a.Configs {
		rules = append(rules, matchConfig(p, a, cfg)...)
	}
	return rules, fixed, notes
}

func matchAffected(p prepared, a *feed.Advisory, af feed.Affected) (rules, fixed []Rule, notes []string) {
	base, release := splitEcosystem(af.Ecosystem)
	var ord ordering
	var known bool
	switch {
	case p.hasPkg && base == p.pkg.ecosystem && slices.ContainsFunc(p.pkg.names, func(n string) bool { return osvKey(base, n) == osvKey(base, af.Name) }):
		if release != "" && p.pkg.release != "" && !sameRelease(release, p.pkg.release) {
			return nil, nil, nil
		}
		ord, known = ecosystemOrdering(base)
	case af.PURL != "" && p.purl != nil && samePackage(af.PURL, *p.purl):
		// An OSS-Fuzz or generic record names the package by purl only.
		ord, known = orderGeneric, true
	default:
		return nil, nil, nil
	}
	version := p.c.Version
	if p.hasPkg {
		version = p.pkg.version
	}
	what := fmt.Sprintf("%s %s", af.Ecosystem, af.Name)
	if slices.Contains(af.Versions, version) || (p.purl != nil && slices.Contains(af.Versions, p.purl.Version)) {
		rules = append(rules, Rule{Source: a.Source, Advisory: a.ID, Text: fmt.Sprintf("%s: version %s is listed as affected", what, version)})
		return rules, nil, nil
	}
	for _, rg := range af.Ranges {
		o := ord
		switch rg.Type {
		case "GIT":
			continue
		case "SEMVER":
			o, known = orderSemver, true
			if base == "Go" {
				o = orderGo
			}
		}
		if !known {
			notes = append(notes, fmt.Sprintf("%s %s: ECOSYSTEM range of %s not evaluated (no version ordering for this ecosystem); only its versions list is used", a.ID, what, base))
			continue
		}
		in, fixedAt, err := inRange(o, version, rg.Events)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s %s: %v", a.ID, what, err))
			continue
		}
		desc := describeEvents(rg.Events)
		switch {
		case in:
			rules = append(rules, Rule{Source: a.Source, Advisory: a.ID, Text: fmt.Sprintf("%s: %s range %s contains %s (%s)", what, rg.Type, desc, version, o.name)})
		case fixedAt != "" && p.pkg.distro:
			fixed = append(fixed, Rule{Source: a.Source, Advisory: a.ID, Text: fmt.Sprintf("%s fixed it in %s; the component has %s (%s)", what, fixedAt, version, o.name)})
		}
	}
	return rules, fixed, notes
}

// sameRelease compares an advisory's ecosystem release ("v3.16", "8",
// "8.6") with a component's.
func sameRelease(adv, comp string) bool {
	if adv == comp {
		return true
	}
	major, _, _ := strings.Cut(adv, ".")
	return major == comp
}

func samePackage(purl string, p packageurl.PackageURL) bool {
	q, err := packageurl.FromString(purl)
	return err == nil && q.Type == p.Type && strings.EqualFold(q.Namespace, p.Namespace) && strings.EqualFold(q.Name, p.Name)
}

// inRange evaluates OSV range events for version v (OSV schema, "Evaluation"):
// events in version order; introduced starts an affected span, fixed and
// last_affected end it. fixedAt is the fixed version at or below v that
// ended the last span, if any.
func inRange(o ordering, v string, events []feed.Event) (in bool, fixedAt string, err error) {
	type ev struct {
		e   feed.Event
		ver string
	}
	var evs []ev
	for _, e := range events {
		switch {
		case e.Introduced != "":
			evs = append(evs, ev{e, e.Introduced})
		case e.Fixed != "":
			evs = append(evs, ev{e, e.Fixed})
		case e.LastAffected != "":
			evs = append(evs, ev{e, e.LastAffected})
		}
	}
	var sortErr error
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].ver == "0" || evs[j].ver == "0" {
			return evs[i].ver == "0" && evs[j].ver != "0"
		}
		c, err := o.compare(evs[i].ver, evs[j].ver)
		if err != nil && sortErr == nil {
			sortErr = err
		}
		return c < 0
	})
	if sortErr != nil {
		return false, "", sortErr
	}
	for _, x := range evs {
		if x.ver == "0" {
			in = true
			continue
		}
		c, err := o.compare(v, x.ver)
		if err != nil {
			return false, "", err
		}
		switch {
		case x.e.Introduced != "" && c >= 0:
			in, fixedAt = true, ""
		case x.e.Fixed != "" && c >= 0:
			in, fixedAt = false, x.ver
		case x.e.LastAffected != "" && c > 0:
			in = false
		}
	}
	return in, fixedAt, nil
}

func describeEvents(events []feed.Event) string {
	var parts []string
	for _, e := range events {
		switch {
		case e.Introduced != "":
			parts = append(parts, "introduced "+e.Introduced)
		case e.Fixed != "":
			parts = append(parts, "fixed "+e.Fixed)
		case e.LastAffected != "":
			parts = append(parts, "last_affected "+e.LastAffected)
		case e.Limit != "":
			parts = append(parts, "limit "+e.Limit)
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
