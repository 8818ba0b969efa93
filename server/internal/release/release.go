// Package release ingests signed release bundles into the release
// repository and the release catalog.
//
// Publishing is two steps, so an upload is checked completely before
// anything is kept:
//
//  1. Stage reads the bundle into staging files, checking every length and
//     digest in its manifest and decoding the image to check its raw digest;
//     with an SBOMIngester, the SBOM must also parse.
//  2. Publish checks the release engineer's signed targets metadata (threshold
//     of the root's targets keys, next version, not expired) and that its
//     entry for the image carries exactly the staged lengths, hashes and
//     manifest; then it publishes the repository and records the release,
//     and hands the SBOM to the SBOMIngester (vulnerability monitoring).
//
// Any failure before the repository publish leaves the repository, the
// catalog and the data directory as they were.
package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
)

// Options configures a Service.
type Options struct {
	Store      *store.Store  // required
	Repo       *tufrepo.Repo // required
	StagingDir string        // on the repository's file system; required
	SBOMDir    string        // where SBOMs are kept by digest; required
	Log        *slog.Logger  // required
	Now        func() time.Time
	// SBOMs checks a bundle's SBOM at Stage and ingests it after Publish;
	// nil keeps SBOMs as opaque files.
	SBOMs SBOMIngester
}

// An SBOMIngester reads release SBOMs (the vulnerability monitor).
type SBOMIngester interface {
	// CheckSBOM returns a problem.InvalidError naming what is wrong.
	CheckSBOM(b []byte) error
	// IngestSBOM records the components of a published release.
	IngestSBOM(ctx context.Context, rel store.Release, b []byte) (store.ReleaseSBOM, error)
}

// Service publishes releases. It is safe for concurrent use.
type Service struct {
	opts Options
}

