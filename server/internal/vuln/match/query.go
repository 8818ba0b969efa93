package match

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/package-url/packageurl-go"

	"github.com/aftercare/aftercare/server/internal/vuln/feed"
)

// A Query describes a vulnerability that is not (yet) in the feeds, as a
// person knows it from an advisory: the component and the affected versions.
type Query struct {
	VulnID string `json:"vuln_id"` // e.g. "CVE-2026-12345"; any label is allowed
	// Name matches a component name (case-insensitive) or a CPE product;
	// PURL ("pkg:type/namespace/name", version ignored) matches a
	// component's purl. One of them is required.
	Name string `json:"name,omitempty"`
	PURL string `json:"purl,omitempty"`
	// Introduced, Fixed and LastAffected bound one affected range, as in
	// OSV; Versions lists affected versions exactly. At least one is required.
	Introduced   string   `json:"introduced,omitempty"`
	Fixed        string   `json:"fixed,omitempty"`
	LastAffected string   `json:"last_affected,omitempty"`
	Versions     []string `json:"versions,omitempty"`
}

// Validate reports every problem with q.
func (q Query) Validate() error {
	var errs []error
	if strings.TrimSpace(q.VulnID) == "" {
		errs = append(errs, errors.New("vuln_id is required (the CVE or advisory you ask about)"))
	}
	if q.Name == "" && q.PURL == "" {
		errs = append(errs, errors.New("name or purl is required (the component the vulnerability is in)"))
	}
	if q.PURL != "" {
		if _, err := packageurl.FromString(q.PURL); err != nil {
			errs = append(errs, fmt.Errorf("purl %q is not a package URL: %v", q.PURL, err))
		}
	}
	if q.Fixed != "" && q.LastAffected != "" {
		errs = append(errs, errors.New("give fixed or last_affected, not both"))
	}
	if q.Introduced == "" && q.Fixed == "" && q.LastAffected == "" && len(q.Versions) == 0 {
		errs = append(errs, errors.New("an affected range (introduced, fixed, last_affected) or versions is required; introduced \"0\" means every version"))
	}
	return errors.Join(errs...)
}

// MatchQuery reports whether q affects c. Versions are compared with the
// ordering of c's purl ecosystem, or as upstream versions without one.
func MatchQuery(q Query, c Component) (Hit, bool, error) {
	p := prepare(c)
	named := false
	switch {
	case q.PURL != "" && p.purl != nil && samePackage(q.PURL, *p.purl):
		named = true
	case q.Name != "":
		named = strings.EqualFold(c.Name, q.Name)
		for _, f := range p.cpes {
			named = named || f[cpeProduct] == strings.ToLower(q.Name)
		}
	}
	if !named {
		return Hit{}, false, nil
	}
	o, version := orderGeneric, c.Version
	if p.hasPkg {
		if eo, ok := ecosystemOrdering(p.pkg.ecosystem); ok {
			o, version = eo, p.pkg.version
		}
	}
	rule := Rule{Source: "query", Advisory: q.VulnID}
	hit := Hit{VulnID: q.VulnID, Advisories: []string{q.VulnID}}
	for _, v := range q.Versions {
		if v == version || v == c.Version {
			rule.Text = fmt.Sprintf("%s %s: version listed as affected in the question", c.Name, c.Version)
			hit.Rules = []Rule{rule}
			return hit, true, nil
		}
	}
	if q.Introduced == "" && q.Fixed == "" && q.LastAffected == "" {
		return Hit{}, false, nil
	}
	introduced := q.Introduced
	if introduced == "" {
		introduced = "0"
	}
	events := []feed.Event{{Introduced: introduced}}
	if q.Fixed != "" {
		events = append(events, feed.Event{Fixed: q.Fixed})
	}
	if q.LastAffected != "" {
		events = append(events, feed.Event{LastAffected: q.LastAffected})
	}
	in, _, err := inRange(o, version, events)
	if err != nil {
		return Hit{}, false, fmt.Errorf("%s %s: %w", c.Name, c.Version, err)
	}
	if !in {
		return Hit{}, false, nil
	}
	rule.Text = fmt.Sprintf("%s: range %s given in the question contains %s (%s)", c.Name, describeEvents(events), version, o.name)
	hit.Rules = []Rule{rule}
	if slices.Contains(c.Patched, q.VulnID) {
		hit.Patched = true
		hit.Evidence = []Rule{{Source: "sbom", Text: fmt.Sprintf("the SBOM marks %s as patched in %s %s", q.VulnID, c.Name, c.Version)}}
	}
	return hit, true, nil
}
