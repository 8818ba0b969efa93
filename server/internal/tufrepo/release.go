// Package tufrepo is the fleet server's side of the two TUF repositories a
// device verifies (the Uptane split of an image repository and a director):
//
//   - the release repository (Repo) says which images exist. Its root and
//     targets metadata are signed offline by the manufacturer; the server
//     holds only its snapshot and timestamp keys. A compromised server can
//     therefore withhold or delay releases but never add one.
//   - the rollout repository (Rollout) says which device should run which
//     image. The server signs all of it with its online rollout key, except
//     the root, which the manufacturer's root keys sign offline. Each
//     device's assignment lives in one of 2^bits hash-binned delegated
//     roles (TUF succinct delegations), so a device downloads its own bin,
//     not the fleet's.
//
// Both are directories of static files, served as they are:
//
//	metadata/N.root.json       root, signed offline (kept for every N)
//	metadata/N.targets.json    targets
//	metadata/N.bins-XX.json    rollout repository only: one hash bin
//	metadata/N.snapshot.json   snapshot, signed here with an online key
//	metadata/timestamp.json    timestamp, signed here with an online key
//	targets/<dir>/<sha256>.<name>  release images (consistent snapshots)
//
// Every file is written with write-fsync-rename, and the timestamp last: a
// device sees nothing of a publish until timestamp.json is renamed into
// place, so a crash mid-publish leaves the previous repository state.
//
// Repo and Rollout are safe for concurrent use, and several server
// processes (replicas) may share one directory: every write runs under
// the Exclusive lock the options name and starts from the state on disk,
// so no replica signs a version over another's newer one and the versions
// devices see only increase; every read loads the state again when
// timestamp.json changed.
package tufrepo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/signing"
)

// Limits on metadata the repository accepts.
const (
	MaxMetadataBytes = 4 << 20 // 4 MiB
)

// ErrNotInitialized is returned by Open when the directory holds no root
// and none was given.
var ErrNotInitialized = errors.New("tufrepo: repository has no root metadata")

// Options configures a Repo.
type Options struct {
	Dir             string           // repository directory; required
	SnapshotSigner  signature.Signer // online snapshot key; required
	TimestampSigner signature.Signer // online timestamp key; required
	// TimestampExpiry is how long a timestamp is valid; default 24h. A
	// device refuses a repository whose timestamp expired, so a frozen
	// server is noticed within this time.
	TimestampExpiry time.Duration
	SnapshotExpiry  time.Duration    // default 7 days
	Now             func() time.Time // nil means time.Now
	Log             *slog.Logger     // required
	// Exclusive serialises writes with the other server processes that
	// share Dir; nil: this process is the only one.
	Exclusive ExclusiveFunc
}

// releaseLock names the release repository's Exclusive lock.
const releaseLock = "tufrepo.release"

// Repo is the release repository.
type Repo struct {
	opts Options

	mu      sync.Mutex
	chain   chain                                    // guarded by mu
	targets *metadata.Metadata[metadata.TargetsType] // guarded by mu; nil before the first release
}

func (o *Options) setDefaults() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("tufrepo: Dir is required"))
	}
	if o.SnapshotSigner == nil || o.TimestampSigner == nil {
		errs = append(errs, errors.New("tufrepo: snapshot and timestamp signers are required"))
	}
	if o.Log == nil {
		errs = append(errs, errors.New("tufrepo: Log is required"))
	}
	defaultTiming(&o.TimestampExpiry, &o.SnapshotExpiry, &o.Now)
	if o.Exclusive == nil {
		o.Exclusive = alone
	}
	return errors.Join(errs...)
}

// writeLocked runs fn under the cross-process lock, on the state on disk.
// r.mu must be held.
func (r *Repo) writeLocked(ctx context.Context, fn func() error) error {
	return r.opts.Exclusive(ctx, releaseLock, func() error {
		if err := r.reloadLocked(r.chain.staleForWriteLocked); err != nil {
			return err
		}
		return fn()
	})
}

// reloadLocked loads root, snapshot, timestamp and targets again when staleFn says
// another replica wrote since. r.mu must be held.
func (r *Repo) reloadLocked(staleFn func() (bool, error)) error {
	stale, err := staleFn()
	if err != nil || !stale {
		return err
	}
	if err := r.chain.loadLocked(); err != nil {
		return err
	}
	if r.targets, err = latestVersioned[metadata.TargetsType](r.metaDir(), metadata.TARGETS); err != nil {
		return err
	}
	r.opts.Log.Debug("release repository loaded again: another replica published")
	return nil
}