// New returns a Service, creating its directories.
func New(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Repo == nil || opts.StagingDir == "" || opts.SBOMDir == "" || opts.Log == nil {
		return nil, errors.New("release: Store, Repo, StagingDir, SBOMDir and Log are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for _, d := range []string{opts.StagingDir, opts.SBOMDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	return &Service{opts: opts}, nil
}

// A Staged bundle waits in staging files for Publish or Discard.
type Staged struct {
	Manifest *firmware.Manifest
	image    string
	sbom     string // "" without an SBOM
}

// Discard removes the staging files; it is safe after Publish.
func (st *Staged) Discard() {
	os.Remove(st.image)
	if st.sbom != "" {
		os.Remove(st.sbom)
	}
}

// Stage reads a bundle into staging files and checks it against its own
// manifest. The caller bounds r's length.
func (s *Service) Stage(ctx context.Context, r io.Reader) (_ *Staged, err error) {
	br, err := firmware.OpenBundle(r)
	if err != nil {
		return nil, bundleError(err)
	}
	st := &Staged{Manifest: br.Manifest}
	defer func() {
		if err != nil {
			st.Discard()
		}
	}()
	img, err := os.CreateTemp(s.opts.StagingDir, "image-*")
	if err != nil {
		return nil, err
	}
	defer img.Close()
	st.image = img.Name()
	var sbom *os.File
	var sbomW io.Writer
	if br.Manifest.SBOM != nil {
		if sbom, err = os.CreateTemp(s.opts.StagingDir, "sbom-*"); err != nil {
			return nil, err
		}
		defer sbom.Close()
		st.sbom, sbomW = sbom.Name(), sbom
	}
	if err := br.Extract(sbomW, img); err != nil {
		return nil, bundleError(err)
	}
	for _, f := range []*os.File{img, sbom} {
		if f == nil {
			continue
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
	}
	if st.sbom != "" && s.opts.SBOMs != nil {
		// The SBOM's digest matched its manifest entry; refuse a release
		// whose SBOM the vulnerability monitor cannot read.
		b, err := os.ReadFile(st.sbom)
		if err != nil {
			return nil, err
		}
		if err := s.opts.SBOMs.CheckSBOM(b); err != nil {
			return nil, err
		}
	}
	// The digests of the stored image match; now decode it and check the
	// raw image, so a bundle whose image cannot install is refused here.
	if _, err := img.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if err := firmware.WriteImage(io.Discard, img, br.Manifest.Image); err != nil {
		return nil, problem.Invalid(fmt.Sprintf("bundle image does not decode to its manifest's raw image: %v", err))
	}
	return st, ctx.Err()
}

func bundleError(err error) error {
	if errors.Is(err, firmware.ErrBadBundle) {
		return problem.InvalidFrom(err)
	}
	return err
}

// Publish publishes a staged bundle with the signed targets metadata that
// lists it, and records the release. The staged files are consumed.
func (s *Service) Publish(ctx context.Context, st *Staged, signedTargets []byte) (store.Release, error) {
	m := st.Manifest
	t, err := s.opts.Repo.ParseTargets(signedTargets)
	if err != nil {
		return store.Release{}, err
	}
	entry, ok := t.Signed.Targets[m.TargetPath()]
	if !ok {
		return store.Release{}, problem.Invalid(fmt.Sprintf("the signed targets metadata does not list %s; sign this bundle's release", m.TargetPath()))
	}
	custom, err := firmware.ParseTargetCustom(entry.Custom)
	if err != nil {
		return store.Release{}, problem.Invalid(err.Error())
	}
	if !bytes.Equal(custom.Manifest.Marshal(), m.Marshal()) {
		return store.Release{}, problem.Invalid(fmt.Sprintf("the signed manifest for %s differs from the bundle's manifest; the bundle was altered after signing or another build was signed", m.TargetPath()))
	}
	if _, err := s.opts.Store.ReleaseByVersion(ctx, m.Product, m.Version); err == nil {
		return store.Release{}, fmt.Errorf("release %s %s already exists: %w", m.Product, m.Version, problem.ErrConflict)
	} else if !errors.Is(err, problem.ErrNotFound) {
		return store.Release{}, err
	}
	if err := s.opts.Repo.Publish(ctx, t, map[string]tufrepo.Blob{m.TargetPath(): {Path: st.image}}); err != nil {
		return store.Release{}, err
	}
	if m.SBOM != nil {
		if err := atomicfile.Rename(st.sbom, s.sbomPath(m.SBOM.SHA256)); err != nil {
			return store.Release{}, fmt.Errorf("store sbom: %w", err)
		}
	}
	rel := store.Release{
		ID: uuid.NewString(), Product: m.Product, Version: m.Version,
		TargetPath: m.TargetPath(), Manifest: *m, CreatedAt: s.opts.Now(),
	}
	if err := s.opts.Store.CreateRelease(ctx, rel); err != nil {
		// The repository already lists the release; Sync records it at
		// the next start.
		return store.Release{}, fmt.Errorf("record published release: %w", err)
	}
	s.opts.Log.Info("release published", "release", rel.ID, "product", m.Product, "version", m.Version, "target", rel.TargetPath)
	if m.SBOM != nil && s.opts.SBOMs != nil {
		// The release is published; an SBOM problem from here on is
		// recorded with the release's SBOM, not returned.
		if err := s.ingestSBOM(ctx, rel); err != nil {
			s.opts.Log.Error("release sbom not ingested", "release", rel.ID, "err", err)
		}
	}
	return rel, nil
}

// PublishTargets publishes targets metadata that adds no image, such as
// one that sets a release's rollback flag or extends the expiry. Every
// target it lists must be stored already.
func (s *Service) PublishTargets(ctx context.Context, t *metadata.Metadata[metadata.TargetsType]) error {
	if err := s.opts.Repo.Publish(ctx, t, nil); err != nil {
		return err
	}
	return s.Sync(ctx)
}

func (s *Service) sbomPath(digest string) string {
	return filepath.Join(s.opts.SBOMDir, digest+".json")
}

// SBOM opens the SBOM a release shipped with.
func (s *Service) SBOM(r store.Release) (*os.File, error) {
	if r.Manifest.SBOM == nil {
		return nil, fmt.Errorf("release %s has no SBOM: %w", r.ID, problem.ErrNotFound)
	}
	return os.Open(s.sbomPath(r.Manifest.SBOM.SHA256))
}

func (s *Service) ingestSBOM(ctx context.Context, rel store.Release) error {
	f, err := s.SBOM(rel)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, rel.Manifest.SBOM.Length+1))
	if err != nil {
		return err
	}
	_, err = s.opts.SBOMs.IngestSBOM(ctx, rel, b)
	return err
}

// Sync records every release the repository lists but the catalog lacks,
// as after a crash between publishing and recording.
func (s *Service) Sync(ctx context.Context) error {
	for p, tf := range s.opts.Repo.Targets() {
		custom, err := firmware.ParseTargetCustom(tf.Custom)
		if err != nil {
			s.opts.Log.Warn("repository target without a valid manifest", "target", p, "err", err)
			continue
		}
		m := custom.Manifest
		if _, err := s.opts.Store.ReleaseByVersion(ctx, m.Product, m.Version); !errors.Is(err, problem.ErrNotFound) {
			if err != nil {
				return err
			}
			continue
		}
		rel := store.Release{ID: uuid.NewString(), Product: m.Product, Version: m.Version, TargetPath: p, Manifest: m, CreatedAt: s.opts.Now()}
		if err := s.opts.Store.CreateRelease(ctx, rel); err != nil {
			return err
		}
		s.opts.Log.Info("release recorded from repository", "release", rel.ID, "target", p)
	}
	return nil
}
