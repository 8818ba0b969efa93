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

	"github.com/aftercare/aftercare/firmware"
)

// TUFKey returns the TUF key record of a signer's public key.
func TUFKey(s signature.Signer) (*metadata.Key, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("public key of signer: %w", err)
	}
	return metadata.KeyFromPublicKey(pub)
}

// InitOptions configures a new release repository.
type InitOptions struct {
	Dir       string    // output directory; must not hold a repository yet
	Algorithm Algorithm // default Ed25519
	// Passphrase encrypts the offline keys (root, targets); nil leaves them
	// unencrypted, which is only fit for tests and demos.
	Passphrase     []byte
	RootExpires    time.Duration // default one year
	TargetsExpires time.Duration // default one year
	Now            time.Time     // default time.Now()
}

// InitResult lists the files InitRepository wrote, by where they belong.
type InitResult struct {
	Offline []string // private keys to keep off any networked machine
	Server  []string // files the fleet server needs
	Devices []string // the root of trust to put into every device image
}

// File names in a repository directory made by InitRepository.
const (
	RootFile        = "1.root.json"
	TargetsFile     = "1.targets.json"
	RootKeyFile     = "root.key"
	TargetsKeyFile  = "targets.key"
	SnapshotKeyFile = "snapshot.key"
	TimeKeyFile     = "timestamp.key"
)

// InitRepository creates the keys of a release repository, its first root
// metadata signed by the root key, and an empty first targets metadata
// signed by the targets key.
func InitRepository(ctx context.Context, opts InitOptions) (*InitResult, error) {
	if opts.Algorithm == "" {
		opts.Algorithm = Ed25519
	}
	if opts.RootExpires == 0 {
		opts.RootExpires = 365 * 24 * time.Hour
	}
	if opts.TargetsExpires == 0 {
		opts.TargetsExpires = 365 * 24 * time.Hour
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	if _, err := os.Stat(filepath.Join(opts.Dir, RootFile)); err == nil {
		return nil, fmt.Errorf("init repository: %s already holds %s; refusing to overwrite it", opts.Dir, RootFile)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("init repository: %w", err)
	}
	res := &InitResult{}
	signers := map[string]signature.Signer{}
	for _, k := range []struct {
		role, file string
		offline    bool
	}{
		{metadata.ROOT, RootKeyFile, true},
		{metadata.TARGETS, TargetsKeyFile, true},
		{metadata.SNAPSHOT, SnapshotKeyFile, false},
		{metadata.TIMESTAMP, TimeKeyFile, false},
	} {
		var pass []byte
		if k.offline {
			pass = opts.Passphrase
		}
		path := filepath.Join(opts.Dir, k.file)
		s, err := writeNewKey(path, opts.Algorithm, pass)
		if err != nil {
			return nil, err
		}
		signers[k.role] = s
		if k.offline {
			res.Offline = append(res.Offline, path)
		} else {
			res.Server = append(res.Server, path)
		}
	}

	root := metadata.Root(opts.Now.Add(opts.RootExpires).UTC())
	root.Signed.ConsistentSnapshot = true
	for role, s := range signers {
		key, err := TUFKey(s)
		if err != nil {
			return nil, err
		}
		if err := root.Signed.AddKey(key, role); err != nil {
			return nil, fmt.Errorf("add %s key to root: %w", role, err)
		}
	}
	if _, err := root.Sign(signers[metadata.ROOT]); err != nil {
		return nil, fmt.Errorf("sign root: %w", err)
	}
	targets := metadata.Targets(opts.Now.Add(opts.TargetsExpires).UTC())
	if _, err := targets.Sign(signers[metadata.TARGETS]); err != nil {
		return nil, fmt.Errorf("sign targets: %w", err)
	}
	rootPath := filepath.Join(opts.Dir, RootFile)
	targetsPath := filepath.Join(opts.Dir, TargetsFile)
	if err := writeMetadata(rootPath, root); err != nil {
		return nil, err
	}
	if err := writeMetadata(targetsPath, targets); err != nil {
		return nil, err
	}
	res.Server = append(res.Server, rootPath, targetsPath)
	res.Devices = append(res.Devices, rootPath)
	return res, nil
}

func writeNewKey(path string, alg Algorithm, pass []byte) (signature.Signer, error) {
	priv, pub, err := GenerateKey(alg, pass)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, priv, 0o600); err != nil {
		return nil, fmt.Errorf("write key: %w", err)
	}
	if err := os.WriteFile(path+".pub", pub, 0o644); err != nil {
		return nil, fmt.Errorf("write public key: %w", err)
	}
	var pf PassFunc
	if pass != nil {
		pf = func() ([]byte, error) { return pass, nil }
	}
	return LoadSigner(context.Background(), path, pf)
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

// SignReleaseOptions says how to sign a release into targets metadata.
type SignReleaseOptions struct {
	// Current is the repository's current targets metadata, which the new
	// version extends; required.
	Current []byte
	// Manifest describes the release; its image digests become the signed
	// targets entry.
	Manifest *firmware.Manifest
	Signer   signature.Signer
	Expires  time.Time // expiry of the new targets metadata; default one year from now
}

// SignRelease returns the next version of the targets metadata: Current
// with the release added, its version increased by one, and signed by
// opts.Signer alone. It refuses a release whose target path is already
// listed with different contents.
func SignRelease(opts SignReleaseOptions) ([]byte, error) {
	cur, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(opts.Current)
	if err != nil {
		return nil, fmt.Errorf("parse current targets metadata: %w", err)
	}
	if opts.Manifest == nil || opts.Signer == nil {
		return nil, errors.New("sign release: a manifest and a signer are required")
	}
	if err := opts.Manifest.Validate(); err != nil {
		return nil, err
	}
	if opts.Expires.IsZero() {
		opts.Expires = time.Now().Add(365 * 24 * time.Hour)
	}
	entry, err := TargetEntry(opts.Manifest)
	if err != nil {
		return nil, err
	}
	if old, ok := cur.Signed.Targets[entry.Path]; ok && !old.Equal(*entry) {
		return nil, fmt.Errorf("sign release: %s is already released with different contents; give the new build a new version", entry.Path)
	}
	cur.Signed.Targets[entry.Path] = entry
	cur.Signed.Version++
	cur.Signed.Expires = opts.Expires.UTC()
	cur.ClearSignatures()
	if _, err := cur.Sign(opts.Signer); err != nil {
		return nil, fmt.Errorf("sign targets metadata: %w", err)
	}
	return cur.ToBytes(true)
}

// TargetEntry is the signed targets entry of a release's image.
func TargetEntry(m *firmware.Manifest) (*metadata.TargetFiles, error) {
	digest, err := firmware.DecodeSHA256(m.Image.SHA256)
	if err != nil {
		return nil, err
	}
	tf := metadata.TargetFile()
	tf.Path = m.TargetPath()
	tf.Length = m.Image.Length
	tf.Hashes = metadata.Hashes{"sha256": digest}
	tf.Custom = (&firmware.TargetCustom{Manifest: *m}).RawMessage()
	return tf, nil
}
