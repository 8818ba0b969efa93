package vuln

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/sbom"
	"github.com/aftercare/aftercare/server/internal/store"
)

// CheckSBOM parses an SBOM as ingestion will, so a release whose SBOM
// cannot be read is refused at upload. The error is a problem.InvalidError
// naming each line or field.
func (s *Service) CheckSBOM(b []byte) error {
	if _, err := sbom.Parse(b, s.opts.SBOMLimits); err != nil {
		return sbomProblem(err)
	}
	return nil
}

func sbomProblem(err error) error {
	var inv *sbom.InvalidError
	if errors.As(err, &inv) {
		problems := make([]string, len(inv.Problems))
		for i, p := range inv.Problems {
			problems[i] = "sbom: " + p
		}
		return problem.Invalid(problems...)
	}
	return err
}

// IngestSBOM parses a release's SBOM, stores its components and analyses
// the release. A document that does not parse is recorded as the
// release's SBOM error and returned as a problem.InvalidError.
func (s *Service) IngestSBOM(ctx context.Context, rel store.Release, b []byte) (store.ReleaseSBOM, error) {
	sum := sha256.Sum256(b)
	rec := store.ReleaseSBOM{ReleaseID: rel.ID, SHA256: hex.EncodeToString(sum[:]), IngestedAt: s.now()}
	doc, err := sbom.Parse(b, s.opts.SBOMLimits)
	if err != nil {
		rec.Error = err.Error()
		if perr := s.opts.Store.PutReleaseSBOM(ctx, rec, rel.Manifest.Models, nil); perr != nil {
			return rec, perr
		}
		return rec, sbomProblem(err)
	}
	rec.Format, rec.SpecVersion, rec.Warnings, rec.Components = doc.Format, doc.SpecVersion, doc.Warnings, len(doc.Components)
	comps := make([]store.SBOMComponent, len(doc.Components))
	for i, c := range doc.Components {
		comps[i] = store.SBOMComponent{Ref: c.Ref, Name: c.Name, Version: c.Version, PURL: c.PURL, CPEs: c.CPEs, Patched: c.Patched}
	}
	if err := s.opts.Store.PutReleaseSBOM(ctx, rec, rel.Manifest.Models, comps); err != nil {
		return rec, err
	}
	s.opts.Log.Info("sbom ingested", "release", rel.ID, "format", doc.Format, "spec_version", doc.SpecVersion, "components", len(comps), "warnings", len(doc.Warnings))
	if _, err := s.Analyse(ctx, []string{rel.ID}); err != nil {
		return rec, fmt.Errorf("analyse release %s: %w", rel.ID, err)
	}
	return rec, nil
}

// IngestPending ingests the SBOM of every release that has no SBOM record
// yet: releases published before vulnerability monitoring, or whose ingest
// was interrupted. A release without an SBOM is recorded as such.
func (s *Service) IngestPending(ctx context.Context, sboms SBOMOpener) error {
	rels, err := s.opts.Store.ReleasesWithoutSBOMRecord(ctx)
	if err != nil {
		return err
	}
	for _, rel := range rels {
		if rel.Manifest.SBOM == nil {
			rec := store.ReleaseSBOM{ReleaseID: rel.ID, Error: "the release carries no SBOM", IngestedAt: s.now()}
			if err := s.opts.Store.PutReleaseSBOM(ctx, rec, rel.Manifest.Models, nil); err != nil {
				return err
			}
			continue
		}
		b, err := s.readSBOM(sboms, rel)
		if err != nil {
			return fmt.Errorf("release %s: %w", rel.ID, err)
		}
		if _, err := s.IngestSBOM(ctx, rel, b); err != nil && !isInvalid(err) {
			return err
		} else if err != nil {
			s.opts.Log.Warn("release sbom not ingested", "release", rel.ID, "err", err)
		}
	}
	return nil
}

func (s *Service) readSBOM(sboms SBOMOpener, rel store.Release) ([]byte, error) {
	f, err := sboms.SBOM(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	lim := s.opts.SBOMLimits.MaxBytes
	if lim <= 0 {
		lim = sbom.DefaultLimits.MaxBytes
	}
	return io.ReadAll(io.LimitReader(f, lim+1))
}

func isInvalid(err error) bool {
	var inv *problem.InvalidError
	return errors.As(err, &inv)
}

// ReleaseSBOM returns a release's SBOM record and components, if scope may
// see the release.
func (s *Service) ReleaseSBOM(ctx context.Context, scope Scope, releaseID string) (store.ReleaseSBOM, []store.SBOMComponent, error) {
	if err := s.canSeeRelease(ctx, scope, releaseID); err != nil {
		return store.ReleaseSBOM{}, nil, err
	}
	rec, err := s.opts.Store.ReleaseSBOM(ctx, releaseID)
	if err != nil {
		return rec, nil, err
	}
	var comps []store.SBOMComponent
	err = s.opts.Store.SBOMComponents(ctx, []string{releaseID}, func(c store.SBOMComponent) error {
		comps = append(comps, c)
		return nil
	})
	return rec, comps, err
}