// freshLocked is reloadLocked for reads: when the disk cannot be read, the
// state in memory is answered. r.mu must be held.
func (r *Repo) freshLocked() {
	if err := r.reloadLocked(r.chain.staleLocked); err != nil {
		r.opts.Log.Warn("release repository not loaded again; answering from memory", "err", err)
	}
}

func (r *Repo) online() map[string]signature.Signer {
	return map[string]signature.Signer{metadata.SNAPSHOT: r.opts.SnapshotSigner, metadata.TIMESTAMP: r.opts.TimestampSigner}
}

func (r *Repo) metaDir() string    { return filepath.Join(r.opts.Dir, "metadata") }
func (r *Repo) targetsDir() string { return filepath.Join(r.opts.Dir, "targets") }

// Open loads the release repository in opts.Dir. rootJSON is the root the
// server is configured with, or nil: an empty directory is initialised
// with it (it must be signed by its own root keys and list the server's
// online keys); a repository at the version before it takes it as its next
// root, which is how a rotation of the online keys is installed (new key
// files, the new root, a restart); an older or equal root is ignored.
func Open(opts Options, rootJSON []byte) (*Repo, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	r := &Repo{opts: opts}
	r.chain = chain{
		dir: r.metaDir(), snapshotSigner: opts.SnapshotSigner, timestampSigner: opts.TimestampSigner,
		snapshotExpiry: opts.SnapshotExpiry, timestampExpiry: opts.TimestampExpiry, now: opts.Now, log: opts.Log,
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Replicas starting together must not both install a root or re-sign.
	err := opts.Exclusive(context.Background(), releaseLock, func() error { return r.openLocked(rootJSON) })
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Repo) openLocked(rootJSON []byte) error {
	err := r.chain.loadLocked()
	if errors.Is(err, ErrNotInitialized) && rootJSON != nil {
		if err := os.MkdirAll(r.targetsDir(), 0o755); err != nil {
			return err
		}
		err = r.chain.initLocked(rootJSON, r.online())
	}
	if err != nil {
		return err
	}
	if r.targets, err = latestVersioned[metadata.TargetsType](r.metaDir(), metadata.TARGETS); err != nil {
		return err
	}
	if rootJSON != nil {
		if err := r.adoptConfiguredRootLocked(rootJSON); err != nil {
			return fmt.Errorf("configured root: %w", err)
		}
	}
	if err := checkOnlineKeys(r.chain.root, r.online()); err != nil {
		return err
	}
	if r.targets != nil && !r.chain.verifiesLocked() {
		// The online keys were rotated: sign with the new ones at once.
		r.opts.Log.Info("snapshot and timestamp re-signed with the current online keys", "root_version", r.chain.root.Signed.Version)
		return r.signSnapshotLocked()
	}
	return nil
}

// adoptConfiguredRootLocked takes the configured root when it is the next
// version of the stored one.
func (r *Repo) adoptConfiguredRootLocked(rootJSON []byte) error {
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(rootJSON)
	if err != nil {
		return problem.Invalid(fmt.Sprintf("configured root does not parse: %v", err))
	}
	if root.Signed.Version <= r.chain.root.Signed.Version {
		return nil
	}
	return r.updateRootLocked(rootJSON, nil)
}

// UpdateRoot installs the next root of the release repository, e.g. after
// a rotation of root or release keys. When the new root changes the release
// keys, targetsJSON must be the current targets signed again by the new
// keys (the next targets version); otherwise it may be nil. Nothing changes
// unless everything verifies.
func (r *Repo) UpdateRoot(ctx context.Context, rootJSON, targetsJSON []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeLocked(ctx, func() error { return r.updateRootLocked(rootJSON, targetsJSON) })
}

func (r *Repo) updateRootLocked(rootJSON, targetsJSON []byte) error {
	next, err := r.chain.parseNextRootLocked(rootJSON, r.online())
	if err != nil {
		return err
	}
	var t *metadata.Metadata[metadata.TargetsType]
	if targetsJSON != nil {
		if t, err = r.parseTargetsLocked(targetsJSON, next); err != nil {
			return err
		}
		if _, err := r.movesLocked(t, nil); err != nil {
			return err
		}
	} else if r.targets != nil {
		if err := next.VerifyDelegate(metadata.TARGETS, r.targets); err != nil {
			return fmt.Errorf("root v%d does not trust the release keys that signed the current targets v%d; sign the current targets again with the new release keys (aftercare release resign) and upload them with the root: %w",
				next.Signed.Version, r.targets.Signed.Version, problem.ErrConflict)
		}
	}
	if err := r.chain.writeRootLocked(next); err != nil {
		return err
	}
	r.opts.Log.Info("release repository root updated", "root_version", next.Signed.Version)
	if t != nil {
		return r.publishLocked(t, nil)
	}
	if r.targets != nil {
		return r.signSnapshotLocked()
	}
	return nil
}

// CurrentTargets returns the current targets metadata, the base a release
// engineer signs the next version on, or nil before the first release.
func (r *Repo) CurrentTargets() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	if r.targets == nil {
		return nil, nil
	}
	return r.targets.ToBytes(true)
}

