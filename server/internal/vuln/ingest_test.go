package vuln_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/vuln"
)

// dirSBOMs opens release SBOMs from a directory by release ID, as the
// release service does by digest.
type dirSBOMs string

func (d dirSBOMs) SBOM(r store.Release) (*os.File, error) {
	return os.Open(filepath.Join(string(d), r.ID+".json"))
}

func TestIngestPendingForReleasesPublishedBefore(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		f := newFixture(t, s)
		dir := t.TempDir()
		add := func(id, version string, sbom []byte) {
			m := firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: []string{"pump-x1"}}
			if sbom != nil {
				m.SBOM = &firmware.Artifact{Length: int64(len(sbom)), SHA256: strings.Repeat("0", 64)}
				os.WriteFile(filepath.Join(dir, id+".json"), sbom, 0o644)
			}
			if err := s.CreateRelease(ctx, store.Release{ID: id, Product: "pump", Version: version, TargetPath: "pump/" + version, Manifest: m, CreatedAt: t0}); err != nil {
				t.Fatal(err)
			}
		}
		add("old-with", "0.9.0", readFile(t, "../sbom/testdata/real/guac-alpine-spdx.json"))
		add("old-without", "0.8.0", nil)
		add("old-bad", "0.7.0", readFile(t, "../sbom/testdata/bad/bad-cpe.json"))
		if err := f.svc.IngestPending(ctx, dirSBOMs(dir)); err != nil {
			t.Fatal(err)
		}
		rec, comps, err := f.svc.ReleaseSBOM(ctx, vuln.AllSites, "old-with")
		if err != nil || rec.Format != "SPDX" || len(comps) != 14 {
			t.Errorf("old-with: %+v, %d components, %v", rec, len(comps), err)
		}
		if rec, _, _ := f.svc.ReleaseSBOM(ctx, vuln.AllSites, "old-without"); rec.Error != "the release carries no SBOM" {
			t.Errorf("old-without: %+v", rec)
		}
		if rec, _, _ := f.svc.ReleaseSBOM(ctx, vuln.AllSites, "old-bad"); !strings.Contains(rec.Error, `components[0].cpe "cpe:2.3:a:openssl"`) {
			t.Errorf("old-bad: %+v", rec)
		}
		// Idempotent: a second start ingests nothing again.
		if rels, _ := s.ReleasesWithoutSBOMRecord(ctx); len(rels) != 0 {
			t.Errorf("releases still pending: %d", len(rels))
		}
		if err := f.svc.CheckSBOM([]byte("{}")); err == nil || !strings.Contains(err.Error(), "sbom: neither a CycloneDX") {
			t.Errorf("CheckSBOM({}) = %v", err)
		}
		var inv *problem.InvalidError
		if _, err := f.svc.IngestSBOM(ctx, f.r1, []byte("[")); !errors.As(err, &inv) {
			t.Errorf("IngestSBOM(bad) = %v, want an invalid-input error", err)
		}
	})
}
