package vuln

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/vuln/match"
)

// States of a finding as people see it: open, patched (backport or supplier
// evidence), or the status of the decision that applies.
const (
	StateOpen    = "open"
	StatePatched = "patched"
)

// A FindingView is a finding with what is known around it.
type FindingView struct {
	store.Finding
	Product        string             `json:"product"`
	ReleaseVersion string             `json:"release_version"`
	State          string             `json:"state"`
	Disposition    *store.Disposition `json:"disposition,omitempty"`
	KEV            *store.KEVEntry    `json:"kev,omitempty"`
	EPSS           *store.EPSSScore   `json:"epss,omitempty"`
}

// A FindingQuery selects findings; empty fields do not filter.
type FindingQuery struct {
	ReleaseID string
	VulnID    string
	// States keeps findings in these states ("open", "patched",
	// "not_affected", ...); empty keeps all.
	States []string
}

// Findings returns the findings scope may see that match q, most serious
// first.
func (s *Service) Findings(ctx context.Context, scope Scope, q FindingQuery) ([]FindingView, error) {
	for _, st := range q.States {
		if st != StateOpen && st != StatePatched && !slices.Contains(Statuses, st) {
			return nil, problem.Invalid(fmt.Sprintf("state %q must be open, patched or one of %s", st, strings.Join(Statuses, ", ")))
		}
	}
	f := store.FindingFilter{VulnID: q.VulnID}
	visible, err := s.visibleReleases(ctx, scope)
	if err != nil {
		return nil, err
	}
	switch {
	case q.ReleaseID != "" && visible != nil && !slices.Contains(visible, q.ReleaseID):
		return nil, fmt.Errorf("release %q: %w", q.ReleaseID, problem.ErrNotFound)
	case q.ReleaseID != "":
		if _, err := s.opts.Store.Release(ctx, q.ReleaseID); err != nil {
			return nil, err
		}
		f.ReleaseIDs = []string{q.ReleaseID}
	default:
		f.ReleaseIDs = visible
	}
	fs, err := s.opts.Store.Findings(ctx, f)
	if err != nil {
		return nil, err
	}
	return s.views(ctx, fs, q.States)
}

func (s *Service) views(ctx context.Context, fs []store.Finding, states []string) ([]FindingView, error) {
	rels, err := s.releasesByID(ctx)
	if err != nil {
		return nil, err
	}
	decided, err := s.decisions(ctx, store.DispositionFilter{})
	if err != nil {
		return nil, err
	}
	var cves []string
	for _, f := range fs {
		if !slices.Contains(cves, f.VulnID) {
			cves = append(cves, f.VulnID)
		}
	}
	kev, err := s.opts.Store.KEVFor(ctx, cves)
	if err != nil {
		return nil, err
	}
	epss, err := s.opts.Store.EPSSFor(ctx, cves)
	if err != nil {
		return nil, err
	}
	out := make([]FindingView, 0, len(fs))
	for _, f := range fs {
		rel := rels[f.ReleaseID]
		v := FindingView{Finding: f, Product: rel.Product, ReleaseVersion: rel.Version, State: StateOpen}
		v.Disposition = decided.of(rel.Product, f.VulnID, f.ReleaseID)
		switch {
		case f.Patched:
			v.State = StatePatched
		case v.Disposition != nil:
			v.State = v.Disposition.Status
		}
		if e, ok := kev[f.VulnID]; ok {
			v.KEV = &e
		}
		if e, ok := epss[f.VulnID]; ok {
			v.EPSS = &e
		}
		if len(states) == 0 || slices.Contains(states, v.State) {
			out = append(out, v)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if (a.State == StateOpen) != (b.State == StateOpen) {
			return a.State == StateOpen
		}
		if (a.KEV != nil) != (b.KEV != nil) {
			return a.KEV != nil
		}
		return match.SeverityRank(a.Severity) > match.SeverityRank(b.Severity)
	})
	return out, nil
}
