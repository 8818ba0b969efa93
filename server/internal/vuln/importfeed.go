package vuln

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/vuln/feed"
	"github.com/aftercare/aftercare/server/internal/vuln/match"
)

// An ImportResult says what an import stored and what the analysis after
// it found.
type ImportResult struct {
	Feed     store.Feed     `json:"feed"`
	Analysis AnalysisResult `json:"analysis"`
}

// A Source says where feed bytes came from.
type Source struct {
	Feed         string // feed name; "" for the kind ("osv", "nvd", "kev", "epss")
	Origin       string // file name or URL
	ETag         string // for conditional requests on the next sync
	LastModified string
}

// Import reads a feed file of the given kind and stores it in one
// transaction, then re-analyses every release. A file that does not read
// changes nothing and gives a problem.InvalidError naming what is wrong.
func (s *Service) Import(ctx context.Context, scope Scope, kind string, b []byte, src Source) (ImportResult, error) {
	if err := scope.requireAll("importing feeds"); err != nil {
		return ImportResult{}, err
	}
	f, err := s.importOnly(ctx, kind, b, src)
	if err != nil {
		return ImportResult{}, err
	}
	res := ImportResult{Feed: f}
	res.Analysis, err = s.Analyse(ctx, nil)
	return res, err
}

// importOnly stores a feed file without analysing.
func (s *Service) importOnly(ctx context.Context, kind string, b []byte, src Source) (store.Feed, error) {
	if !slices.Contains(feed.Kinds, kind) {
		return store.Feed{}, problem.Invalid(fmt.Sprintf("feed kind %q: must be one of %s", kind, strings.Join(feed.Kinds, ", ")))
	}
	if src.Feed == "" {
		src.Feed = kind
	}
	sum := sha256.Sum256(b)
	f := store.Feed{Name: src.Feed, Kind: kind, Source: src.Origin, SHA256: hex.EncodeToString(sum[:]), ImportedAt: s.now(), ETag: src.ETag, LastModified: src.LastModified}
	if err := s.store(ctx, kind, b, &f); err != nil {
		var inv *feed.InvalidError
		if errors.As(err, &inv) {
			return store.Feed{}, problem.Invalid(inv.Error())
		}
		return store.Feed{}, err
	}
	s.opts.Log.Info("feed imported", "feed", f.Name, "kind", kind, "source", f.Source, "records", f.Records)
	return f, nil
}

// store parses b and stores it, filling f's record count and version.
func (s *Service) store(ctx context.Context, kind string, b []byte, f *store.Feed) error {
	lim := s.opts.FeedLimits
	switch kind {
	case feed.KindOSV, feed.KindNVD:
		var advs []feed.Advisory
		var err error
		if kind == feed.KindOSV {
			advs, err = feed.ReadOSV(f.Source, b, lim)
		} else {
			advs, err = feed.ReadNVD(f.Source, b, lim)
		}
		if err != nil {
			return err
		}
		stored := make([]store.StoredAdvisory, len(advs))
		for i := range advs {
			a := &advs[i]
			data, err := json.Marshal(a)
			if err != nil {
				return err
			}
			stored[i] = store.StoredAdvisory{Source: a.Source, ID: a.ID, Modified: a.Modified, Data: data, Keys: match.AdvisoryKeys(a), CVEs: a.CVEs}
		}
		f.Records = len(stored)
		return s.opts.Store.ImportAdvisories(ctx, *f, stored)
	case feed.KindKEV:
		cat, err := feed.ReadKEV(f.Source, b, lim)
		if err != nil {
			return err
		}
		entries := make([]store.KEVEntry, len(cat.Entries))
		for i, e := range cat.Entries {
			entries[i] = store.KEVEntry{CVE: e.CVE, Name: e.Name, DateAdded: e.DateAdded, DueDate: e.DueDate, Ransomware: e.Ransomware}
		}
		f.Records, f.Version = len(entries), cat.Version
		return s.opts.Store.ImportKEV(ctx, *f, entries)
	case feed.KindEPSS:
		snap, err := feed.ReadEPSS(f.Source, b, lim)
		if err != nil {
			return err
		}
		scores := make([]store.EPSSScore, len(snap.Scores))
		for i, e := range snap.Scores {
			scores[i] = store.EPSSScore{CVE: e.CVE, Score: e.Score, Percentile: e.Percentile}
		}
		f.Records, f.Version = len(scores), snap.ScoreDate
		return s.opts.Store.ImportEPSS(ctx, *f, scores)
	}
	return fmt.Errorf("unknown feed kind %q", kind)
}

// Feeds returns the state of every feed.
func (s *Service) Feeds(ctx context.Context) ([]store.Feed, error) {
	return s.opts.Store.Feeds(ctx)
}
