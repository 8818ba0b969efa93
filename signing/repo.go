package signing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TUFKey returns the TUF key record of a signer's public key.
func TUFKey(s signature.Signer) (*metadata.Key, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("public key of signer: %w", err)
	}
	return metadata.KeyFromPublicKey(pub)
}

// Default key holders of a repository made without naming any.
const (
	DefaultRootHolder    = "manufacturer"
	DefaultTargetsHolder = "release-engineering"
)

// InitOptions configures new release and rollout repositories.
type InitOptions struct {
	Dir       string    // output directory; must not hold a repository yet
	Algorithm Algorithm // default Ed25519
	// RootHolders name the people who each hold one root key; default
	// [DefaultRootHolder]. RootThreshold of them must sign every new root;
	// 0 means a majority.
	RootHolders   []string
	RootThreshold int
	// TargetsHolders name the people who each hold one release (targets)
	// key, e.g. release engineering and quality/regulatory; default
	// [DefaultTargetsHolder]. TargetsThreshold of them must sign every
	// release; 0 means a majority.
	TargetsHolders   []string
	TargetsThreshold int
	// Passphrase returns the passphrase that encrypts one offline key; nil
	// leaves the offline keys unencrypted, which is only fit for tests and
	// demos.
	Passphrase     func(role, holder string) ([]byte, error)
	RootExpires    time.Duration // default one year
	TargetsExpires time.Duration // default one year
	Now            time.Time     // default time.Now()
}

// A KeyFile is a private key InitRepository or RotateRoot wrote.
type KeyFile struct {
	Role   string // root, targets, snapshot, timestamp or rollout
	Holder string
	Path   string // the private key; its public key is Path + ".pub"
}

// InitResult lists the files InitRepository wrote, by where they belong.
type InitResult struct {
	Offline []KeyFile // private keys to keep off any networked machine, each with its holder
	Online  []KeyFile // private keys the fleet server holds
	Server  []string  // metadata the fleet server needs
	Devices []string  // the roots of trust to build into every device image
}

// File names in a directory made by InitRepository.
const (
	RootFile        = "1.root.json"         // release repository root
	TargetsFile     = "1.targets.json"      // release repository's first (empty) targets
	RolloutRootFile = "1.rollout-root.json" // rollout repository root
	SnapshotKeyFile = "snapshot.key"        // release repository snapshot (online)
	TimeKeyFile     = "timestamp.key"       // release repository timestamp (online)
	RolloutKeyFile  = "rollout.key"         // rollout repository targets, bins, snapshot, timestamp (online)
)

// OfflineKeyFile is the file name of a holder's offline key for a role.
func OfflineKeyFile(role, holder string) string { return role + "-" + holder + ".key" }

