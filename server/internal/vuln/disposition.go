package vuln

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/openvex/go-vex/pkg/vex"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// Disposition statuses: what PSIRT decided about a vulnerability.
const (
	StatusNotAffected  = "not_affected"  // with a justification
	StatusAffected     = "affected"      // exploitable; work pending
	StatusMitigated    = "mitigated"     // present, but a mitigation in the product blocks it
	StatusPatchPlanned = "patch_planned" // with the target release
	StatusFixed        = "fixed"         // with the release that fixes it
)

// Statuses lists the disposition statuses.
var Statuses = []string{StatusNotAffected, StatusAffected, StatusMitigated, StatusPatchPlanned, StatusFixed}

// Justifications for not_affected are OpenVEX's (CISA's VEX minimum
// requirements).
var Justifications = vex.Justifications()

// An AuditFunc receives every disposition change after it is stored, for
// an audit log. (Issue 6's hash-chained audit log plugs in here.)
type AuditFunc func(ctx context.Context, ch store.DispositionChange) error

var vulnIDPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._:-]{2,99}$`)

// A DispositionRequest records a decision.
type DispositionRequest struct {
	Product       string `json:"product"`              // the product line; taken from release_id when that is given
	VulnID        string `json:"vuln_id"`              // e.g. "CVE-2023-0286"
	ReleaseID     string `json:"release_id,omitempty"` // set: override for this release only
	Status        string `json:"status"`
	Justification string `json:"justification,omitempty"`  // not_affected
	Detail        string `json:"detail,omitempty"`         // free text: impact or action statement
	TargetRelease string `json:"target_release,omitempty"` // patch_planned: the version that will fix it
	FixedRelease  string `json:"fixed_release,omitempty"`  // fixed: the version of the product that fixes it
	Reason        string `json:"reason"`                   // why this decision, for the audit trail; required
}

// SetDisposition validates and records a decision by actor, appends it to
// the history, closes the triage item it answers, and passes the change to
// the audit function.
func (s *Service) SetDisposition(ctx context.Context, scope Scope, actor string, req DispositionRequest) (store.DispositionChange, error) {
	if err := scope.requireAll("recording a disposition"); err != nil {
		return store.DispositionChange{}, err
	}
	if err := s.validateDisposition(ctx, &req); err != nil {
		return store.DispositionChange{}, err
	}
	d := store.Disposition{
		Product: req.Product, VulnID: req.VulnID, ReleaseID: req.ReleaseID, Status: req.Status, Justification: req.Justification,
		Detail: req.Detail, TargetRelease: req.TargetRelease, FixedRelease: req.FixedRelease, Source: "psirt",
		UpdatedBy: actor, UpdatedAt: s.now(),
	}
	ch, err := s.opts.Store.SetDisposition(ctx, d, req.Reason)
	if err != nil {
		return ch, err
	}
	s.opts.Log.Info("disposition recorded", "product", d.Product, "vuln_id", d.VulnID, "release", d.ReleaseID, "status", d.Status, "actor", actor)
	if err := s.opts.Store.CloseTriage(ctx, d.Product, d.VulnID, actor, d.UpdatedAt); err != nil {
		return ch, err
	}
	if s.opts.Audit != nil {
		if err := s.opts.Audit(ctx, ch); err != nil {
			return ch, fmt.Errorf("audit log: %w", err)
		}
	}
	return ch, nil
}

func (s *Service) validateDisposition(ctx context.Context, req *DispositionRequest) error {
	var errs []string
	if req.ReleaseID != "" {
		rel, err := s.opts.Store.Release(ctx, req.ReleaseID)
		switch {
		case errors.Is(err, problem.ErrNotFound):
			errs = append(errs, fmt.Sprintf("release_id %q: no such release", req.ReleaseID))
		case err != nil:
			return err
		case req.Product != "" && req.Product != rel.Product:
			errs = append(errs, fmt.Sprintf("release_id %q is a release of %q, not of product %q", req.ReleaseID, rel.Product, req.Product))
		default:
			req.Product = rel.Product
		}
	}
	versions, err := s.productVersions(ctx, req.Product)
	if err != nil {
		return err
	}
	switch {
	case req.Product == "" && req.ReleaseID == "":
		errs = append(errs, "product (or release_id) is required")
	case req.Product != "" && len(versions) == 0:
		errs = append(errs, fmt.Sprintf("product %q has no releases", req.Product))
	}
	if !vulnIDPattern.MatchString(req.VulnID) {
		errs = append(errs, fmt.Sprintf("vuln_id %q must be a vulnerability ID such as CVE-2023-0286 (3-100 letters, digits, '.', '_', ':', '-')", req.VulnID))
	}
	if !slices.Contains(Statuses, req.Status) {
		errs = append(errs, fmt.Sprintf("status %q must be one of %s", req.Status, strings.Join(Statuses, ", ")))
	}
	switch {
	case req.Status == StatusNotAffected && !slices.Contains(Justifications, req.Justification):
		errs = append(errs, fmt.Sprintf("justification %q: not_affected needs one of %s", req.Justification, strings.Join(Justifications, ", ")))
	case req.Status != StatusNotAffected && req.Justification != "":
		errs = append(errs, fmt.Sprintf("justification is only for not_affected, not %q", req.Status))
	}
	switch {
	case req.Status == StatusPatchPlanned && req.TargetRelease == "":
		errs = append(errs, "target_release is required for patch_planned (the version that will fix it)")
	case req.Status != StatusPatchPlanned && req.TargetRelease != "":
		errs = append(errs, "target_release is only for patch_planned")
	}
	switch {
	case req.Status == StatusFixed && !slices.Contains(versions, req.FixedRelease):
		errs = append(errs, fmt.Sprintf("fixed_release %q must be a published version of %q (%s)", req.FixedRelease, req.Product, strings.Join(versions, ", ")))
	case req.Status != StatusFixed && req.FixedRelease != "":
		errs = append(errs, "fixed_release is only for fixed")
	}
	if strings.TrimSpace(req.Reason) == "" {
		errs = append(errs, "reason is required: say why, for the audit trail")
	}
	if len(req.Detail) > 4000 || len(req.Reason) > 4000 {
		errs = append(errs, "detail and reason are limited to 4000 characters each")
	}
	return problem.Invalid(errs...)
}

func (s *Service) productVersions(ctx context.Context, product string) ([]string, error) {
	if product == "" {
		return nil, nil
	}
	rels, err := s.opts.Store.Releases(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range rels {
		if r.Product == product {
			out = append(out, r.Version)
		}
	}
	return out, nil
}

// decisionSet looks up the decision that applies to a finding.
type decisionSet map[[3]string]*store.Disposition

func (s *Service) decisions(ctx context.Context, f store.DispositionFilter) (decisionSet, error) {
	ds, err := s.opts.Store.Dispositions(ctx, f)
	if err != nil {
		return nil, err
	}
	out := decisionSet{}
	for i := range ds {
		d := &ds[i]
		out[[3]string{d.Product, d.VulnID, d.ReleaseID}] = d
	}
	return out, nil
}

// of returns the release's override, else the product line's decision,
// else nil.
func (ds decisionSet) of(product, vulnID, releaseID string) *store.Disposition {
	if d := ds[[3]string{product, vulnID, releaseID}]; d != nil {
		return d
	}
	return ds[[3]string{product, vulnID, ""}]
}

// A DispositionQuery selects dispositions; empty fields do not filter.
type DispositionQuery struct {
	Product string
	VulnID  string
}

// Dispositions returns the decisions scope may see: for a site-scoped
// principal, those of product lines running at its sites, without the
// overrides of releases that do not.
func (s *Service) Dispositions(ctx context.Context, scope Scope, q DispositionQuery) ([]store.Disposition, error) {
	f, visible, err := s.dispositionFilter(ctx, scope, q)
	if err != nil || f == nil {
		return nil, err
	}
	ds, err := s.opts.Store.Dispositions(ctx, *f)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(ds, func(d store.Disposition) bool {
		return visible != nil && d.ReleaseID != "" && !slices.Contains(visible, d.ReleaseID)
	}), nil
}

// History returns the changes of decisions scope may see, oldest first.
func (s *Service) History(ctx context.Context, scope Scope, q DispositionQuery) ([]store.DispositionChange, error) {
	f, visible, err := s.dispositionFilter(ctx, scope, q)
	if err != nil || f == nil {
		return nil, err
	}
	hs, err := s.opts.Store.DispositionHistory(ctx, *f)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(hs, func(c store.DispositionChange) bool {
		return visible != nil && c.ReleaseID != "" && !slices.Contains(visible, c.ReleaseID)
	}), nil
}

// dispositionFilter turns a query and a scope into a store filter; nil
// when the scope sees nothing.
func (s *Service) dispositionFilter(ctx context.Context, scope Scope, q DispositionQuery) (*store.DispositionFilter, []string, error) {
	f := &store.DispositionFilter{VulnID: q.VulnID}
	if q.Product != "" {
		f.Products = []string{q.Product}
	}
	visible, err := s.visibleReleases(ctx, scope)
	if err != nil || visible == nil {
		return f, nil, err
	}
	products, err := s.productsOf(ctx, visible)
	if err != nil {
		return nil, nil, err
	}
	if q.Product != "" {
		products = slices.DeleteFunc(products, func(p string) bool { return p != q.Product })
	}
	if len(products) == 0 {
		return nil, visible, nil
	}
	f.Products = products
	return f, visible, nil
}

func (s *Service) productsOf(ctx context.Context, releaseIDs []string) ([]string, error) {
	rels, err := s.releasesByID(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range releaseIDs {
		if p := rels[id].Product; p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out, nil
}

// TriageItems returns the triage items scope may see (of product lines
// running at its sites).
func (s *Service) TriageItems(ctx context.Context, scope Scope, openOnly bool) ([]store.TriageItem, error) {
	var products []string
	if !scope.All {
		visible, err := s.visibleReleases(ctx, scope)
		if err != nil {
			return nil, err
		}
		if products, err = s.productsOf(ctx, visible); err != nil {
			return nil, err
		}
		products = nonNilIDs(products)
	}
	return s.opts.Store.TriageItems(ctx, products, openOnly)
}
