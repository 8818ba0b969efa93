package tufrepo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// BinPrefix names the rollout repository's hash bins: bins-00 ... bins-ff
// with 8 bits.
const BinPrefix = "bins"

// MaxBinBits bounds the number of hash bins at 2^16.
const MaxBinBits = 16

// rolloutTargetsExpiry is how long the rollout repository's targets and
// bins are valid; Refresh re-signs them at half of it.
const rolloutTargetsExpiry = 30 * 24 * time.Hour

// An Assignment says which release a device should run.
type Assignment struct {
	DeviceID   string
	RolloutID  string
	TargetPath string // release repository target path
	// Windows are the only times the device may install; nil: any time.
	Windows []protocol.Window
}

// An AssignmentSource reads the assignments table, the single record of
// which device should run which release.
type AssignmentSource interface {
	// AssignedDevices returns the IDs of every device with an assignment.
	AssignedDevices(ctx context.Context) ([]string, error)
	// Assignments returns the assignments of the given devices; devices
	// without one are left out.
	Assignments(ctx context.Context, deviceIDs []string) ([]Assignment, error)
}

// RolloutOptions configures a Rollout.
type RolloutOptions struct {
	Dir string // repository directory; required
	// Signer is the server's online rollout key; it signs targets, bins,
	// snapshot and timestamp. Required.
	Signer  signature.Signer
	Release *Repo            // where assignments' targets are signed; required
	Source  AssignmentSource // required
	// BinBits sets 2^BinBits hash bins; 0 puts every assignment into the
	// top-level targets (one flat file, for tiny fleets and comparison).
	// It is fixed when the repository is first published: TUF clients
	// refuse a snapshot that drops a role they have seen.
	BinBits         int
	TimestampExpiry time.Duration    // default 24h
	SnapshotExpiry  time.Duration    // default 7 days
	Now             func() time.Time // nil means time.Now
	Log             *slog.Logger     // required
	// Exclusive serialises writes with the other server processes that
	// share Dir; nil: this process is the only one.
	Exclusive ExclusiveFunc
}

// rolloutLock names the rollout repository's Exclusive lock.
const rolloutLock = "tufrepo.rollout"

// Rollout is the rollout repository. It implements the rollout engine's
// Publisher.
type Rollout struct {
	opts RolloutOptions

	mu      sync.Mutex
	chain   chain                                               // guarded by mu
	targets *metadata.Metadata[metadata.TargetsType]            // guarded by mu; nil before the first publish
	bins    map[string]*metadata.Metadata[metadata.TargetsType] // guarded by mu; by role name
	// lengths are the encoded lengths of targets and the bins, by role
	// name, so a snapshot does not encode every bin again. Guarded by mu.
	lengths map[string]int64
}

func (o *RolloutOptions) setDefaults() error {
	var errs []error
	if o.Dir == "" || o.Signer == nil || o.Release == nil || o.Source == nil || o.Log == nil {
		errs = append(errs, errors.New("tufrepo: rollout Dir, Signer, Release, Source and Log are required"))
	}
	if o.BinBits < 0 || o.BinBits > MaxBinBits {
		errs = append(errs, fmt.Errorf("tufrepo: rollout bin bits %d must be between 0 and %d", o.BinBits, MaxBinBits))
	}
	defaultTiming(&o.TimestampExpiry, &o.SnapshotExpiry, &o.Now)
	if o.Exclusive == nil {
		o.Exclusive = alone
	}
	return errors.Join(errs...)
}

// writeLocked runs fn under the cross-process lock, on the state on disk.
// r.mu must be held.
func (r *Rollout) writeLocked(ctx context.Context, fn func() error) error {
	return r.opts.Exclusive(ctx, rolloutLock, func() error {
		if err := r.reloadLocked(r.chain.staleForWriteLocked); err != nil {
			return err
		}
		return fn()
	})
}

// reloadLocked loads root, snapshot, timestamp, targets and bins again when staleFn says
// another replica wrote since. r.mu must be held.
func (r *Rollout) reloadLocked(staleFn func() (bool, error)) error {
	stale, err := staleFn()
	if err != nil || !stale {
		return err
	}
	return r.loadLocked()
}

