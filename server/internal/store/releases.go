package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// A Release is a published, signed firmware release.
type Release struct {
	ID         string            `json:"id"`
	Product    string            `json:"product"`
	Version    string            `json:"version"`
	TargetPath string            `json:"target_path"`
	Manifest   firmware.Manifest `json:"manifest"`
	CreatedAt  time.Time         `json:"created_at"`
}

// CreateRelease records a release. A second release of the same product and
// version is a conflict.
func (s *Store) CreateRelease(ctx context.Context, r Release) error {
	_, err := s.direct().exec(ctx, `INSERT INTO releases (id, product, version, target_path, manifest, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
		r.ID, r.Product, r.Version, r.TargetPath, string(r.Manifest.Marshal()), formatTime(r.CreatedAt))
	if isUniqueViolation(err) {
		return fmt.Errorf("release %s %s already exists: %w", r.Product, r.Version, problem.ErrConflict)
	}
	return err
}

const releaseColumns = `r.id, r.product, r.version, r.target_path, r.manifest, r.created_at`

func scanRelease(sc interface{ Scan(...any) error }) (Release, error) {
	var r Release
	var manifest, created string
	if err := sc.Scan(&r.ID, &r.Product, &r.Version, &r.TargetPath, &manifest, &created); err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(manifest), &r.Manifest); err != nil {
		return r, fmt.Errorf("release %s: stored manifest: %w", r.ID, err)
	}
	r.CreatedAt = parseTime(created)
	return r, nil
}

// Release returns the release with the given ID.
func (s *Store) Release(ctx context.Context, id string) (Release, error) {
	r, err := scanRelease(s.direct().queryRow(ctx, `SELECT `+releaseColumns+` FROM releases r WHERE r.id = ?`, id))
	return r, notFound(err, fmt.Sprintf("release %q", id))
}

// ReleaseByVersion returns the release of a product at a version.
func (s *Store) ReleaseByVersion(ctx context.Context, product, version string) (Release, error) {
	r, err := scanRelease(s.direct().queryRow(ctx, `SELECT `+releaseColumns+` FROM releases r WHERE r.product = ? AND r.version = ?`, product, version))
	return r, notFound(err, fmt.Sprintf("release %s %s", product, version))
}

// Releases returns every release, newest first.
func (s *Store) Releases(ctx context.Context) ([]Release, error) {
	rows, err := s.direct().query(ctx, `SELECT `+releaseColumns+` FROM releases r ORDER BY r.created_at DESC, r.id`)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanRelease)
}