// Root returns the newest root metadata.
func (r *Repo) Root() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	return r.chain.root.ToBytes(true)
}

// Target returns the current signed entry for a target path.
func (r *Repo) Target(targetPath string) (*metadata.TargetFiles, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	if r.targets == nil {
		return nil, false
	}
	tf, ok := r.targets.Signed.Targets[targetPath]
	return tf, ok
}

// Targets returns every current signed target entry by path.
func (r *Repo) Targets() map[string]*metadata.TargetFiles {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	out := map[string]*metadata.TargetFiles{}
	if r.targets != nil {
		for p, tf := range r.targets.Signed.Targets {
			out[p] = tf
		}
	}
	return out
}

// ParseTargets parses and checks a proposed targets version against the
// current root and targets without changing anything: signed by the root's
// release (targets) keys to threshold, the next version (any version for
// the first), not expired.
func (r *Repo) ParseTargets(b []byte) (*metadata.Metadata[metadata.TargetsType], error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	return r.parseTargetsLocked(b, r.chain.root)
}

func (r *Repo) parseTargetsLocked(b []byte, root *metadata.Metadata[metadata.RootType]) (*metadata.Metadata[metadata.TargetsType], error) {
	if len(b) > MaxMetadataBytes {
		return nil, problem.Invalid(fmt.Sprintf("targets metadata is %d bytes, more than the %d allowed", len(b), MaxMetadataBytes))
	}
	t, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(b)
	if err != nil {
		return nil, problem.Invalid(fmt.Sprintf("targets metadata does not parse: %v", err))
	}
	if err := root.VerifyDelegate(metadata.TARGETS, t); err != nil {
		st := signing.Status(root, metadata.TARGETS, t)
		return nil, problem.Invalid(fmt.Sprintf("targets metadata is not signed to threshold by the release keys in root v%d (%s); collect the missing approvals with `aftercare release approve`, or it was altered after signing",
			root.Signed.Version, st))
	}
	// The first published version may be any: the release engineer signs
	// it on the targets metadata made at key creation.
	if r.targets != nil && t.Signed.Version != r.targets.Signed.Version+1 {
		want := r.targets.Signed.Version + 1
		return nil, fmt.Errorf("targets metadata is version %d but the repository expects %d; sign the release on the current targets metadata: %w",
			t.Signed.Version, want, problem.ErrConflict)
	}
	if t.Signed.IsExpired(r.opts.Now()) {
		return nil, problem.Invalid(fmt.Sprintf("targets metadata expired at %s", t.Signed.Expires.Format(time.RFC3339)))
	}
	return t, nil
}

// A Blob is a target file waiting to be published.
type Blob struct {
	Path string // a file on the same file system as the repository, synced
}

// Publish makes t the current targets metadata. blobs maps target paths
// new in t to their files, which Publish moves into the repository; every
// other target t lists must already be stored. It checks every length and
// hash before it writes anything.
func (r *Repo) Publish(ctx context.Context, t *metadata.Metadata[metadata.TargetsType], blobs map[string]Blob) error {
	raw, err := t.ToBytes(true)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeLocked(ctx, func() error {
		// ParseTargets checked signature, version and expiry; check again
		// under the lock so a concurrent publish, of this replica or
		// another, cannot slip in between.
		if _, err := r.parseTargetsLocked(raw, r.chain.root); err != nil {
			return err
		}
		return r.publishLocked(t, blobs)
	})
}

