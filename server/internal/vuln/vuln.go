// Package vuln is Aftercare's living SBOM: every release's components,
// matched against the vulnerability feeds, down to the devices and hospital
// sites that run each release.
//
// The flow:
//
//  1. A release's SBOM (bound into the signed release by its digest) is
//     ingested when the release is published, and at start for releases
//     published before (IngestPending): its components go to the store.
//  2. Feeds are imported from files (Import) or synced from their URLs on a
//     schedule (Syncer). Each import is one transaction; a bad file changes
//     nothing.
//  3. After every feed change (and every new SBOM or supplier VEX), Analyse
//     re-matches every release's components (package match) and replaces its
//     findings; each finding keeps the rules that matched it.
//  4. A finding that is open and undecided and is in KEV, critical or high,
//     or above the EPSS threshold opens a triage item with an SLA clock and
//     queues notifications (package triage).
//  5. PSIRT records dispositions: one per vulnerability per product line,
//     with per-release overrides; every change is kept in the disposition
//     history (who, when, why). VEX for any release is exported from
//     findings and dispositions.
//  6. Exposure answers "are we exposed to CVE-X?": the affected releases,
//     and the devices running them grouped by organisation and site with
//     their live patch state.
//
// Every read takes a Scope: what the asking principal may see. Hospital IT
// sees only the findings, dispositions and devices of releases that run at
// its own sites.
package vuln

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/sbom"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/triage"
	"github.com/aftercare/aftercare/server/internal/vuln/feed"
)

// A Scope is what one principal may see: every site (PSIRT, the admin
// token) or a list of sites (hospital IT).
type Scope struct {
	All     bool
	SiteIDs []string
}

// AllSites is the scope of a principal that sees everything.
var AllSites = Scope{All: true}

// sites returns the site filter for store queries: nil for all.
func (s Scope) sites() []string {
	if s.All {
		return nil
	}
	return append([]string{}, s.SiteIDs...)
}

// requireAll refuses a site-scoped principal an action that changes
// product-wide state.
func (s Scope) requireAll(what string) error {
	if s.All {
		return nil
	}
	return fmt.Errorf("%s is for product security (all sites); this principal sees only its own sites: %w", what, problem.ErrForbidden)
}

// SBOMOpener opens the SBOM file a release shipped with.
type SBOMOpener interface {
	SBOM(r store.Release) (*os.File, error)
}

// Options configure a Service.
type Options struct {
	Store      *store.Store // required
	Log        *slog.Logger // required
	SBOMLimits sbom.Limits
	FeedLimits feed.Limits
	Policy     triage.Policy // zero: triage.DefaultPolicy()
	// Notifier delivers triage notifications; nil queues none.
	Notifier *triage.Notifier
	// ProductPURL names a release in VEX documents; "%s" is the product
	// and "%s" the version. Default "pkg:generic/%s@%s".
	ProductPURL string
	// Audit receives every disposition change; nil keeps them only in
	// the disposition history.
	Audit AuditFunc
	// Author is the VEX author; default "Aftercare".
	Author string
	Now    func() time.Time // nil: time.Now
}

// Service is the vulnerability monitor. It is safe for concurrent use;
// analyses run one at a time.
type Service struct {
	opts      Options
	analyseMu sync.Mutex // one Analyse at a time
}

// New returns a Service.
func New(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Log == nil {
		return nil, errors.New("vuln: Store and Log are required")
	}
	if opts.Policy.SLA == nil {
		opts.Policy = triage.DefaultPolicy()
	}
	if err := opts.Policy.Validate(); err != nil {
		return nil, err
	}
	if opts.ProductPURL == "" {
		opts.ProductPURL = "pkg:generic/%s@%s"
	}
	if opts.Author == "" {
		opts.Author = "Aftercare"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Service{opts: opts}, nil
}

func (s *Service) now() time.Time { return s.opts.Now().UTC() }

// visibleReleases returns the release IDs scope may see (nil: all).
func (s *Service) visibleReleases(ctx context.Context, scope Scope) ([]string, error) {
	if scope.All {
		return nil, nil
	}
	ids, err := s.opts.Store.ReleasesRunningAt(ctx, scope.SiteIDs)
	if err != nil {
		return nil, err
	}
	return nonNilIDs(ids), nil
}

// canSeeRelease checks that scope may see a release.
func (s *Service) canSeeRelease(ctx context.Context, scope Scope, releaseID string) error {
	vis, err := s.visibleReleases(ctx, scope)
	if err != nil {
		return err
	}
	if vis != nil && !slices.Contains(vis, releaseID) {
		// Not Forbidden: hospital IT must not learn which releases exist.
		return fmt.Errorf("release %q: %w", releaseID, problem.ErrNotFound)
	}
	return nil
}

func nonNilIDs(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}
