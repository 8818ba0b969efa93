package vuln

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/openvex/go-vex/pkg/vex"

	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/triage"
	"github.com/aftercare/aftercare/server/internal/vuln/feed"
	"github.com/aftercare/aftercare/server/internal/vuln/match"
)

// An AnalysisResult sums up one analysis.
type AnalysisResult struct {
	Releases     int           `json:"releases"`
	Components   int           `json:"components"`
	Advisories   int           `json:"advisories"` // candidates loaded for these components
	Findings     int           `json:"findings"`
	Open         int           `json:"open"` // without backport or supplier evidence
	New          int           `json:"new"`
	TriageOpened int           `json:"triage_opened"`   // opened or escalated
	Notes        []string      `json:"notes,omitempty"` // rules that could not be evaluated
	Duration     time.Duration `json:"duration_ns"`
}

// maxNotes bounds the notes an analysis reports.
const maxNotes = 100

// Analyse re-matches the components of the given releases (all releases
// with an SBOM when nil) against the stored feeds, replaces their findings,
// and opens triage items for serious open findings.
func (s *Service) Analyse(ctx context.Context, releaseIDs []string) (AnalysisResult, error) {
	s.analyseMu.Lock()
	defer s.analyseMu.Unlock()
	start := time.Now()
	var res AnalysisResult
	if releaseIDs == nil {
		var err error
		if releaseIDs, err = s.opts.Store.ReleaseIDsWithSBOM(ctx); err != nil {
			return res, err
		}
	}
	comps := map[string][]store.SBOMComponent{}
	err := s.opts.Store.SBOMComponents(ctx, releaseIDs, func(c store.SBOMComponent) error {
		comps[c.ReleaseID] = append(comps[c.ReleaseID], c)
		return nil
	})
	if err != nil {
		return res, err
	}
	ix, err := s.loadIndex(ctx, comps)
	if err != nil {
		return res, err
	}
	statements, err := s.opts.Store.VEXStatements(ctx)
	if err != nil {
		return res, err
	}
	res.Advisories = ix.Len()
	notes := map[string]bool{}
	// Releases share most components: match each distinct one once.
	cache := map[string][]match.Hit{}
	now := s.now()
	for _, id := range releaseIDs {
		res.Releases++
		var fs []store.Finding
		for _, c := range comps[id] {
			res.Components++
			mc := match.Component{Name: c.Name, Version: c.Version, PURL: c.PURL, CPEs: c.CPEs, Patched: c.Patched}
			key := componentKey(mc)
			hits, ok := cache[key]
			if !ok {
				var n []string
				hits, n = ix.Match(mc)
				hits = applySupplierVEX(hits, mc, statements)
				cache[key] = hits
				for _, note := range n {
					notes[note] = true
				}
			}
			for _, h := range hits {
				fs = append(fs, findingOf(c, h))
			}
		}
		added, err := s.opts.Store.ReplaceFindings(ctx, id, fs, now)
		if err != nil {
			return res, fmt.Errorf("store findings of release %s: %w", id, err)
		}
		res.Findings += len(fs)
		res.New += len(added)
		for _, f := range fs {
			if !f.Patched {
				res.Open++
			}
		}
	}
	for n := range notes {
		res.Notes = append(res.Notes, n)
	}
	sort.Strings(res.Notes)
	if len(res.Notes) > maxNotes {
		res.Notes = append(res.Notes[:maxNotes], fmt.Sprintf("... and %d more", len(notes)-maxNotes))
	}
	if res.TriageOpened, err = s.openTriage(ctx); err != nil {
		return res, err
	}
	res.Duration = time.Since(start)
	s.opts.Log.Info("analysis done", "releases", res.Releases, "components", res.Components, "findings", res.Findings,
		"open", res.Open, "new", res.New, "triage_opened", res.TriageOpened, "duration", res.Duration)
	return res, nil
}