// loadLocked reads the repository's state from disk. r.mu must be held.
func (r *Rollout) loadLocked() error {
	if err := r.chain.loadLocked(); err != nil {
		return err
	}
	var err error
	if r.targets, err = latestVersioned[metadata.TargetsType](r.metaDir(), metadata.TARGETS); err != nil {
		return err
	}
	r.bins, r.lengths = map[string]*metadata.Metadata[metadata.TargetsType]{}, map[string]int64{}
	if r.targets == nil {
		return nil
	}
	if err := r.checkLayoutLocked(); err != nil {
		return err
	}
	return r.loadBinsLocked()
}

func (r *Rollout) online() map[string]signature.Signer {
	return map[string]signature.Signer{metadata.TARGETS: r.opts.Signer, metadata.SNAPSHOT: r.opts.Signer, metadata.TIMESTAMP: r.opts.Signer}
}

func (r *Rollout) metaDir() string { return filepath.Join(r.opts.Dir, "metadata") }

// OpenRollout loads the rollout repository in opts.Dir; rootJSON is
// handled as by Open. Call Sync to publish the assignments.
func OpenRollout(opts RolloutOptions, rootJSON []byte) (*Rollout, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	r := &Rollout{opts: opts, bins: map[string]*metadata.Metadata[metadata.TargetsType]{}, lengths: map[string]int64{}}
	r.chain = chain{
		dir: r.metaDir(), snapshotSigner: opts.Signer, timestampSigner: opts.Signer,
		snapshotExpiry: opts.SnapshotExpiry, timestampExpiry: opts.TimestampExpiry, now: opts.Now, log: opts.Log,
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Replicas starting together must not both install a root.
	if err := opts.Exclusive(context.Background(), rolloutLock, func() error { return r.openLocked(rootJSON) }); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Rollout) openLocked(rootJSON []byte) error {
	err := r.loadLocked()
	if errors.Is(err, ErrNotInitialized) && rootJSON != nil {
		err = r.chain.initLocked(rootJSON, r.online())
	}
	if err != nil {
		return err
	}
	if rootJSON != nil {
		root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(rootJSON)
		if err != nil {
			return fmt.Errorf("configured rollout root does not parse: %w", err)
		}
		if root.Signed.Version > r.chain.root.Signed.Version {
			if _, err := r.chain.parseNextRootLocked(rootJSON, r.online()); err != nil {
				return fmt.Errorf("configured rollout root: %w", err)
			}
			if err := r.chain.writeRootLocked(root); err != nil {
				return err
			}
		}
	}
	return checkOnlineKeys(r.chain.root, r.online())
}

// checkLayoutLocked refuses a bin count other than the one the repository
// was published with.
func (r *Rollout) checkLayoutLocked() error {
	bits := 0
	if d := r.targets.Signed.Delegations; d != nil && d.SuccinctRoles != nil {
		bits = d.SuccinctRoles.BitLength
	}
	if bits != r.opts.BinBits {
		return fmt.Errorf("tufrepo: the rollout repository was published with %d hash bins but %d are configured; the bin count cannot change (devices refuse a snapshot that drops a bin they have seen)",
			binCount(bits), binCount(r.opts.BinBits))
	}
	return nil
}

func binCount(bits int) int {
	if bits == 0 {
		return 0
	}
	return 1 << bits
}

func (r *Rollout) loadBinsLocked() error {
	for _, name := range r.binNamesLocked() {
		m, err := latestVersioned[metadata.TargetsType](r.metaDir(), name)
		if err != nil {
			return err
		}
		if m != nil {
			r.bins[name] = m
		}
	}
	return nil
}

// succinct is the delegation of every assignment to its hash bin, or nil
// for a flat repository.
func (r *Rollout) succinct() *metadata.SuccinctRoles {
	if r.opts.BinBits == 0 {
		return nil
	}
	id, err := keyID(r.opts.Signer)
	if err != nil {
		return nil
	}
	return &metadata.SuccinctRoles{KeyIDs: []string{id}, Threshold: 1, BitLength: r.opts.BinBits, NamePrefix: BinPrefix}
}

func (r *Rollout) binNamesLocked() []string {
	if s := r.succinct(); s != nil {
		return s.GetRoles()
	}
	return nil
}

// BinOf returns the name of the bin holding a device's assignment, or
// "targets" in a flat repository.
func (r *Rollout) BinOf(deviceID string) string {
	return binOf(r.succinct(), deviceID)
}

// binOf is BinOf for the delegation s (from succinct, nil in a flat
// repository): callers placing many devices compute s, the signer's key
// ID, once.
func binOf(s *metadata.SuccinctRoles, deviceID string) string {
	if s != nil {
		return s.GetRolesForTarget(protocol.AssignmentPath(deviceID))[0].Name
	}
	return metadata.TARGETS
}

// AssignmentsChanged publishes the bins of the given devices again from
// the assignments table. Only bins whose contents changed get a new
// version, then one new snapshot and timestamp cover them all.
func (r *Rollout) AssignmentsChanged(ctx context.Context, deviceIDs []string) error {
	bins := map[string]bool{}
	succinct := r.succinct()
	for _, id := range deviceIDs {
		bins[binOf(succinct, id)] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeLocked(ctx, func() error { return r.publishLocked(ctx, bins) })
}

// Sync publishes every bin from the assignments table, writing those that
// differ from what is published. The server calls it at start and
// periodically, so an assignment committed just before a crash (or whose
// publish failed) still reaches its device.
func (r *Rollout) Sync(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeLocked(ctx, func() error { return r.publishLocked(ctx, nil) })
}

// publishLocked rebuilds the given bins (nil: all) from the assignments
// table. Reading the table and writing the files under one lock (r.mu and
// the Exclusive lock of writeLocked) keeps a slower publish, of this
// replica or another, from overwriting a newer one.
func (r *Rollout) publishLocked(ctx context.Context, bins map[string]bool) error {
	written := map[string][]byte{}
	topChanged := r.targets == nil || r.chain.root.VerifyDelegate(metadata.TARGETS, r.targets) != nil
	if topChanged {
		bins = nil // a new top-level targets (first publish, new key) needs every bin signed again
	}
	entries, err := r.entriesLocked(ctx, bins)
	if err != nil {
		return err
	}
	if r.opts.BinBits == 0 {
		if topChanged || !sameTargets(r.targets.Signed.Targets, entries[metadata.TARGETS]) {
			if err := r.signTopLocked(entries[metadata.TARGETS], written); err != nil {
				return err
			}
		}
		return r.commitLocked(written)
	}
	if topChanged {
		if err := r.signTopLocked(nil, written); err != nil {
			return err
		}
	}
	for name, want := range entries {
		cur := r.bins[name]
		if cur != nil && !topChanged && sameTargets(cur.Signed.Targets, want) {
			continue
		}
		if err := r.signBinLocked(name, want, written); err != nil {
			return err
		}
	}
	return r.commitLocked(written)
}

// entriesLocked reads the assignments of the devices in the given bins
// (nil: all bins) and returns each bin's targets entries.
func (r *Rollout) entriesLocked(ctx context.Context, bins map[string]bool) (map[string]map[string]*metadata.TargetFiles, error) {
	out := map[string]map[string]*metadata.TargetFiles{}
	if r.opts.BinBits == 0 {
		out[metadata.TARGETS] = map[string]*metadata.TargetFiles{}
		bins = nil
	} else {
		for _, name := range r.binNamesLocked() {
			if bins == nil || bins[name] {
				out[name] = map[string]*metadata.TargetFiles{}
			}
		}
	}
	ids, err := r.opts.Source.AssignedDevices(ctx)
	if err != nil {
		return nil, fmt.Errorf("read assigned devices: %w", err)
	}
	succinct := r.succinct()
	var wanted []string
	for _, id := range ids {
		if _, ok := out[binOf(succinct, id)]; ok {
			wanted = append(wanted, id)
		}
	}
	assignments, err := r.opts.Source.Assignments(ctx, wanted)
	if err != nil {
		return nil, fmt.Errorf("read assignments: %w", err)
	}
	released := r.opts.Release.Targets()
	for _, a := range assignments {
		tf, err := entry(released, a)
		if err != nil {
			r.opts.Log.Warn("assignment not published", "device_id", a.DeviceID, "rollout_id", a.RolloutID, "err", err)
			continue
		}
		if bin, ok := out[binOf(succinct, a.DeviceID)]; ok {
			bin[tf.Path] = tf
		}
	}
	return out, nil
}

// entry is a device's assignment as the rollout repository signs it: the
// release image's length and hashes, copied from the release repository,
// and the release target path.
func entry(released map[string]*metadata.TargetFiles, a Assignment) (*metadata.TargetFiles, error) {
	rel, ok := released[a.TargetPath]
	if !ok {
		return nil, fmt.Errorf("target %s is not in the release repository", a.TargetPath)
	}
	custom, err := json.Marshal(protocol.AssignmentCustom{Target: a.TargetPath, RolloutID: a.RolloutID, Windows: a.Windows})
	if err != nil {
		return nil, err
	}
	raw := json.RawMessage(custom)
	tf := metadata.TargetFile()
	tf.Path = protocol.AssignmentPath(a.DeviceID)
	tf.Length = rel.Length
	tf.Hashes = maps.Clone(rel.Hashes)
	tf.Custom = &raw
	return tf, nil
}

func sameTargets(a, b map[string]*metadata.TargetFiles) bool {
	return maps.EqualFunc(a, b, func(x, y *metadata.TargetFiles) bool { return x.Equal(*y) })
}

// signTopLocked signs a new top-level targets: the bin delegation, or in a
// flat repository every entry.
func (r *Rollout) signTopLocked(entries map[string]*metadata.TargetFiles, written map[string][]byte) error {
	t := metadata.Targets(r.opts.Now().Add(rolloutTargetsExpiry).UTC())
	if v, err := latestVersion(r.metaDir(), metadata.TARGETS); err != nil {
		return err
	} else {
		t.Signed.Version = v + 1
	}
	if entries != nil {
		t.Signed.Targets = entries
	}
	if s := r.succinct(); s != nil {
		key, err := signingKey(r.opts.Signer)
		if err != nil {
			return err
		}
		t.Signed.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{s.KeyIDs[0]: key}, SuccinctRoles: s}
	}
	b, err := signRole(t, r.opts.Signer)
	if err != nil {
		return err
	}
	written[fmt.Sprintf("%d.%s.json", t.Signed.Version, metadata.TARGETS)] = b
	r.targets, r.lengths[metadata.TARGETS] = t, int64(len(b))
	return nil
}

// signBinLocked signs the next version of a bin with the given entries.
func (r *Rollout) signBinLocked(name string, entries map[string]*metadata.TargetFiles, written map[string][]byte) error {
	t := metadata.Targets(r.opts.Now().Add(rolloutTargetsExpiry).UTC())
	t.Signed.Targets = entries
	if cur := r.bins[name]; cur != nil {
		t.Signed.Version = cur.Signed.Version + 1
	} else if v, err := latestVersion(r.metaDir(), name); err != nil {
		return err
	} else {
		t.Signed.Version = v + 1
	}
	b, err := signRole(t, r.opts.Signer)
	if err != nil {
		return err
	}
	written[fmt.Sprintf("%d.%s.json", t.Signed.Version, name)] = b
	r.bins[name], r.lengths[name] = t, int64(len(b))
	return nil
}

func signingKey(s signature.Signer) (*metadata.Key, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	return metadata.KeyFromPublicKey(pub)
}

func signRole(t *metadata.Metadata[metadata.TargetsType], s signature.Signer) ([]byte, error) {
	if _, err := t.Sign(s); err != nil {
		return nil, fmt.Errorf("sign rollout metadata: %w", err)
	}
	return t.ToBytes(false)
}

// commitLocked makes the written files durable, then signs a snapshot and,
// last, a timestamp that make them visible.
func (r *Rollout) commitLocked(written map[string][]byte) error {
	if len(written) == 0 {
		return nil
	}
	if err := os.MkdirAll(r.metaDir(), 0o755); err != nil {
		return err
	}
	if err := atomicfile.WriteFiles(r.metaDir(), written, 0o644); err != nil {
		return err
	}
	if err := r.chain.signSnapshotLocked(r.snapshotMetaLocked()); err != nil {
		return err
	}
	r.opts.Log.Info("rollout repository published", "files", len(written), "snapshot_version", r.chain.snapshot.Signed.Version)
	r.pruneLocked()
	return nil
}

// snapshotMetaLocked lists targets and every bin by version and length:
// the length bounds what a device downloads, and a version is signed only
// once, so hashes would add bytes to every device's refresh and no safety.
func (r *Rollout) snapshotMetaLocked() map[string]*metadata.MetaFiles {
	meta := map[string]*metadata.MetaFiles{}
	add := func(name string, t *metadata.Metadata[metadata.TargetsType]) {
		n, ok := r.lengths[name]
		if !ok { // loaded from disk
			b, err := t.ToBytes(false)
			if err != nil {
				panic("tufrepo: encode rollout metadata: " + err.Error())
			}
			n = int64(len(b))
			r.lengths[name] = n
		}
		mf := metadata.MetaFile(t.Signed.Version)
		mf.Length = n
		meta[name+".json"] = mf
	}
	add(metadata.TARGETS, r.targets)
	for name, t := range r.bins {
		add(name, t)
	}
	return meta
}

// pruneLocked removes snapshots and bins that neither the current nor the
// previous snapshot lists, so the directory does not grow with every
// rollout. A device that fetched the previous timestamp can still finish
// its refresh.
func (r *Rollout) pruneLocked() {
	cur := r.chain.snapshot.Signed.Version
	keep := map[string]bool{}
	for _, v := range []int64{cur, cur - 1} {
		snap, err := new(metadata.Metadata[metadata.SnapshotType]).FromFile(filepath.Join(r.metaDir(), fmt.Sprintf("%d.snapshot.json", v)))
		if err != nil {
			continue
		}
		keep[fmt.Sprintf("%d.snapshot.json", v)] = true
		for name, mf := range snap.Signed.Meta {
			keep[fmt.Sprintf("%d.%s", mf.Version, name)] = true
		}
	}
	entries, err := os.ReadDir(r.metaDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		v, rest, _ := strings.Cut(name, ".")
		if _, err := strconv.ParseInt(v, 10, 64); err != nil || keep[name] || rest == "root.json" {
			continue
		}
		os.Remove(filepath.Join(r.metaDir(), name))
	}
}

// UpdateRoot installs the next root of the rollout repository, e.g. after
// the rollout key was rotated; the server must already hold the new key.
// Everything is signed again with it.
func (r *Rollout) UpdateRoot(ctx context.Context, rootJSON []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeLocked(ctx, func() error {
		next, err := r.chain.parseNextRootLocked(rootJSON, r.online())
		if err != nil {
			return err
		}
		if err := r.chain.writeRootLocked(next); err != nil {
			return err
		}
		r.opts.Log.Info("rollout repository root updated", "root_version", next.Signed.Version)
		return r.publishLocked(ctx, nil)
	})
}

// Root returns the newest root metadata.
func (r *Rollout) Root() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.reloadLocked(r.chain.staleLocked); err != nil {
		r.opts.Log.Warn("rollout repository not loaded again; answering from memory", "err", err)
	}
	return r.chain.root.ToBytes(true)
}

// Refresh re-signs whatever is past half of its validity: the timestamp,
// the snapshot, the top-level targets and the bins.
func (r *Rollout) Refresh(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeLocked(ctx, func() error { return r.refreshLocked() })
}

func (r *Rollout) refreshLocked() error {
	if r.targets == nil {
		return nil
	}
	now := r.opts.Now()
	due := func(t *metadata.Metadata[metadata.TargetsType]) bool {
		return t.Signed.Expires.Sub(now) < rolloutTargetsExpiry/2
	}
	written := map[string][]byte{}
	if due(r.targets) {
		var entries map[string]*metadata.TargetFiles
		if r.opts.BinBits == 0 {
			entries = r.targets.Signed.Targets
		}
		if err := r.signTopLocked(entries, written); err != nil {
			return err
		}
	}
	for name, t := range r.bins {
		if due(t) {
			if err := r.signBinLocked(name, t.Signed.Targets, written); err != nil {
				return err
			}
		}
	}
	if len(written) > 0 {
		return r.commitLocked(written)
	}
	return r.chain.refreshLocked(r.snapshotMetaLocked)
}
