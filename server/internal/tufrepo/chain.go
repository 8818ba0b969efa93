package tufrepo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// chain is what both repositories share: the root chain, kept as
// metadata/N.root.json for every N, and the online snapshot and timestamp.
// Its methods ending in Locked expect the owning repository's mutex held.
type chain struct {
	dir             string // the metadata directory
	snapshotSigner  signature.Signer
	timestampSigner signature.Signer
	snapshotExpiry  time.Duration
	timestampExpiry time.Duration
	now             func() time.Time
	log             *slog.Logger

	root      *metadata.Metadata[metadata.RootType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]  // nil before the first publish
	timestamp *metadata.Metadata[metadata.TimestampType] // nil before the first publish
	// timestampRaw is timestamp.json as this process last read or wrote
	// it; when the file differs, another replica published since.
	timestampRaw []byte
}

// An ExclusiveFunc runs fn while no other server process sharing the
// repository directory writes to the same repository (see
// store.Store.Exclusive); name tells the repositories apart.
type ExclusiveFunc func(ctx context.Context, name string, fn func() error) error

// alone is the ExclusiveFunc of a repository only one process writes.
func alone(_ context.Context, _ string, fn func() error) error { return fn() }

// defaultTiming fills in the default expiries and clock of either
// repository's options.
func defaultTiming(timestampExpiry, snapshotExpiry *time.Duration, now *func() time.Time) {
	if *timestampExpiry <= 0 {
		*timestampExpiry = 24 * time.Hour
	}
	if *snapshotExpiry <= 0 {
		*snapshotExpiry = 7 * 24 * time.Hour
	}
	if *now == nil {
		*now = time.Now
	}
}

// loadLocked reads the newest root, snapshot and timestamp from disk.
func (c *chain) loadLocked() error {
	root, err := latestVersioned[metadata.RootType](c.dir, metadata.ROOT)
	if err != nil {
		return err
	}
	if root == nil {
		return ErrNotInitialized
	}
	c.root = root
	if c.snapshot, err = latestVersioned[metadata.SnapshotType](c.dir, metadata.SNAPSHOT); err != nil {
		return err
	}
	c.timestamp, c.timestampRaw = nil, nil
	if b, err := os.ReadFile(filepath.Join(c.dir, "timestamp.json")); err == nil {
		if c.timestamp, err = new(metadata.Metadata[metadata.TimestampType]).FromBytes(b); err != nil {
			return fmt.Errorf("tufrepo: timestamp.json: %w", err)
		}
		c.timestampRaw = b
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// staleLocked reports whether timestamp.json on disk differs from the one
// this process last read or wrote: another replica sharing the directory
// published since, and the state in memory must be loaded again before it
// is read or signed over. Every publish ends with a new timestamp, so an
// equal file means nothing was published.
func (c *chain) staleLocked() (bool, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "timestamp.json"))
	if errors.Is(err, os.ErrNotExist) {
		return c.timestampRaw != nil, nil
	}
	if err != nil {
		return false, fmt.Errorf("tufrepo: read timestamp.json: %w", err)
	}
	return !bytes.Equal(b, c.timestampRaw), nil
}

// staleForWriteLocked is staleLocked, and also true when another replica
// installed a newer root without publishing anything else (a rotation that
// kept the online keys), so no writer installs a second root of the same
// version.
func (c *chain) staleForWriteLocked() (bool, error) {
	if stale, err := c.staleLocked(); err != nil || stale {
		return stale, err
	}
	v, err := latestVersion(c.dir, metadata.ROOT)
	if err != nil {
		return false, err
	}
	return c.root != nil && v != c.root.Signed.Version, nil
}

// initLocked installs a first root into an empty metadata directory.
func (c *chain) initLocked(rootJSON []byte, online map[string]signature.Signer) error {
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(rootJSON)
	if err != nil {
		return problem.Invalid(fmt.Sprintf("root metadata does not parse: %v", err))
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		return problem.Invalid(fmt.Sprintf("root metadata is not signed by its own root keys to threshold: %v", err))
	}
	if err := checkOnlineKeys(root, online); err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	name := filepath.Join(c.dir, fmt.Sprintf("%d.root.json", root.Signed.Version))
	if err := atomicfile.WriteFile(name, rootJSON, 0o644); err != nil {
		return err
	}
	c.root = root
	return nil
}