// InitRepository creates the keys of both repositories and their first
// signed metadata:
//
//   - the release repository's root (root keys to RootThreshold, release
//     keys to TargetsThreshold, the server's snapshot and timestamp keys),
//     signed by every root key, and its first, empty targets metadata,
//     signed by every release key;
//   - the rollout repository's root (the same root keys; the server's
//     rollout key for targets, snapshot and timestamp), signed by every
//     root key.
func InitRepository(ctx context.Context, opts InitOptions) (*InitResult, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	for _, f := range []string{RootFile, RolloutRootFile} {
		if _, err := os.Stat(filepath.Join(opts.Dir, f)); err == nil {
			return nil, fmt.Errorf("init repository: %s already holds %s; refusing to overwrite it", opts.Dir, f)
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("init repository: %w", err)
	}
	res := &InitResult{}
	newOffline := func(role string, holders []string) ([]signature.Signer, error) {
		var out []signature.Signer
		for _, h := range holders {
			var pass []byte
			if opts.Passphrase != nil {
				p, err := opts.Passphrase(role, h)
				if err != nil {
					return nil, err
				}
				pass = p
			}
			path := filepath.Join(opts.Dir, OfflineKeyFile(role, h))
			s, err := writeNewKey(path, opts.Algorithm, pass)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
			res.Offline = append(res.Offline, KeyFile{Role: role, Holder: h, Path: path})
		}
		return out, nil
	}
	rootSigners, err := newOffline(metadata.ROOT, opts.RootHolders)
	if err != nil {
		return nil, err
	}
	targetsSigners, err := newOffline(metadata.TARGETS, opts.TargetsHolders)
	if err != nil {
		return nil, err
	}
	online := map[string]signature.Signer{}
	for _, k := range []struct{ role, file string }{
		{metadata.SNAPSHOT, SnapshotKeyFile}, {metadata.TIMESTAMP, TimeKeyFile}, {"rollout", RolloutKeyFile},
	} {
		path := filepath.Join(opts.Dir, k.file)
		s, err := writeNewKey(path, opts.Algorithm, nil)
		if err != nil {
			return nil, err
		}
		online[k.role] = s
		res.Online = append(res.Online, KeyFile{Role: k.role, Holder: OnlineHolder, Path: path})
	}

	expires := opts.Now.Add(opts.RootExpires).UTC()
	release := newRoot(expires)
	rollout := newRoot(expires)
	for _, root := range []*metadata.Metadata[metadata.RootType]{release, rollout} {
		if err := addRoleKeys(root, metadata.ROOT, rootSigners, opts.RootHolders, opts.RootThreshold); err != nil {
			return nil, err
		}
	}
	if err := addRoleKeys(release, metadata.TARGETS, targetsSigners, opts.TargetsHolders, opts.TargetsThreshold); err != nil {
		return nil, err
	}
	for role, s := range map[string]signature.Signer{metadata.SNAPSHOT: online[metadata.SNAPSHOT], metadata.TIMESTAMP: online[metadata.TIMESTAMP]} {
		if err := addRoleKeys(release, role, []signature.Signer{s}, []string{OnlineHolder}, 1); err != nil {
			return nil, err
		}
	}
	for _, role := range []string{metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := addRoleKeys(rollout, role, []signature.Signer{online["rollout"]}, []string{OnlineHolder}, 1); err != nil {
			return nil, err
		}
	}
	for _, root := range []*metadata.Metadata[metadata.RootType]{release, rollout} {
		for _, s := range rootSigners {
			if _, err := root.Sign(s); err != nil {
				return nil, fmt.Errorf("sign root: %w", err)
			}
		}
	}
	targets := metadata.Targets(opts.Now.Add(opts.TargetsExpires).UTC())
	for _, s := range targetsSigners {
		if _, err := targets.Sign(s); err != nil {
			return nil, fmt.Errorf("sign targets: %w", err)
		}
	}
	for name, m := range map[string]marshaler{RootFile: release, RolloutRootFile: rollout, TargetsFile: targets} {
		if err := writeMetadata(filepath.Join(opts.Dir, name), m); err != nil {
			return nil, err
		}
	}
	res.Server = []string{filepath.Join(opts.Dir, RootFile), filepath.Join(opts.Dir, RolloutRootFile), filepath.Join(opts.Dir, TargetsFile)}
	res.Devices = []string{filepath.Join(opts.Dir, RootFile), filepath.Join(opts.Dir, RolloutRootFile)}
	return res, nil
}

func (o *InitOptions) setDefaults() error {
	if o.Algorithm == "" {
		o.Algorithm = Ed25519
	}
	if len(o.RootHolders) == 0 {
		o.RootHolders = []string{DefaultRootHolder}
	}
	if len(o.TargetsHolders) == 0 {
		o.TargetsHolders = []string{DefaultTargetsHolder}
	}
	if o.RootThreshold == 0 {
		o.RootThreshold = len(o.RootHolders)/2 + 1
	}
	if o.TargetsThreshold == 0 {
		o.TargetsThreshold = len(o.TargetsHolders)/2 + 1
	}
	if o.RootExpires == 0 {
		o.RootExpires = 365 * 24 * time.Hour
	}
	if o.TargetsExpires == 0 {
		o.TargetsExpires = 365 * 24 * time.Hour
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("init repository: a directory is required"))
	}
	if o.Algorithm != Ed25519 && o.Algorithm != ECDSAP256 {
		errs = append(errs, fmt.Errorf("key algorithm %q is not one of %s, %s", o.Algorithm, Ed25519, ECDSAP256))
	}
	errs = append(errs, checkHolders(metadata.ROOT, o.RootHolders, o.RootThreshold), checkHolders(metadata.TARGETS, o.TargetsHolders, o.TargetsThreshold))
	return errors.Join(errs...)
}

func newRoot(expires time.Time) *metadata.Metadata[metadata.RootType] {
	root := metadata.Root(expires)
	root.Signed.ConsistentSnapshot = true
	return root
}

// addRoleKeys gives role the signers' keys, each named for its holder, and
// the threshold.
func addRoleKeys(root *metadata.Metadata[metadata.RootType], role string, signers []signature.Signer, holders []string, threshold int) error {
	for i, s := range signers {
		key, err := TUFKey(s)
		if err != nil {
			return err
		}
		if err := root.Signed.AddKey(key, role); err != nil {
			return fmt.Errorf("add %s key to root: %w", role, err)
		}
		id, err := key.ID()
		if err != nil {
			return err
		}
		setHolder(root, id, holders[i])
	}
	root.Signed.Roles[role].Threshold = threshold
	return nil
}

// writeNewKey generates a key pair into path and path.pub, never
// overwriting a file, and returns the signer.
func writeNewKey(path string, alg Algorithm, pass []byte) (signature.Signer, error) {
	key, priv, pub, err := generateKey(alg, pass)
	if err != nil {
		return nil, err
	}
	if err := writeNew(path, priv, 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(path+".pub", pub, 0o644); err != nil {
		return nil, err
	}
	return SignerFromKey(key)
}

// writeNew writes a file that must not exist yet, and syncs it.
func writeNew(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync key %s: %w", path, err)
	}
	return f.Close()
}

type marshaler interface {
	ToBytes(pretty bool) ([]byte, error)
}

func writeMetadata(path string, m marshaler) error {
	b, err := m.ToBytes(true)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	return nil
}