func componentKey(c match.Component) string {
	return strings.Join([]string{c.Name, c.Version, c.PURL, strings.Join(c.CPEs, " "), strings.Join(c.Patched, " ")}, "\x00")
}

// loadIndex loads the advisories the components can match.
func (s *Service) loadIndex(ctx context.Context, comps map[string][]store.SBOMComponent) (*match.Index, error) {
	keySet := map[string]bool{}
	for _, cs := range comps {
		for _, c := range cs {
			for _, k := range match.Keys(match.Component{Name: c.Name, Version: c.Version, PURL: c.PURL, CPEs: c.CPEs}) {
				keySet[k] = true
			}
		}
	}
	keys := make([]string, 0, len(keySet))
	for k := range keySet {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	stored, err := s.opts.Store.AdvisoriesByKeys(ctx, keys)
	if err != nil {
		return nil, err
	}
	advs := make([]*feed.Advisory, 0, len(stored))
	for _, sa := range stored {
		var a feed.Advisory
		if err := json.Unmarshal(sa.Data, &a); err != nil {
			return nil, fmt.Errorf("stored advisory %s %s: %w", sa.Source, sa.ID, err)
		}
		advs = append(advs, &a)
	}
	return match.NewIndex(advs), nil
}

func findingOf(c store.SBOMComponent, h match.Hit) store.Finding {
	return store.Finding{
		ReleaseID: c.ReleaseID, ComponentIndex: c.Index, VulnID: h.VulnID, ComponentName: c.Name, ComponentVersion: c.Version,
		PURL: c.PURL, Advisories: h.Advisories, Rules: rulesOf(h.Rules), Evidence: rulesOf(h.Evidence),
		Summary: h.Summary, Severity: h.Severity, CVSS: h.CVSS, Patched: h.Patched,
	}
}

func rulesOf(rs []match.Rule) []store.FindingRule {
	out := make([]store.FindingRule, len(rs))
	for i, r := range rs {
		out[i] = store.FindingRule{Source: r.Source, Advisory: r.Advisory, Text: r.Text}
	}
	return out
}

// applySupplierVEX marks hits that a supplier's VEX statement says are
// not affected or fixed in this component.
func applySupplierVEX(hits []match.Hit, c match.Component, statements []store.VEXStatement) []match.Hit {
	if len(statements) == 0 {
		return hits
	}
	out := slices.Clone(hits)
	for i := range out {
		h := &out[i]
		for _, st := range statements {
			if st.VulnID != h.VulnID && !slices.Contains(h.Advisories, st.VulnID) {
				continue
			}
			if !statementCovers(st.Product, c) {
				continue
			}
			switch st.Status {
			case string(vex.StatusNotAffected), string(vex.StatusFixed):
				text := fmt.Sprintf("supplier VEX by %s says %s", st.Author, st.Status)
				if st.Justification != "" {
					text += " (" + st.Justification + ")"
				}
				h.Evidence = append(h.Evidence, match.Rule{Source: "vex", Advisory: st.Document, Text: text})
				h.Patched = true
			}
		}
	}
	return out
}

// statementCovers reports whether a VEX product identifier (purl or CPE)
// names component c.
func statementCovers(product string, c match.Component) bool {
	switch {
	case strings.HasPrefix(product, "pkg:"):
		return c.PURL != "" && vex.PurlMatches(product, c.PURL)
	case strings.HasPrefix(product, "cpe:"):
		return slices.Contains(c.CPEs, product)
	}
	return false
}

// openTriage opens a triage item for every vulnerability of a product
// line that has an open finding without a decision and meets the policy.
func (s *Service) openTriage(ctx context.Context) (int, error) {
	findings, err := s.opts.Store.OpenFindings(ctx)
	if err != nil {
		return 0, err
	}
	rels, err := s.releasesByID(ctx)
	if err != nil {
		return 0, err
	}
	decided, err := s.decisions(ctx, store.DispositionFilter{})
	if err != nil {
		return 0, err
	}
	type group struct {
		product, vuln, severity, summary string
		releases                         []string
	}
	groups := map[[2]string]*group{}
	var cves []string
	for _, f := range findings {
		rel, ok := rels[f.ReleaseID]
		if !ok || decided.of(rel.Product, f.VulnID, f.ReleaseID) != nil {
			continue
		}
		k := [2]string{rel.Product, f.VulnID}
		g := groups[k]
		if g == nil {
			g = &group{product: rel.Product, vuln: f.VulnID, summary: f.Summary}
			groups[k] = g
			cves = append(cves, f.VulnID)
		}
		if match.SeverityRank(f.Severity) > match.SeverityRank(g.severity) {
			g.severity = f.Severity
		}
		if !slices.Contains(g.releases, f.ReleaseID) {
			g.releases = append(g.releases, f.ReleaseID)
		}
	}
	kev, err := s.opts.Store.KEVFor(ctx, cves)
	if err != nil {
		return 0, err
	}
	epss, err := s.opts.Store.EPSSFor(ctx, cves)
	if err != nil {
		return 0, err
	}
	keys := make([][2]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	opened := 0
	now := s.now()
	for _, k := range keys {
		g := groups[k]
		_, inKEV := kev[g.vuln]
		score := epss[g.vuln].Score
		reasons, sla := s.opts.Policy.Evaluate(g.severity, inKEV, score)
		if len(reasons) == 0 {
			continue
		}
		sort.Strings(g.releases)
		item := store.TriageItem{
			ID: uuid.NewString(), Product: g.product, VulnID: g.vuln, Severity: g.severity, KEV: inKEV, EPSS: score,
			Reasons: reasons, Releases: g.releases, OpenedAt: now, DueAt: now.Add(sla),
		}
		outcome, err := s.opts.Store.OpenTriage(ctx, item, s.notificationsFor(item, g.summary, rels))
		if err != nil {
			return opened, err
		}
		if outcome != "" {
			opened++
			s.opts.Log.Info("triage item updated", "outcome", outcome, "product", g.product, "vuln_id", g.vuln, "reasons", strings.Join(reasons, ","), "due_at", item.DueAt)
		}
	}
	return opened, nil
}

func (s *Service) notificationsFor(item store.TriageItem, summary string, rels map[string]store.Release) []store.Notification {
	channels := s.opts.Notifier.Channels()
	if len(channels) == 0 {
		return nil
	}
	var versions []string
	for _, id := range item.Releases {
		versions = append(versions, rels[id].Version)
	}
	subject := fmt.Sprintf("[Aftercare] triage %s in %s by %s (%s)", item.VulnID, item.Product, item.DueAt.Format(time.RFC3339), strings.Join(item.Reasons, ", "))
	var out []store.Notification
	for _, ch := range channels {
		n := store.Notification{ID: uuid.NewString(), Channel: ch, Subject: subject, CreatedAt: item.OpenedAt}
		switch ch {
		case triage.ChannelWebhook:
			b, _ := json.Marshal(map[string]any{"event": "triage.opened", "triage_item": item, "summary": summary, "release_versions": versions})
			n.Body = string(b)
		case triage.ChannelEmail:
			n.Body = fmt.Sprintf("%s affects %s releases %s.\n%s\n\nReasons: %s\nSeverity: %s, KEV: %v, EPSS: %.3f\nTriage due: %s\n\naftercare vuln exposed %s\naftercare vuln triage list\n",
				item.VulnID, item.Product, strings.Join(versions, ", "), summary, strings.Join(item.Reasons, ", "), orUnknown(item.Severity), item.KEV, item.EPSS,
				item.DueAt.Format(time.RFC3339), item.VulnID)
		}
		out = append(out, n)
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (s *Service) releasesByID(ctx context.Context) (map[string]store.Release, error) {
	rels, err := s.opts.Store.Releases(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]store.Release, len(rels))
	for _, r := range rels {
		out[r.ID] = r
	}
	return out, nil
}