// movesLocked verifies the file of every target t lists and returns the
// moves of new files into the repository.
func (r *Repo) movesLocked(t *metadata.Metadata[metadata.TargetsType], blobs map[string]Blob) (map[string]string, error) {
	moves := map[string]string{}
	for p, tf := range t.Signed.Targets {
		dst, err := r.blobPathLocked(p, tf)
		if err != nil {
			return nil, err
		}
		src := dst
		if b, ok := blobs[p]; ok {
			src = b.Path
		}
		if err := verifyFile(src, tf); err != nil {
			if _, ok := blobs[p]; !ok {
				return nil, problem.Invalid(fmt.Sprintf("targets metadata lists %s, which was neither uploaded nor published before: %v", p, err))
			}
			return nil, problem.Invalid(fmt.Sprintf("uploaded file for %s does not match its signed entry: %v", p, err))
		}
		if src != dst {
			moves[src] = dst
		}
	}
	return moves, nil
}

func (r *Repo) publishLocked(t *metadata.Metadata[metadata.TargetsType], blobs map[string]Blob) error {
	moves, err := r.movesLocked(t, blobs)
	if err != nil {
		return err
	}
	for src, dst := range moves {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := atomicfile.Rename(src, dst); err != nil {
			return fmt.Errorf("store target: %w", err)
		}
	}
	raw, err := t.ToBytes(true)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(r.metaDir(), fmt.Sprintf("%d.targets.json", t.Signed.Version)), raw, 0o644); err != nil {
		return err
	}
	r.targets = t
	if err := r.signSnapshotLocked(); err != nil {
		return err
	}
	r.opts.Log.Info("targets published", "version", t.Signed.Version, "targets", len(t.Signed.Targets))
	return nil
}

// snapshotMetaLocked lists the current targets with version, length and
// hash, so a device detects a targets file mixed in from another state.
func (r *Repo) snapshotMetaLocked() map[string]*metadata.MetaFiles {
	tb, err := r.targets.ToBytes(true)
	if err != nil {
		// The targets parsed from JSON; encoding them cannot fail.
		panic("tufrepo: encode targets: " + err.Error())
	}
	return map[string]*metadata.MetaFiles{metadata.TARGETS + ".json": metaFile(r.targets.Signed.Version, tb)}
}

// signSnapshotLocked writes a new snapshot for the current targets, then a
// new timestamp for it.
func (r *Repo) signSnapshotLocked() error {
	return r.chain.signSnapshotLocked(r.snapshotMetaLocked())
}

// Refresh re-signs the snapshot and timestamp when less than half of their
// validity is left, so devices never see them expire while the server runs.
// It does nothing before the first release.
func (r *Repo) Refresh(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeLocked(ctx, func() error {
		if r.targets == nil {
			return nil
		}
		return r.chain.refreshLocked(r.snapshotMetaLocked)
	})
}

// BlobPath returns where the file of a listed target is stored.
func (r *Repo) BlobPath(targetPath string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	if r.targets == nil {
		return "", fmt.Errorf("target %s: %w", targetPath, problem.ErrNotFound)
	}
	tf, ok := r.targets.Signed.Targets[targetPath]
	if !ok {
		return "", fmt.Errorf("target %s: %w", targetPath, problem.ErrNotFound)
	}
	return r.blobPathLocked(targetPath, tf)
}

// blobPathLocked names a target's file with its sha256, as TUF consistent
// snapshots require: targets/<dir>/<sha256>.<name>.
func (r *Repo) blobPathLocked(targetPath string, tf *metadata.TargetFiles) (string, error) {
	clean := path.Clean(targetPath)
	if clean != targetPath || strings.HasPrefix(clean, "/") || strings.HasPrefix(clean, "..") || strings.Contains(clean, "\\") {
		return "", problem.Invalid(fmt.Sprintf("target path %q is not a clean relative path", targetPath))
	}
	digest, ok := tf.Hashes["sha256"]
	if !ok {
		return "", problem.Invalid(fmt.Sprintf("target %s has no sha256 hash", targetPath))
	}
	dir, name := path.Split(clean)
	return filepath.Join(r.targetsDir(), filepath.FromSlash(dir), hex.EncodeToString(digest)+"."+name), nil
}

func verifyFile(p string, tf *metadata.TargetFiles) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, tf.Length+1))
	if err != nil {
		return err
	}
	if n != tf.Length {
		return fmt.Errorf("length %d, signed %d", n, tf.Length)
	}
	if !bytes.Equal(h.Sum(nil), tf.Hashes["sha256"]) {
		return fmt.Errorf("sha256 %x differs from the signed %x", h.Sum(nil), []byte(tf.Hashes["sha256"]))
	}
	return nil
}
