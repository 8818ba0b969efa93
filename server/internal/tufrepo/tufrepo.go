// Package tufrepo is the fleet server's side of the TUF release repository.
//
// The repository is a directory of static files, served as they are:
//
//	metadata/N.root.json       root, signed offline (kept for every N)
//	metadata/N.targets.json    targets, signed offline by release engineering
//	metadata/N.snapshot.json   snapshot, signed here with the online key
//	metadata/timestamp.json    timestamp, signed here with the online key
//	targets/<dir>/<sha256>.<name>  release images (consistent snapshots)
//
// The server never signs root or targets. It accepts a new targets version
// only when the root's targets keys signed it to threshold, then writes the
// images it lists, a new snapshot and, last, a new timestamp: a device sees
// nothing of a publish until the timestamp is renamed into place, and every
// file is written with write-fsync-rename, so a crash mid-publish leaves the
// previous repository state intact.
//
// A Repo is safe for concurrent use.
package tufrepo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// Limits on metadata the repository accepts.
const (
	MaxMetadataBytes = 4 << 20 // 4 MiB
)

// ErrNotInitialized is returned by Open when the directory holds no root.
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
}

// Repo is the release repository.
type Repo struct {
	opts Options

	mu        sync.Mutex
	root      *metadata.Metadata[metadata.RootType]      // guarded by mu
	targets   *metadata.Metadata[metadata.TargetsType]   // guarded by mu; nil before the first release
	snapshot  *metadata.Metadata[metadata.SnapshotType]  // guarded by mu
	timestamp *metadata.Metadata[metadata.TimestampType] // guarded by mu
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
	if o.TimestampExpiry <= 0 {
		o.TimestampExpiry = 24 * time.Hour
	}
	if o.SnapshotExpiry <= 0 {
		o.SnapshotExpiry = 7 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return errors.Join(errs...)
}

func (r *Repo) metaDir() string    { return filepath.Join(r.opts.Dir, "metadata") }
func (r *Repo) targetsDir() string { return filepath.Join(r.opts.Dir, "targets") }

// Init installs a first root into an empty repository directory. The root
// must be signed by its own root keys to threshold and must list the
// server's snapshot and timestamp keys.
func Init(opts Options, rootJSON []byte) error {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(rootJSON)
	if err != nil {
		return problem.Invalid(fmt.Sprintf("root metadata does not parse: %v", err))
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		return problem.Invalid(fmt.Sprintf("root metadata is not signed by its own root keys to threshold: %v", err))
	}
	r := &Repo{opts: opts, root: root}
	if err := r.checkOnlineKeys(root); err != nil {
		return err
	}
	if err := os.MkdirAll(r.metaDir(), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(r.targetsDir(), 0o755); err != nil {
		return err
	}
	name := filepath.Join(r.metaDir(), fmt.Sprintf("%d.root.json", root.Signed.Version))
	if _, err := os.Stat(name); err == nil {
		return fmt.Errorf("tufrepo: %s already exists; the repository is initialised", name)
	}
	return atomicfile.WriteFile(name, rootJSON, 0o644)
}

// checkOnlineKeys makes sure the root lists this server's online keys, so
// what it signs will verify on devices.
func (r *Repo) checkOnlineKeys(root *metadata.Metadata[metadata.RootType]) error {
	for role, s := range map[string]signature.Signer{metadata.SNAPSHOT: r.opts.SnapshotSigner, metadata.TIMESTAMP: r.opts.TimestampSigner} {
		pub, err := s.PublicKey()
		if err != nil {
			return err
		}
		key, err := metadata.KeyFromPublicKey(pub)
		if err != nil {
			return err
		}
		id, err := key.ID()
		if err != nil {
			return err
		}
		if !containsString(root.Signed.Roles[role].KeyIDs, id) {
			return fmt.Errorf("tufrepo: the root does not list this server's %s key %s; configure the matching key file", role, id[:12])
		}
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Open loads the repository in opts.Dir, which Init has prepared.
func Open(opts Options) (*Repo, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	r := &Repo{opts: opts}
	root, err := latestVersioned[metadata.RootType](r.metaDir(), "root")
	if err != nil {
		return nil, err
	}
	if root == nil {
		return nil, ErrNotInitialized
	}
	r.root = root
	if err := r.checkOnlineKeys(root); err != nil {
		return nil, err
	}
	if r.targets, err = latestVersioned[metadata.TargetsType](r.metaDir(), "targets"); err != nil {
		return nil, err
	}
	if r.snapshot, err = latestVersioned[metadata.SnapshotType](r.metaDir(), "snapshot"); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(r.metaDir(), "timestamp.json")); err == nil {
		if r.timestamp, err = new(metadata.Metadata[metadata.TimestampType]).FromBytes(b); err != nil {
			return nil, fmt.Errorf("tufrepo: timestamp.json: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return r, nil
}

// latestVersioned loads the highest N.role.json in dir, or nil if none.
func latestVersioned[T metadata.Roles](dir, role string) (*metadata.Metadata[T], error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	best := int64(0)
	for _, e := range entries {
		v, ok := strings.CutSuffix(e.Name(), "."+role+".json")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > best {
			best = n
		}
	}
	if best == 0 {
		return nil, nil
	}
	name := filepath.Join(dir, fmt.Sprintf("%d.%s.json", best, role))
	m, err := new(metadata.Metadata[T]).FromFile(name)
	if err != nil {
		return nil, fmt.Errorf("tufrepo: load %s: %w", name, err)
	}
	return m, nil
}

// CurrentTargets returns the current targets metadata, the base a release
// engineer signs the next version on, or nil before the first release.
func (r *Repo) CurrentTargets() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.targets == nil {
		return nil, nil
	}
	return r.targets.ToBytes(true)
}

// Root returns the newest root metadata.
func (r *Repo) Root() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.root.ToBytes(true)
}

// Target returns the current signed entry for a target path.
func (r *Repo) Target(targetPath string) (*metadata.TargetFiles, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
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
// targets keys to threshold, the next version (any version for the first),
// not expired.
func (r *Repo) ParseTargets(b []byte) (*metadata.Metadata[metadata.TargetsType], error) {
	if len(b) > MaxMetadataBytes {
		return nil, problem.Invalid(fmt.Sprintf("targets metadata is %d bytes, more than the %d allowed", len(b), MaxMetadataBytes))
	}
	t, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(b)
	if err != nil {
		return nil, problem.Invalid(fmt.Sprintf("targets metadata does not parse: %v", err))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.root.VerifyDelegate(metadata.TARGETS, t); err != nil {
		return nil, problem.Invalid(fmt.Sprintf("targets metadata is not signed to threshold by the release keys in root v%d; it was altered or signed with a key the root does not trust: %v",
			r.root.Signed.Version, err))
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
func (r *Repo) Publish(t *metadata.Metadata[metadata.TargetsType], blobs map[string]Blob) error {
	raw, err := t.ToBytes(true)
	if err != nil {
		return err
	}
	// ParseTargets checks signature, version and expiry under the lock;
	// check again so a concurrent publish cannot slip in between.
	if _, err := r.ParseTargets(raw); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.targets != nil && t.Signed.Version != r.targets.Signed.Version+1 {
		return fmt.Errorf("targets version %d was published concurrently: %w", t.Signed.Version, problem.ErrConflict)
	}
	moves := map[string]string{}
	for p, tf := range t.Signed.Targets {
		dst, err := r.blobPathLocked(p, tf)
		if err != nil {
			return err
		}
		src := dst
		if b, ok := blobs[p]; ok {
			src = b.Path
		}
		if err := verifyFile(src, tf); err != nil {
			if _, ok := blobs[p]; !ok {
				return problem.Invalid(fmt.Sprintf("targets metadata lists %s, which was neither uploaded nor published before: %v", p, err))
			}
			return problem.Invalid(fmt.Sprintf("uploaded file for %s does not match its signed entry: %v", p, err))
		}
		if src != dst {
			moves[src] = dst
		}
	}
	for src, dst := range moves {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := atomicfile.Rename(src, dst); err != nil {
			return fmt.Errorf("store target: %w", err)
		}
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

// signSnapshotLocked writes a new snapshot for the current targets, then a
// new timestamp for it. r.mu must be held.
func (r *Repo) signSnapshotLocked() error {
	tb, err := r.targets.ToBytes(true)
	if err != nil {
		return err
	}
	snap := metadata.Snapshot(r.opts.Now().Add(r.opts.SnapshotExpiry).UTC())
	if r.snapshot != nil {
		snap.Signed.Version = r.snapshot.Signed.Version + 1
	}
	snap.Signed.Meta["targets.json"] = metaFile(r.targets.Signed.Version, tb)
	if _, err := snap.Sign(r.opts.SnapshotSigner); err != nil {
		return fmt.Errorf("sign snapshot: %w", err)
	}
	sb, err := snap.ToBytes(true)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(r.metaDir(), fmt.Sprintf("%d.snapshot.json", snap.Signed.Version)), sb, 0o644); err != nil {
		return err
	}
	r.snapshot = snap
	return r.signTimestampLocked(sb)
}

// signTimestampLocked writes a new timestamp for the current snapshot,
// whose bytes are sb. r.mu must be held.
func (r *Repo) signTimestampLocked(sb []byte) error {
	ts := metadata.Timestamp(r.opts.Now().Add(r.opts.TimestampExpiry).UTC())
	if r.timestamp != nil {
		ts.Signed.Version = r.timestamp.Signed.Version + 1
	}
	ts.Signed.Meta["snapshot.json"] = metaFile(r.snapshot.Signed.Version, sb)
	if _, err := ts.Sign(r.opts.TimestampSigner); err != nil {
		return fmt.Errorf("sign timestamp: %w", err)
	}
	b, err := ts.ToBytes(true)
	if err != nil {
		return err
	}
	// The timestamp is the commit point: devices see the new state only now.
	if err := atomicfile.WriteFile(filepath.Join(r.metaDir(), "timestamp.json"), b, 0o644); err != nil {
		return err
	}
	r.timestamp = ts
	return nil
}

func metaFile(version int64, b []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(b)
	mf := metadata.MetaFile(version)
	mf.Length = int64(len(b))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// Refresh re-signs the snapshot and timestamp when less than half of their
// validity is left, so devices never see them expire while the server runs.
// It does nothing before the first release.
func (r *Repo) Refresh() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.targets == nil || r.snapshot == nil || r.timestamp == nil {
		return nil
	}
	now := r.opts.Now()
	if r.snapshot.Signed.Expires.Sub(now) < r.opts.SnapshotExpiry/2 {
		r.opts.Log.Info("snapshot re-signed", "expired", r.snapshot.Signed.Expires)
		return r.signSnapshotLocked()
	}
	if r.timestamp.Signed.Expires.Sub(now) < r.opts.TimestampExpiry/2 {
		sb, err := r.snapshot.ToBytes(true)
		if err != nil {
			return err
		}
		return r.signTimestampLocked(sb)
	}
	return nil
}

// BlobPath returns where the file of a listed target is stored.
func (r *Repo) BlobPath(targetPath string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
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