// parseNextRootLocked checks a proposed next root as a device will: the
// next version, signed to threshold by the current root's root keys and
// by its own, not expired, and listing this server's online keys.
func (c *chain) parseNextRootLocked(rootJSON []byte, online map[string]signature.Signer) (*metadata.Metadata[metadata.RootType], error) {
	if len(rootJSON) > MaxMetadataBytes {
		return nil, problem.Invalid(fmt.Sprintf("root metadata is %d bytes, more than the %d allowed", len(rootJSON), MaxMetadataBytes))
	}
	next, err := new(metadata.Metadata[metadata.RootType]).FromBytes(rootJSON)
	if err != nil {
		return nil, problem.Invalid(fmt.Sprintf("root metadata does not parse: %v", err))
	}
	if want := c.root.Signed.Version + 1; next.Signed.Version != want {
		return nil, fmt.Errorf("root metadata is version %d but the repository is at version %d and takes %d next: %w",
			next.Signed.Version, c.root.Signed.Version, want, problem.ErrConflict)
	}
	var problems []string
	if err := c.root.VerifyDelegate(metadata.ROOT, next); err != nil {
		problems = append(problems, fmt.Sprintf("root v%d is not signed to threshold by the root keys of v%d (TUF requires the old keys to vouch for the new root): %v",
			next.Signed.Version, c.root.Signed.Version, err))
	}
	if err := next.VerifyDelegate(metadata.ROOT, next); err != nil {
		problems = append(problems, fmt.Sprintf("root v%d is not signed to threshold by its own root keys: %v", next.Signed.Version, err))
	}
	if next.Signed.IsExpired(c.now()) {
		problems = append(problems, fmt.Sprintf("root v%d expired at %s", next.Signed.Version, next.Signed.Expires.Format(time.RFC3339)))
	}
	if err := problem.Invalid(problems...); err != nil {
		return nil, err
	}
	if err := checkOnlineKeys(next, online); err != nil {
		return nil, fmt.Errorf("%w: %w", err, problem.ErrConflict)
	}
	return next, nil
}

// writeRootLocked stores an accepted next root and makes it current.
func (c *chain) writeRootLocked(next *metadata.Metadata[metadata.RootType]) error {
	b, err := next.ToBytes(true)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(c.dir, fmt.Sprintf("%d.root.json", next.Signed.Version)), b, 0o644); err != nil {
		return err
	}
	c.root = next
	return nil
}

// verifiesLocked reports whether the snapshot and timestamp on disk are
// signed with keys the current root trusts; after a rotation of online
// keys they must be signed again.
func (c *chain) verifiesLocked() bool {
	if c.snapshot == nil || c.timestamp == nil {
		return false
	}
	return c.root.VerifyDelegate(metadata.SNAPSHOT, c.snapshot) == nil && c.root.VerifyDelegate(metadata.TIMESTAMP, c.timestamp) == nil
}

// ErrKeyNotInRoot is wrapped when a root does not list the key this server
// signs a role with.
var ErrKeyNotInRoot = errors.New("tufrepo: the root does not list this server's key")

// checkOnlineKeys makes sure root lists the server's key for each role, so
// what it signs will verify on devices.
func checkOnlineKeys(root *metadata.Metadata[metadata.RootType], online map[string]signature.Signer) error {
	roles := make([]string, 0, len(online))
	for role := range online {
		roles = append(roles, role)
	}
	slices.Sort(roles)
	for _, role := range roles {
		id, err := keyID(online[role])
		if err != nil {
			return err
		}
		r, ok := root.Signed.Roles[role]
		if !ok || !slices.Contains(r.KeyIDs, id) {
			return fmt.Errorf("%w: root v%d does not list the %s key %s this server is configured with; configure the key the root names (after a rotation: the new key file, then restart)",
				ErrKeyNotInRoot, root.Signed.Version, role, id[:12])
		}
	}
	return nil
}

func keyID(s signature.Signer) (string, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return "", err
	}
	key, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		return "", err
	}
	return key.ID()
}

// signSnapshotLocked writes a new snapshot listing meta, then a new
// timestamp for it.
func (c *chain) signSnapshotLocked(meta map[string]*metadata.MetaFiles) error {
	snap := metadata.Snapshot(c.now().Add(c.snapshotExpiry).UTC())
	if c.snapshot != nil {
		snap.Signed.Version = c.snapshot.Signed.Version + 1
	}
	snap.Signed.Meta = meta
	if _, err := snap.Sign(c.snapshotSigner); err != nil {
		return fmt.Errorf("sign snapshot: %w", err)
	}
	sb, err := snap.ToBytes(false)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(c.dir, fmt.Sprintf("%d.snapshot.json", snap.Signed.Version)), sb, 0o644); err != nil {
		return err
	}
	c.snapshot = snap
	return c.signTimestampLocked(sb)
}

// signTimestampLocked writes a new timestamp for the current snapshot,
// whose bytes are sb. The timestamp carries the time it was signed, which
// devices keep as a floor for their clock (see protocol.SignedAtField).
func (c *chain) signTimestampLocked(sb []byte) error {
	now := c.now()
	ts := metadata.Timestamp(now.Add(c.timestampExpiry).UTC())
	if c.timestamp != nil {
		ts.Signed.Version = c.timestamp.Signed.Version + 1
	}
	ts.Signed.UnrecognizedFields = map[string]any{protocol.SignedAtField: now.UTC().Format(time.RFC3339)}
	ts.Signed.Meta[metadata.SNAPSHOT+".json"] = metaFile(c.snapshot.Signed.Version, sb)
	if _, err := ts.Sign(c.timestampSigner); err != nil {
		return fmt.Errorf("sign timestamp: %w", err)
	}
	b, err := ts.ToBytes(false)
	if err != nil {
		return err
	}
	// The timestamp is the commit point: devices see the new state only now.
	if err := atomicfile.WriteFile(filepath.Join(c.dir, "timestamp.json"), b, 0o644); err != nil {
		return err
	}
	c.timestamp, c.timestampRaw = ts, b
	return nil
}

// refreshLocked re-signs the snapshot (listing meta()) or just the
// timestamp when less than half of their validity is left, so devices
// never see them expire while the server runs.
func (c *chain) refreshLocked(meta func() map[string]*metadata.MetaFiles) error {
	if c.snapshot == nil || c.timestamp == nil {
		return nil
	}
	now := c.now()
	if c.snapshot.Signed.Expires.Sub(now) < c.snapshotExpiry/2 {
		c.log.Info("snapshot re-signed", "expired", c.snapshot.Signed.Expires)
		return c.signSnapshotLocked(meta())
	}
	if c.timestamp.Signed.Expires.Sub(now) < c.timestampExpiry/2 {
		sb, err := c.snapshot.ToBytes(false)
		if err != nil {
			return err
		}
		return c.signTimestampLocked(sb)
	}
	return nil
}

// metaFile describes a metadata file with its version, length and hash.
func metaFile(version int64, b []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(b)
	mf := metadata.MetaFile(version)
	mf.Length = int64(len(b))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// latestVersioned loads the highest N.role.json in dir, or nil if none.
func latestVersioned[T metadata.Roles](dir, role string) (*metadata.Metadata[T], error) {
	best, err := latestVersion(dir, role)
	if err != nil || best == 0 {
		return nil, err
	}
	name := filepath.Join(dir, fmt.Sprintf("%d.%s.json", best, role))
	m, err := new(metadata.Metadata[T]).FromFile(name)
	if err != nil {
		return nil, fmt.Errorf("tufrepo: load %s: %w", name, err)
	}
	return m, nil
}

// latestVersion returns the highest N of N.role.json in dir, or 0.
func latestVersion(dir, role string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
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
	return best, nil
}
